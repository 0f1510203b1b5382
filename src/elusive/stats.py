"""Study statistics: per policy, field and metric, the mean test score and its bootstrap CI,
and the paired difference of each policy from a baseline policy (``none``) with its CI.

The unit of measurement is one test person under one training seed: a *score table* maps
``(seed, source_id, field)`` to ``{metric: value}`` (em, f1, cloze_em, choice, ...; a metric
may be absent for some fields). The same test people are scored under every seed, so units of
one person are not independent: the CIs resample people (clusters), each person carrying the
mean of their values over seeds (see `bootstrap_ci`). Paired differences also get a sign-flip
permutation p-value and, over each study's family of differences, Holm's adjustment. numpy and
scipy; no model code.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real

import numpy as np
from scipy import stats as scipy_stats

ScoreTable = Mapping[tuple[int, str, str], Mapping[str, float]]
"""(seed, source_id, field) -> {metric: value}: one policy's test scores per person and seed."""


def unit_scores(
    rows_by_seed: Mapping[int, Iterable[Mapping]], metrics: Sequence[str]
) -> dict[tuple[int, str, str], dict[str, float]]:
    """Average prediction rows (dicts with ``source_id``, ``field`` and metric values) into a
    score table: one unit per (seed, person, field), each metric the mean over that person's
    questions on the field. A metric absent (or None) in a row is skipped for that row; a unit
    with none of `metrics` is left out."""
    sums: dict[tuple[int, str, str], dict[str, list[float]]] = {}
    for seed, rows in rows_by_seed.items():
        for row in rows:
            for key in ("source_id", "field"):
                if not row.get(key):
                    raise ValueError(f"seed {seed}: a prediction row has no {key!r}: {dict(row)}")
            unit = (seed, row["source_id"], row["field"])
            for metric in metrics:
                value = row.get(metric)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, Real):
                    raise ValueError(
                        f"seed {seed}, {unit[1]} {unit[2]}: {metric} = {value!r} is not a number"
                    )
                acc = sums.setdefault(unit, {}).setdefault(metric, [0.0, 0])
                acc[0] += value
                acc[1] += 1
    return {unit: {m: total / n for m, (total, n) in acc.items()} for unit, acc in sums.items()}


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_boot: int = 10_000,
    level: float = 0.95,
    method: str = "BCa",
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its bootstrap CI at `level`, by
    `scipy.stats.bootstrap` (``BCa``, bias-corrected and accelerated: its coverage is closer to
    `level` than the percentile bootstrap's on small, skewed samples such as EM scores of a few
    dozen people; or ``percentile``).

    `values` must be independent draws, one per sampled unit. In the study that unit is a test
    person, each value the person's score averaged over the training seeds: the same people
    are scored under every seed, so resampling (person, seed) pairs independently would treat
    three correlated looks at one person as three people and give CIs too narrow by up to
    sqrt(seeds). Resampling people keeps each person's seed-to-seed variation inside their
    value; the seeds themselves are not resampled (with 3-5 seeds a bootstrap over them has a
    handful of distinct draws), so the CI is for these seeds' training runs on new people.
    Values that are all equal (or a single one) have no spread to resample: the CI is the value;
    where BCa is undefined (too little spread for its acceleration), the CI is the percentile
    bootstrap's.

    Deterministic: the resamples come from ``numpy.random.default_rng(seed)``.
    """
    data = _checked(values, "bootstrap_ci")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    if method not in ("BCa", "percentile"):
        raise ValueError(f"bootstrap_ci: method must be BCa or percentile, got {method!r}")
    mean = float(data.mean())
    if data.min() == data.max():
        return mean, mean, mean
    with warnings.catch_warnings():
        # BCa's acceleration needs a spread of jackknife means; where a sample has too little
        # (two distinct values, very few resamples) it is undefined, and scipy warns and gives NaN
        warnings.simplefilter("ignore", scipy_stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for how in (method, "percentile"):
            found = scipy_stats.bootstrap(
                (data,),
                np.mean,
                n_resamples=n_boot,
                confidence_level=level,
                method=how,
                rng=np.random.default_rng(seed),
            ).confidence_interval
            if np.isfinite([found.low, found.high]).all():
                break
    return mean, float(found.low), float(found.high)


def sign_flip_p(values: Sequence[float] | np.ndarray, seed: int = 0, n_resamples: int = 10_000):
    """Two-sided p-value of "the mean of `values` is 0" by a paired sign-flip permutation test
    (`scipy.stats.permutation_test`): under no effect each person's difference is as likely
    negative as positive, so the observed mean is compared with the means of `values` under
    random sign flips; exact (every one of the 2^n flips) where 2^n <= `n_resamples`. Values
    all 0 give 1."""
    data = _checked(values, "sign_flip_p")
    if not data.any():
        return 1.0
    found = scipy_stats.permutation_test(
        (data,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(found.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in their order: the k-th smallest
    is multiplied by (m - k + 1), then made non-decreasing along that order and capped at 1.
    Rejecting where the adjusted p < alpha keeps the chance of any false rejection in the
    family below alpha, whatever the dependence between the tests."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _checked(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"{name} needs a non-empty list of numbers, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: values contain NaN or infinity")
    return data


def _first_seen(table: ScoreTable) -> tuple[list[str], list[str]]:
    """The fields and metrics of a table, each in the order they first appear."""
    fields = dict.fromkeys(field for _, _, field in table)
    metrics = dict.fromkeys(m for scores in table.values() for m in scores)
    return list(fields), list(metrics)


def _cell_stats(
    table: ScoreTable,
    fields: Sequence[str],
    metrics: Sequence[str],
    seed: int,
    n_boot: int,
    level: float,
    test_zero: bool = False,
) -> dict[str, dict[str, dict]]:
    """field -> metric -> {mean, low, high, n_people, n_units} for every (field, metric) the
    table scores; each person's value is their mean over seeds (see `bootstrap_ci`). With
    `test_zero`, also ``p``: the sign-flip permutation p-value of a zero mean (`sign_flip_p`)."""
    # field -> metric -> person -> that person's values, one per seed
    groups: dict[str, dict[str, dict[str, list[float]]]] = {}
    for (_, person, field), scores in table.items():
        for metric, value in scores.items():
            groups.setdefault(field, {}).setdefault(metric, {}).setdefault(person, [])
            groups[field][metric][person].append(value)
    out: dict[str, dict[str, dict]] = {}
    for field in fields:
        for metric in metrics:
            by_person = groups.get(field, {}).get(metric)
            if not by_person:
                continue
            people = sorted(by_person)  # a fixed order, so a seed gives the same resamples
            person_means = [float(np.mean(by_person[p])) for p in people]
            mean, low, high = bootstrap_ci(person_means, seed, n_boot, level)
            out.setdefault(field, {})[metric] = {
                "mean": mean,
                "low": low,
                "high": high,
                "n_people": len(people),
                "n_units": sum(len(v) for v in by_person.values()),
            }
            if test_zero:
                out[field][metric]["p"] = sign_flip_p(person_means, seed, n_boot)
    return out


def policy_means(
    scores: ScoreTable,
    fields: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 10_000,
    level: float = 0.95,
) -> dict[str, dict[str, dict]]:
    """field -> metric -> {mean, low, high, n_people, n_units} of one policy's score table."""
    seen_fields, seen_metrics = _first_seen(scores)
    return _cell_stats(scores, fields or seen_fields, metrics or seen_metrics, seed, n_boot, level)


