"""Study statistics: bootstrap CIs, paired differences against the baseline, the markdown and
the paired-difference figure, on synthetic score tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elusive.figures import plot_paired_differences
from elusive.stats import (
    bootstrap_ci,
    paired_differences,
    policy_means,
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
    summary = summarize_study(study(np.random.default_rng(5)), n_boot=500)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["policies"] == ["none", "contrast", "random"] and summary["seeds"] == [0, 1, 2]
    assert set(summary["differences"]) == {"contrast", "random"}
    assert summary["means"]["none"]["company"]["em"]["n_people"] == 12
    text = study_markdown(summary)
    assert "2 of 8 differences have a 95% CI that excludes 0" in text
    assert (
        "- contrast - none, university em: +0.25 [0.25, 0.25], excludes 0 (contrast above none)."
        in text
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


def test_paired_difference_figure_png(tmp_path):
    summary = summarize_study(study(np.random.default_rng(7)), n_boot=200)
    out = plot_paired_differences(summary, tmp_path / "fig" / "paired.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["paired.png"]  # no temp file left
    with pytest.raises(ValueError, match="no paired differences"):
        plot_paired_differences(summary, tmp_path / "none.png", metrics=["cloze_em"])
    assert not (tmp_path / "none.png").exists()
