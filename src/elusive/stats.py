"""Study statistics: per policy, field and metric, the mean test score and its bootstrap CI,
and the paired difference of each policy from a baseline policy (``none``) with its CI.

The unit of measurement is one test person under one training seed: a *score table* maps
``(seed, source_id, field)`` to ``{metric: value}`` (em, f1, cloze_em, choice, ...; a metric
may be absent for some fields). The same test people are scored under every seed, so units of
one person are not independent: the CIs resample people (clusters), each person carrying the
mean of their values over seeds (see `bootstrap_ci`). Pure numpy; no model code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from numbers import Real

import numpy as np

ScoreTable = Mapping[tuple[int, str, str], Mapping[str, float]]
"""(seed, source_id, field) -> {metric: value}: one policy's test scores per person and seed."""

_CHUNK = 1 << 22
"""Resampled indices drawn at once (32 MiB of int64): bounds memory for large samples."""


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
    values: Sequence[float] | np.ndarray, seed: int = 0, n_boot: int = 10_000, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile-bootstrap CI at `level`.

    `values` must be independent draws, one per sampled unit. In the study that unit is a test
    person, each value the person's score averaged over the training seeds: the same people
    are scored under every seed, so resampling (person, seed) pairs independently would treat
    three correlated looks at one person as three people and give CIs too narrow by up to
    sqrt(seeds). Resampling people keeps each person's seed-to-seed variation inside their
    value; the seeds themselves are not resampled (with 3-5 seeds a bootstrap over them has a
    handful of distinct draws), so the CI is for these seeds' training runs on new people.

    Deterministic: the resamples come from ``numpy.random.default_rng(seed)``.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty list of numbers, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_ci: values contain NaN or infinity")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = data.size
    means = np.empty(n_boot)  # (n_boot,) the mean of each resample
    step = max(1, _CHUNK // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        picks = rng.integers(0, n, size=(stop - start, n))  # (resamples, n) indices into data
        means[start:stop] = data[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(data.mean()), float(low), float(high)


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
) -> dict[str, dict[str, dict]]:
    """field -> metric -> {mean, low, high, n_people, n_units} for every (field, metric) the
    table scores; each person's value is their mean over seeds (see `bootstrap_ci`)."""
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
    """field -> metric -> {mean, low, high, excludes_zero, n_people, n_units} of policy -
    baseline, taken unit by unit on the (seed, person, field) units both tables score (units
    on one side only are ignored), then averaged and bootstrapped per person as in
    `bootstrap_ci`. Pairing removes the person-to-person spread both runs share."""
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
    out = _cell_stats(diffs, fields or seen_fields, metrics or seen_metrics, seed, n_boot, level)
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
    same plus ``excludes_zero``) of every other policy against `baseline`. Fields and metrics
    default to those scored, in the order they first appear (baseline first)."""
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
            f"Mean and {level} percentile-bootstrap CI over {n_people} test {many} "
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
    found, tested = [], 0
    for policy, cells in differences.items():
        for field in summary["fields"]:
            for metric in metrics:
                cell = cells.get(field, {}).get(metric)
                if cell is None:
                    continue
                tested += 1
                if cell["excludes_zero"]:
                    side = "above" if cell["mean"] > 0 else "below"
                    found.append(
                        f"- {policy} - {baseline}, {field} {metric}: {_interval(cell, True)}, "
                        f"excludes 0 ({policy} {side} {baseline})."
                    )
    if found:
        out += [f"{len(found)} of {tested} differences have a {level} CI that excludes 0:", ""]
        out += [*found, ""]
    else:
        out.append(
            f"None of the {tested} differences against {baseline} excludes 0: "
            f"every {level} CI contains 0."
        )
        out.append("")
    chance = f"{1 - summary['level']:.0%}"
    out.append(
        f"(No correction for the {tested} comparisons: if no policy had any effect, about "
        f"{chance} of them would still exclude 0 by chance.)"
    )
    out.append("")
    return "\n".join(out)