def paired_differences(
    policy_scores: ScoreTable,
    baseline_scores: ScoreTable,
    fields: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 10_000,
    level: float = 0.95,
) -> dict[str, dict[str, dict]]:
    """field -> metric -> {mean, low, high, excludes_zero, p, n_people, n_units} of policy -
    baseline, taken unit by unit on the (seed, person, field) units both tables score (units
    on one side only are ignored), then averaged and bootstrapped per person as in
    `bootstrap_ci`; ``p`` is the sign-flip permutation p-value of no difference over the same
    person means. Pairing removes the person-to-person spread both runs share."""
    diffs: dict[tuple[int, str, str], dict[str, float]] = {}
    for unit, scores in policy_scores.items():
        base = baseline_scores.get(unit)
        if base is None:
            continue
        shared = {m: scores[m] - base[m] for m in scores if m in base}
        if shared:
            diffs[unit] = shared
    if not diffs:
        raise ValueError(
            "no (seed, person, field) unit is scored in both runs: "
            "they must share seeds, test people and metrics to be paired"
        )
    seen_fields, seen_metrics = _first_seen(diffs)
    out = _cell_stats(
        diffs, fields or seen_fields, metrics or seen_metrics, seed, n_boot, level, test_zero=True
    )
    for cells in out.values():
        for cell in cells.values():
            cell["excludes_zero"] = cell["low"] > 0 or cell["high"] < 0
    return out


