"""Where each scorer puts a text's facts: the rank percentile of every span's tokens.

The method's claim is that large - small attention ranks the elusive clues of a text (its
subject, its facts) high, so that a ranked dropout policy keeps them. This measures it without
training: for each scorer, every eligible token of a text gets the percentile of its rank among
the text's eligible tokens (100 = ranked first, kept most by `contrast`-style dropout; 0 = last;
a text of one eligible token puts it at 100); a span's value for a text is the mean percentile
of the eligible tokens overlapping it; the table gives, per scorer and span kind (the span key up
to its first ``.``, as `elusive.cloze.span_kind`), the mean over texts with a 95% BCa CI
(`elusive.stats.bootstrap_ci`: texts are the resampled units, people for the biographies).

Scorers, from a scores folder (`elusive attention`):

- ``contrast``: large - small, each token's attention received (the column mean over the
  queries that see it): the ranking elusive's `contrast` policy drops by;
- ``large``, ``small`` (or ``model`` for a single model's folder): one model's own attention;
- ``position``: earlier tokens first, the order a column mean leans to (a late token is seen by
  few queries);
- ``shuffled``: a seeded random permutation per text (the `shuffled` policy's): chance, 50 on
  average.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .cloze import span_kind
from .corpus import Record
from .errors import ElusiveError
from .scores import TextScores, rank_desc
from .stats import bootstrap_ci


class ScorerError(ElusiveError):
    """A scorer the scores cannot give, or texts without spans to place."""


def scorers_of(rows: Sequence[TextScores]) -> list[str]:
    """The scorers a scores folder can give: contrast where both models are scored, each
    scored model's own, position and shuffled."""
    roles = list(rows[0].scores) if rows else []
    return [*(["contrast"] if rows and rows[0].contrast is not None else []), *roles,
            "position", "shuffled"]  # fmt: skip


def scorer_values(row: TextScores, scorer: str, seed: int = 0) -> list[float]:
    """Each token's value under `scorer` (higher = ranked first)."""
    if scorer == "contrast":
        if row.contrast is None:
            raise ScorerError(f"text {row.id!r}: no contrast (the scores hold one model)")
        return list(row.contrast)
    if scorer == "position":
        return [-float(k) for k in range(len(row.tokens))]
    if scorer == "shuffled":
        order = list(range(len(row.tokens)))
        random.Random(f"{seed}:{row.id}").shuffle(order)
        return [float(v) for v in order]
    if scorer not in row.scores:
        raise ScorerError(f"text {row.id!r}: no scorer {scorer!r} (its roles: {list(row.scores)})")
    return list(row.scores[scorer])


def percentiles(values: Sequence[float], eligible: Sequence[bool]) -> list[float | None]:
    """The rank percentile of each eligible token (100 = first, 0 = last); None elsewhere."""
    ranks = rank_desc(values, eligible)
    n = sum(eligible)
    return [None if r < 0 else 100.0 * (1 - r / (n - 1)) if n > 1 else 100.0 for r in ranks]


def span_percentiles(
    records: Sequence[Record], rows: Sequence[TextScores], scorer: str, seed: int = 0
) -> dict[str, list[float]]:
    """span kind -> one value per text that has the span: the mean percentile of its eligible
    tokens under `scorer` (a span without an eligible token is left out for that text)."""
    by_id = {row.id: row for row in rows}
    out: dict[str, list[float]] = {}
    for record in records:
        row = by_id.get(record.id)
        if row is None:
            raise ScorerError(f"no scores for text {record.id!r}: score this corpus first")
        shares = percentiles(scorer_values(row, scorer, seed), row.eligible)
        for key, (lo, hi) in record.spans.items():
            inside = [
                p
                for p, (start, end) in zip(shares, row.offsets, strict=True)
                if p is not None and start < hi and end > lo
            ]
            if inside:
                out.setdefault(span_kind(key), []).append(sum(inside) / len(inside))
    return out


def scorer_table(
    records: Sequence[Record],
    rows: Sequence[TextScores],
    scorers: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 10_000,
) -> dict[str, dict[str, dict[str, Any]]]:
    """scorer -> span kind -> {mean, low, high, n}: the mean rank percentile of the span's
    tokens over texts, with its 95% BCa CI (see the module docstring)."""
    if not any(record.spans for record in records):
        raise ScorerError("the texts have no spans to place (biographies and JSONL `spans` do)")
    table = {}
    for scorer in scorers or scorers_of(rows):
        table[scorer] = {}
        for kind, values in span_percentiles(records, rows, scorer, seed).items():
            mean, low, high = bootstrap_ci(values, seed, n_boot)
            table[scorer][kind] = {"mean": mean, "low": low, "high": high, "n": len(values)}
    return table


def scorer_markdown(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The table as Markdown: a row per scorer, a column per span kind, ``mean [low, high]``."""
    kinds = list(dict.fromkeys(kind for cells in table.values() for kind in cells))
    lines = ["| scorer | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for scorer, cells in table.items():
        shown = [
            f"{c['mean']:.1f} [{c['low']:.1f}, {c['high']:.1f}]" if (c := cells.get(k)) else "-"
            for k in kinds
        ]
        lines.append(f"| {scorer} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
