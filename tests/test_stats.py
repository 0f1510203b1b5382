"""Study statistics: bootstrap CIs, paired differences against the baseline, the markdown and
the paired-difference figure, on synthetic score tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elusive.experiment.figures import plot_paired_differences
from elusive.stats import (
    bootstrap_ci,
    holm,
    paired_differences,
    policy_means,
    sign_flip_p,
    study_markdown,
    summarize_study,
    unit_scores,
)

SEEDS = (0, 1, 2)
FIELDS = ("university", "company")


def random_table(rng, n_people=30, shift=0.0, seeds=SEEDS, fields=FIELDS):
    """(seed, person, field) -> {em, f1}: dyadic values (multiples of 1/8), so sums and
    constant shifts of 1/8 are exact in floating point."""
    return {
        (s, f"p{i:03d}", f): {
            "em": float(rng.integers(0, 2)) + shift,
            "f1": rng.integers(0, 9) / 8 + shift,
        }
        for s in seeds
        for i in range(n_people)
        for f in fields
    }


def test_bootstrap_ci_is_deterministic_by_seed():
    values = np.random.default_rng(7).normal(size=200)
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    other = bootstrap_ci(values, seed=4)
    assert np.array(a).tobytes() == np.array(b).tobytes()
    assert a[0] == other[0] and a[1:] != other[1:]  # same mean, other resamples
    assert a[1] < a[0] < a[2]


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    # 400 samples of 60 Bernoulli(0.3) scores (EM-like); a 95% CI should hold 0.3 in about
    # 95% of them (the percentile bootstrap runs a little under at this size). A CI of the
    # wrong width (std instead of standard error, level applied per tail) fails this.
    rng = np.random.default_rng(0)
    hits = []
    for number in range(400):
        sample = (rng.random(60) < 0.3).astype(float)
        _, low, high = bootstrap_ci(sample, seed=number, n_boot=1000)
        hits.append(low <= 0.3 <= high)
    assert 0.90 <= np.mean(hits) <= 0.985
    # a large sample: the CI holds the true mean and is about 2 * 1.96 standard errors wide
    sample = rng.normal(0.5, 1.0, size=5000)
    mean, low, high = bootstrap_ci(sample, seed=1, n_boot=2000)
    assert low < 0.5 < high and (high - low) == pytest.approx(2 * 1.96 / 5000**0.5, rel=0.1)


def test_bootstrap_ci_resamples_people_not_person_seed_pairs():
    # Three seeds that repeat each person's score add no information about new people: the
    # CI must be that of the people alone, not sqrt(3) narrower.
    rng = np.random.default_rng(1)
    once = random_table(rng, seeds=(0,))
    thrice = {(s, p, f): v for (_, p, f), v in once.items() for s in SEEDS}
    assert policy_means(thrice, seed=5, n_boot=2000) == {
        f: {m: {**c, "n_units": 3 * c["n_units"]} for m, c in cells.items()}
        for f, cells in policy_means(once, seed=5, n_boot=2000).items()
    }


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.1, 0.2], level=95)


def test_paired_difference_of_identical_runs_is_exactly_zero():
    table = random_table(np.random.default_rng(2))
    out = paired_differences(table, dict(table), n_boot=500)
    assert set(out) == set(FIELDS)
    for cells in out.values():
        for cell in cells.values():
            assert (cell["mean"], cell["low"], cell["high"]) == (0.0, 0.0, 0.0)
            assert cell["excludes_zero"] is False
            assert (cell["n_people"], cell["n_units"]) == (30, 90)


def test_paired_difference_of_a_constant_shift_is_that_shift():
    rng = np.random.default_rng(3)
    base = random_table(rng)
    shifted = {u: {m: v + 0.125 for m, v in scores.items()} for u, scores in base.items()}
    for cells in paired_differences(shifted, base, n_boot=500).values():
        for cell in cells.values():
            assert (cell["mean"], cell["low"], cell["high"]) == (0.125, 0.125, 0.125)
            assert cell["excludes_zero"] is True


def test_units_on_one_side_only_are_ignored():
    rng = np.random.default_rng(4)
    base, policy = random_table(rng), random_table(rng)
    expected = paired_differences(policy, base, n_boot=500)
    extra_policy = {**policy, **{(9, "p000", f): {"em": 100.0, "f1": 100.0} for f in FIELDS}}
    extra_base = {**base, (0, "stranger", "company"): {"em": -50.0, "f1": -50.0}}
    # a metric only one side scores is not paired either
    extra_base[(0, "p001", "university")] = {**base[(0, "p001", "university")], "cloze_em": 1.0}
    assert paired_differences(extra_policy, extra_base, n_boot=500) == expected
    with pytest.raises(ValueError, match="no \\(seed, person, field\\) unit is scored in both"):
        paired_differences({(5, "p000", "company"): {"em": 1.0}}, base)


def test_unit_scores_average_questions_per_person_field_and_seed():
    rows = {
        0: [
            {"source_id": "a", "field": "date", "em": 1.0, "cloze_em": 1.0},
            {"source_id": "a", "field": "date", "em": 0.0, "cloze_em": None},
            {"source_id": "b", "field": "date", "em": 0.5},
        ],
        1: [{"source_id": "a", "field": "date", "em": 0.0}],
    }
    assert unit_scores(rows, ["em", "cloze_em"]) == {
        (0, "a", "date"): {"em": 0.5, "cloze_em": 1.0},
        (0, "b", "date"): {"em": 0.5},
        (1, "a", "date"): {"em": 0.0},
    }
    with pytest.raises(ValueError, match="seed 1, a date: em = 'yes' is not a number"):
        unit_scores({1: [{"source_id": "a", "field": "date", "em": "yes"}]}, ["em"])
    with pytest.raises(ValueError, match="no 'source_id'"):
        unit_scores({1: [{"field": "date", "em": 1.0}]}, ["em"])


def study(rng):
    """none, random (= none) and contrast (none + 0.25 on university only)."""
    none = random_table(rng, n_people=12)
    contrast = {
        u: {m: v + (0.25 if u[2] == "university" else 0.0) for m, v in scores.items()}
        for u, scores in none.items()
    }
    return {"contrast": contrast, "none": none, "random": dict(none)}


def test_summary_is_json_and_markdown_names_the_differences_that_exclude_zero():
    # 5000 resamples > 2^12 sign flips of 12 people: the permutation test is exact
    summary = summarize_study(study(np.random.default_rng(5)), n_boot=5000)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["policies"] == ["none", "contrast", "random"] and summary["seeds"] == [0, 1, 2]
    assert set(summary["differences"]) == {"contrast", "random"}
    assert summary["means"]["none"]["company"]["em"]["n_people"] == 12
    text = study_markdown(summary)
    assert "2 of 8 differences have a 95% CI that excludes 0" in text
    # 12 people all +0.25: 2 of the 2^12 sign flips are as extreme, times 8 comparisons (Holm)
    assert (
        "- contrast - none, university em: +0.25 [0.25, 0.25], excludes 0 (contrast above none; "
        f"p = < 0.001, Holm p = {8 * 2 / 2**12:.3f})." in text
    )
    assert "- contrast - none, university f1: +0.25" in text
    assert "random - none, university" not in text and "contrast - none, company em:" not in text
    assert "| university | contrast - none | +0.25 [0.25, 0.25] | +0.25 [0.25, 0.25] |" in text


def test_markdown_says_plainly_when_no_difference_excludes_zero():
    tables = study(np.random.default_rng(6))
    del tables["contrast"]
    text = study_markdown(summarize_study(tables, n_boot=500))
    assert "None of the 4 differences against none excludes 0: every 95% CI contains 0." in text
    with pytest.raises(ValueError, match="baseline policy 'none' has no scores"):
        summarize_study({"random": tables["random"]})
    with pytest.raises(ValueError, match="^random - none: no \\(seed, person, field\\)"):
        summarize_study({"none": tables["none"], "random": {(7, "x", "date"): {"em": 1.0}}})


def test_markdown_says_when_too_few_people_can_pass_the_correction():
    # 12 people: the smallest p is 2 / 2^12, times 8 comparisons 0.004 < 0.05: no such line
    assert "too small" not in study_markdown(summarize_study(study(np.random.default_rng(5))))
    # 5 people all +0.25 on the university: p = 2 / 2^5 = 0.0625 at best, already above 0.05
    rng = np.random.default_rng(5)
    none = random_table(rng, n_people=5)
    contrast = {
        u: {m: v + 0.25 * (u[2] == "university") for m, v in s.items()} for u, s in none.items()
    }
    text = study_markdown(summarize_study({"none": none, "contrast": contrast}, n_boot=500))
    assert "university em: +0.25 [0.25, 0.25], excludes 0 (contrast above none; p = 0.062" in text
    assert (
        "With 5 test people no sign-flip p-value can be below 0.062 (2 / 2^5), so no Holm p over "
        "4 comparisons can be below 0.25: this run is too small" in text
    )


def test_paired_difference_figure_png(tmp_path):
    summary = summarize_study(study(np.random.default_rng(7)), n_boot=200)
    out = plot_paired_differences(summary, tmp_path / "fig" / "paired.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["paired.png"]  # no temp file left
    with pytest.raises(ValueError, match="no paired differences"):
        plot_paired_differences(summary, tmp_path / "none.png", metrics=["cloze_em"])
    assert not (tmp_path / "none.png").exists()


# --------------------------------------------------------------------------- exact numbers
#
# Tests that pin each reported number to its definition, so that a small change to the code
# (an off-by-one, a dropped argument, a wrong quantile) fails a test.


PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=60)


def textbook_ci(values, seed, n_boot, level):
    """The percentile bootstrap written out: `n_boot` resamples of `values`, one at a time from
    ``default_rng(seed)``, and the (1 - level) / 2 and 1 - (1 - level) / 2 quantiles of their
    means."""
    data = np.array(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = [data[rng.integers(0, len(data), size=len(data))].mean() for _ in range(n_boot)]
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return data.mean(), low, high


def textbook_bca(values, seed, n_boot, level):
    """The BCa bootstrap written out (Efron and Tibshirani 1993, 14.3): resample means, the
    bias correction z0 from the share of them below the mean, the acceleration from the
    jackknife, and the two quantiles that z0 and it move the percentile ones to."""
    from scipy.stats import norm

    data = np.array(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.array([data[rng.integers(0, len(data), len(data))].mean() for _ in range(n_boot)])
    # ties count half (resample means equal to the mean are frequent for EM's 0/1 scores)
    z0 = norm.ppf((np.sum(means < data.mean()) + np.sum(means <= data.mean())) / (2 * n_boot))
    jack = np.array([np.delete(data, i).mean() for i in range(len(data))])
    d = jack.mean() - jack
    a = (d**3).sum() / (6 * ((d**2).sum()) ** 1.5)
    z = norm.ppf([(1 - level) / 2, 1 - (1 - level) / 2])
    quantiles = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    low, high = np.quantile(means, quantiles)
    return data.mean(), low, high


@pytest.mark.parametrize("level", [0.9, 0.95])
@pytest.mark.parametrize("sample", ["skewed", "binary", "normal"])
def test_bootstrap_ci_is_the_textbook_bca_and_percentile_bootstrap(sample, level):
    rng = np.random.default_rng(11)
    values = {
        "skewed": rng.exponential(1.0, 30),  # where BCa and percentile differ most
        "binary": (rng.random(40) < 0.2).astype(float),  # EM scores of 40 people
        "normal": rng.normal(0.0, 1.0, 25),
    }[sample]
    # different resamples on each side: equal up to the Monte Carlo error of 20 000 of them, or
    # one step of the grid a mean of 0/1 scores lies on
    tolerance = max(0.01 * (values.max() - values.min()), 1.01 / len(values))
    for ours, reference in (
        (bootstrap_ci(values, 1, 20_000, level), textbook_bca(values, 2, 20_000, level)),
        (
            bootstrap_ci(values, 1, 20_000, level, method="percentile"),
            textbook_ci(values, 2, 20_000, level),
        ),
    ):
        assert ours[0] == pytest.approx(reference[0], rel=1e-12)
        assert ours[1:] == pytest.approx(reference[1:], abs=tolerance)
    bca, percentile = bootstrap_ci(values, 1, 20_000, level), textbook_ci(values, 2, 20_000, level)
    if sample == "skewed":  # right-skewed: BCa moves both bounds up
        assert bca[1] > percentile[1] and bca[2] > percentile[2]


@PROPERTY
@given(
    values=st.lists(st.integers(-80, 80).map(lambda k: k / 8), min_size=1, max_size=25),
    seed=st.integers(0, 2**16),
    n_boot=st.integers(1, 40),
    level=st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99]),
)
def test_bootstrap_ci_lies_within_the_sample_for_any_input(values, seed, n_boot, level):
    mean, low, high = bootstrap_ci(values, seed, n_boot, level)
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert min(values) <= low <= high <= max(values)
    assert bootstrap_ci(values, seed, n_boot, level) == (mean, low, high)


def test_sign_flip_p_is_the_exact_test_where_every_flip_can_be_counted():
    import itertools

    values = [0.5, 0.2, 0.3, -0.1, 0.4, 0.6, -0.2]
    observed = abs(np.mean(values))
    flips = [
        abs(np.mean(np.multiply(values, signs))) >= observed - 1e-12
        for signs in itertools.product([1, -1], repeat=len(values))
    ]
    assert sign_flip_p(values) == pytest.approx(np.mean(flips), rel=1e-12)
    assert sign_flip_p([0.0, 0.0]) == 1.0 and sign_flip_p([0.1, -0.1]) == 1.0
    # a large sample: Monte Carlo flips, deterministic by seed, small for a clear effect
    big = np.random.default_rng(3).normal(0.5, 1.0, 200)
    assert sign_flip_p(big, seed=1) == sign_flip_p(big, seed=1) < 0.001
    null = np.random.default_rng(4).normal(0.0, 1.0, 200)
    assert sign_flip_p(null, seed=1) > 0.05


def test_holm_on_a_known_case():
    # sorted: 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1 -> 0.02, 0.03, 0.06, max(0.04, 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []
    assert holm([0.2]) == [0.2]


def test_every_difference_of_a_study_is_one_holm_family():
    summary = summarize_study(study(np.random.default_rng(5)), n_boot=500)
    cells = [
        cell
        for by_field in summary["differences"].values()
        for row in by_field.values()
        for cell in row.values()
    ]
    assert len(cells) == 8
    assert [c["p_holm"] for c in cells] == pytest.approx(holm([c["p"] for c in cells]))
    assert all(c["p"] <= c["p_holm"] <= 1 for c in cells)


def test_bootstrap_ci_averages_in_double_precision():
    # float32 sums 1e8 + 1 - 1e8 to 0; the mean of these three scores is 1/3
    mean, low, high = bootstrap_ci(np.array([1e8, 1.0, -1e8], dtype=np.float32), n_boot=5)
    assert mean == 1 / 3


def test_bootstrap_ci_bounds_of_level_and_n_boot():
    for level in (0.0, 1.0, 1.5):
        message = rf"^bootstrap_ci: level must lie in \(0, 1\), got {level}$"
        with pytest.raises(ValueError, match=message):
            bootstrap_ci([0.1, 0.2], level=level)
    with pytest.raises(ValueError, match="^bootstrap_ci: n_boot must be >= 1, got 0$"):
        bootstrap_ci([0.1, 0.2], n_boot=0)
    with pytest.raises(ValueError, match="^bootstrap_ci: values contain NaN or infinity$"):
        bootstrap_ci([0.1, float("inf")])
    with pytest.raises(ValueError, match="^bootstrap_ci: method must be BCa or percentile"):
        bootstrap_ci([0.1, 0.2], method="basic")
    assert bootstrap_ci([0.25, 0.25]) == (0.25, 0.25, 0.25)  # no spread: the value itself


def test_cells_are_the_bootstrap_of_person_means_at_the_given_level():
    # person p's values over two seeds; "city" scores f1 but not em, the first metric seen
    table = {}
    for seed in (0, 1):
        for p in range(5):
            table[(seed, f"p{p}", "date")] = {"em": (p + seed) % 2, "f1": (p * seed) / 8}
            table[(seed, f"p{p}", "city")] = {"f1": (p + 2 * seed) / 8}
    out = policy_means(table, seed=3, n_boot=30, level=0.8)
    assert list(out) == ["date", "city"] and list(out["city"]) == ["f1"]
    for field, cells in out.items():
        for metric, cell in cells.items():
            person_means = [
                np.mean([table[(s, f"p{p}", field)][metric] for s in (0, 1)]) for p in range(5)
            ]
            mean, low, high = textbook_ci(person_means, 3, 30, 0.8)
            assert cell == {
                "mean": pytest.approx(mean, rel=1e-12),
                "low": pytest.approx(low, rel=1e-12),
                "high": pytest.approx(high, rel=1e-12),
                "n_people": 5,
                "n_units": 10,
            }


def test_a_unit_on_the_policy_side_only_is_skipped_wherever_it_comes():
    rng = np.random.default_rng(8)
    base, policy = random_table(rng, n_people=6), random_table(rng, n_people=6)
    stranger_first = {(9, "stranger", "company"): {"em": 5.0, "f1": 5.0}, **policy}
    assert paired_differences(stranger_first, base, n_boot=50) == paired_differences(
        policy, base, n_boot=50
    )
    with pytest.raises(
        ValueError,
        match="^no \\(seed, person, field\\) unit is scored in both runs: they must share "
        "seeds, test people and metrics to be paired$",
    ):
        paired_differences({(5, "p000", "company"): {"em": 1.0}}, base)


def test_unit_scores_skip_a_missing_metric_but_keep_the_next():
    rows = {0: [{"source_id": "a", "field": "date", "em": None, "cloze_em": 0.5}]}
    assert unit_scores(rows, ["em", "cloze_em"]) == {(0, "a", "date"): {"cloze_em": 0.5}}


def test_summarize_study_passes_its_options_and_has_the_documented_defaults():
    rng = np.random.default_rng(9)
    tables = {"none": random_table(rng, 12), "contrast": random_table(rng, 12)}
    tables["random"] = random_table(rng, 12)  # differences that vary from person to person
    options = {"seed": 4, "n_boot": 40, "level": 0.8}
    summary = summarize_study(tables, **options)
    for policy, table in tables.items():
        assert summary["means"][policy] == policy_means(table, **options)

    def unadjusted(by_field):  # Holm's p depends on the family, the rest on the pair alone
        return {f: {m: {k: v for k, v in c.items() if k != "p_holm"} for m, c in row.items()}
                for f, row in by_field.items()}  # fmt: skip

    for policy in ("contrast", "random"):
        assert unadjusted(summary["differences"][policy]) == paired_differences(
            tables[policy], tables["none"], **options
        )
    # the report calls summarize_study without options: 10 000 resamples, seed 0, 95%
    default = summarize_study({"none": tables["none"], "contrast": tables["contrast"]})
    assert (default["n_boot"], default["bootstrap_seed"], default["level"]) == (10_000, 0, 0.95)
    assert default["means"]["none"] == policy_means(tables["none"])
    assert unadjusted(default["differences"]["contrast"]) == paired_differences(
        tables["contrast"], tables["none"]
    )
    cell = default["means"]["none"]["company"]["em"]
    people = sorted({p for _, p, f in tables["none"] if f == "company"})
    person_means = [
        np.mean([tables["none"][(s, p, "company")]["em"] for s in SEEDS]) for p in people
    ]
    assert (cell["mean"], cell["low"], cell["high"]) == bootstrap_ci(person_means)
    spread = max(person_means) - min(person_means)
    assert (cell["low"], cell["high"]) == pytest.approx(
        textbook_bca(person_means, 0, 10_000, 0.95)[1:], abs=0.02 * spread
    )
    with pytest.raises(ValueError, match=r"^baseline policy 'x' has no scores \(policies: a, b\)$"):
        summarize_study({"a": tables["none"], "b": tables["none"]}, baseline="x")


def _cell(mean, low, high, people=3, excludes_zero=None, p=None):
    cell = {"mean": mean, "low": low, "high": high, "n_people": people, "n_units": 2 * people}
    if excludes_zero is not None:
        cell["excludes_zero"] = excludes_zero
    if p is not None:
        cell["p"], cell["p_holm"] = p
    return cell


def hand_summary(differences=True):
    """A summary built by hand: one policy lacks a field, some cells lack a metric, one CI
    excludes 0 from below and one from above."""
    return {
        "baseline": "none",
        "policies": ["none", "contrast", "random"],
        "fields": ["date", "city"],
        "metrics": ["em", "f1"],
        "seeds": [0, 1],
        "level": 0.9,
        "n_boot": 50,
        "bootstrap_seed": 4,
        "means": {
            "none": {
                "date": {"em": _cell(0.5, 0.25, 0.75), "f1": _cell(0.6, 0.5, 0.7)},
                "city": {"f1": _cell(0.25, 0.13, 0.38, people=2)},
            },
            "contrast": {"date": {"em": _cell(0.75, 0.5, 1.0), "f1": _cell(0.9, 0.8, 1.0)}},
            "random": {"city": {"em": _cell(0.3, 0.1, 0.4, people=2)}},
        },
        "differences": {
            "contrast": {
                "date": {
                    "em": _cell(-0.25, -0.5, -0.13, excludes_zero=True, p=(0.004, 0.016)),
                    "f1": _cell(0.3, -0.1, 0.5, excludes_zero=False, p=(0.2, 0.4)),
                },
                "city": {"f1": _cell(0.2, 0.1, 0.3, 2, excludes_zero=True, p=(0.0004, 0.0016))},
            },
            "random": {"city": {"em": _cell(0.0, -0.1, 0.1, 2, excludes_zero=False, p=(1, 1))}},
        }
        if differences
        else {},
    }


MEANS_MARKDOWN = """\
## Statistics over test people and seeds