def summarize_study(
    scores_by_policy: Mapping[str, ScoreTable],
    baseline: str = "none",
    fields: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 10_000,
    level: float = 0.95,
) -> dict:
    """The study's statistics as a JSON-serialisable dict: ``means`` (policy -> field ->
    metric -> {mean, low, high, n_people, n_units}) for every policy and ``differences`` (the
    same plus ``excludes_zero``, ``p`` and ``p_holm``) of every other policy against
    `baseline`. The differences of one study are one family: ``p_holm`` is Holm's adjustment
    over all of them, so a difference with ``p_holm`` < 1 - `level` stands even after this many
    looks. Fields and metrics default to those scored, in the order they first appear
    (baseline first)."""
    if baseline not in scores_by_policy:
        raise ValueError(
            f"baseline policy {baseline!r} has no scores (policies: {', '.join(scores_by_policy)})"
        )
    ordered = [baseline, *(p for p in scores_by_policy if p != baseline)]
    seen_fields: dict[str, None] = {}
    seen_metrics: dict[str, None] = {}
    for policy in ordered:
        f, m = _first_seen(scores_by_policy[policy])
        seen_fields.update(dict.fromkeys(f))
        seen_metrics.update(dict.fromkeys(m))
    fields = list(fields or seen_fields)
    metrics = list(metrics or seen_metrics)
    options = {"fields": fields, "metrics": metrics, "seed": seed, "n_boot": n_boot, "level": level}
    means = {p: policy_means(scores_by_policy[p], **options) for p in ordered}
    differences = {}
    for policy in ordered[1:]:
        try:
            differences[policy] = paired_differences(
                scores_by_policy[policy], scores_by_policy[baseline], **options
            )
        except ValueError as exc:
            raise ValueError(f"{policy} - {baseline}: {exc}") from None
    family = [cell for by_field in differences.values() for cells in by_field.values()
              for cell in cells.values()]  # fmt: skip
    for cell, adjusted in zip(family, holm([c["p"] for c in family]), strict=True):
        cell["p_holm"] = adjusted
    seeds = sorted({s for table in scores_by_policy.values() for s, _, _ in table})
    return {
        "baseline": baseline,
        "policies": ordered,
        "fields": fields,
        "metrics": metrics,
        "seeds": seeds,
        "level": level,
        "n_boot": n_boot,
        "bootstrap_seed": seed,
        "means": means,
        "differences": differences,
    }


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def _interval(cell: dict, signed: bool = False) -> str:
    mean = f"{cell['mean']:+.2f}" if signed else f"{cell['mean']:.2f}"
    return f"{mean} [{cell['low']:.2f}, {cell['high']:.2f}]"


def study_markdown(
    summary: dict, means: bool = True, unit: tuple[str, str] = ("person", "people")
) -> str:
    """Markdown: the mean and CI of every policy per field and metric (unless `means` is
    False), the paired differences against the baseline, and sentences naming the differences
    whose CI excludes 0. `unit`: what the questions are about, singular and plural (the
    resampled clusters: people of biographies, texts of any other corpus)."""
    one, many = unit
    baseline, metrics = summary["baseline"], summary["metrics"]
    level = f"{summary['level']:.0%}"

    def table(first: str, cells_by_policy: Mapping[str, dict], signed: bool) -> list[str]:
        lines = [
            "| field | " + first + " | " + " | ".join(metrics) + " |",
            "|---|---|" + "---|" * len(metrics),
        ]
        for field in summary["fields"]:
            for label, cells in cells_by_policy.items():
                row = cells.get(field, {})
                values = [_interval(row[m], signed) if m in row else "-" for m in metrics]
                lines.append(f"| {field} | {label} | " + " | ".join(values) + " |")
        return lines

    out = []
    if means:
        cells = [
            c
            for by_field in summary["means"].values()
            for row in by_field.values()
            for c in row.values()
        ]
        people = {c["n_people"] for c in cells}  # one number unless some fields miss people
        n_people = "/".join(str(n) for n in sorted(people))
        out += [
            f"## Statistics over test {many} and seeds",
            "",
            f"Mean and {level} BCa bootstrap CI over {n_people} test {many} "
            f"(each {one}'s score averaged over seeds {summary['seeds']}; {summary['n_boot']} "
            f"resamples of {many}, bootstrap seed {summary['bootstrap_seed']}).",
            "",
            *table("policy", summary["means"], signed=False),
            "",
        ]
    differences = summary["differences"]
    if not differences:
        return "\n".join([*out, f"Only the baseline {baseline!r} was run: nothing to pair.", ""])
    labels = {f"{policy} - {baseline}": cells for policy, cells in differences.items()}
    out += [
        f"### Paired differences against {baseline}",
        "",
        f"Per unit (same seed, same {one}), policy minus {baseline}; mean and {level} CI.",
        "",
        *table("difference", labels, signed=True),
        "",
    ]
    found, tested, survive, fewest, least_p = [], 0, 0, None, 1.0
    for policy, cells in differences.items():
        for field in summary["fields"]:
            for metric in metrics:
                cell = cells.get(field, {}).get(metric)
                if cell is None:
                    continue
                tested += 1
                fewest = min(fewest or cell["n_people"], cell["n_people"])
                least_p = min(least_p, cell["p"])
                if cell["excludes_zero"]:
                    side = "above" if cell["mean"] > 0 else "below"
                    found.append(
                        f"- {policy} - {baseline}, {field} {metric}: {_interval(cell, True)}, "
                        f"excludes 0 ({policy} {side} {baseline}; p = {_p(cell['p'])}, "
                        f"Holm p = {_p(cell['p_holm'])})."
                    )
                if cell["p_holm"] < 1 - summary["level"]:
                    survive += 1
    if found:
        out += [f"{len(found)} of {tested} differences have a {level} CI that excludes 0:", ""]
        out += [*found, ""]
    else:
        out.append(
            f"None of the {tested} differences against {baseline} excludes 0: "
            f"every {level} CI contains 0."
        )
        out.append("")
    alpha = f"{1 - summary['level']:.2g}"
    out.append(
        f"Corrected for the {tested} comparisons (Holm, sign-flip permutation p-values over test "
        f"{many}): {survive} of them have Holm p < {alpha}. Without a correction, about "
        f"{1 - summary['level']:.0%} of them would exclude 0 by chance alone if no policy had any "
        "effect."
    )
    # an exact two-sided sign-flip test over n people cannot give less than 2 / 2^n (said
    # only where no p shown is smaller, i.e. where the tests were exact)
    floor = 2.0 / 2**fewest if fewest else 0.0
    if tested and least_p >= floor and min(1.0, tested * floor) >= 1 - summary["level"]:
        out.append(
            f"With {fewest} test {many} no sign-flip p-value can be below "
            f"{floor:.2g} (2 / 2^{fewest}), so no Holm p over {tested} comparisons can "
            f"be below {min(1.0, tested * floor):.2g}: this run is too small for any "
            "difference to pass the correction."
        )
    out.append("")
    return "\n".join(out)