Mean and 90% BCa bootstrap CI over 2/3 test people (each person's score averaged over \
seeds [0, 1]; 50 resamples of people, bootstrap seed 4).

| field | policy | em | f1 |
|---|---|---|---|
| date | none | 0.50 [0.25, 0.75] | 0.60 [0.50, 0.70] |
| date | contrast | 0.75 [0.50, 1.00] | 0.90 [0.80, 1.00] |
| date | random | - | - |
| city | none | - | 0.25 [0.13, 0.38] |
| city | contrast | - | - |
| city | random | 0.30 [0.10, 0.40] | - |
"""

DIFFERENCES_MARKDOWN = """\
### Paired differences against none

Per unit (same seed, same person), policy minus none; mean and 90% CI.

| field | difference | em | f1 |
|---|---|---|---|
| date | contrast - none | -0.25 [-0.50, -0.13] | +0.30 [-0.10, 0.50] |
| date | random - none | - | - |
| city | contrast - none | - | +0.20 [0.10, 0.30] |
| city | random - none | +0.00 [-0.10, 0.10] | - |

2 of 4 differences have a 90% CI that excludes 0:

- contrast - none, date em: -0.25 [-0.50, -0.13], excludes 0 (contrast below none; \
p = 0.004, Holm p = 0.016).
- contrast - none, city f1: +0.20 [0.10, 0.30], excludes 0 (contrast above none; \
p = < 0.001, Holm p = 0.002).

Corrected for the 4 comparisons (Holm, sign-flip permutation p-values over test people): 2 of \
them have Holm p < 0.1. Without a correction, about 10% of them would exclude 0 by chance \
alone if no policy had any effect.
"""


def test_study_markdown_renders_every_number_of_a_hand_made_summary():
    assert study_markdown(hand_summary()) == MEANS_MARKDOWN + "\n" + DIFFERENCES_MARKDOWN
    assert study_markdown(hand_summary(), means=False) == DIFFERENCES_MARKDOWN
    assert study_markdown(hand_summary(differences=False)) == (
        MEANS_MARKDOWN + "\nOnly the baseline 'none' was run: nothing to pair.\n"
    )


def test_study_markdown_says_so_when_no_difference_excludes_zero():
    summary = hand_summary()
    for cells in summary["differences"].values():
        for row in cells.values():
            for cell in row.values():
                cell["excludes_zero"] = False
    head, _ = DIFFERENCES_MARKDOWN.split("2 of 4")
    assert study_markdown(summary, means=False) == head + (
        "None of the 4 differences against none excludes 0: every 90% CI contains 0.\n"
        "\n"
        "Corrected for the 4 comparisons (Holm, sign-flip permutation p-values over test people): "
        "2 of them have Holm p < 0.1. Without a correction, about 10% of them would exclude 0 by "
        "chance alone if no policy had any effect.\n"
    )
