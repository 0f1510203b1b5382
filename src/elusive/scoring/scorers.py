"""Where each scorer puts a text's facts: the rank percentile of every span's tokens.

The method's claim is that large - small attention ranks the elusive clues of a text (its
subject, its facts) high, so that a ranked dropout policy keeps them. This measures it without
training: for each scorer, every eligible token of a text gets the percentile of its rank among
the text's eligible tokens (100 = ranked first, kept most by `contrast`-style dropout; 0 = last;
a text of one eligible token puts it at 100); a span's value for a text is the mean percentile
of the eligible tokens overlapping it; the table gives, per scorer and span kind (the span key up
to its first ``.``, as `elusive.corpus.cloze.span_kind`), the mean over texts with a 95% BCa CI
(`elusive.stats.bootstrap_ci`: texts are the resampled units, people for the biographies).

Scorers, from a scores folder (`elusive attention`):

- ``contrast``: large - small, each token's attention received (the column mean over the
  queries that see it): the ranking elusive's `contrast` policy drops by;
- ``large``, ``small`` (or ``model`` for a single model's folder): one model's own attention;
- ``position``: earlier tokens first, the order a column mean leans to (a late token is seen by
  few queries);
- ``shuffled``: a seeded random permutation per text (the `shuffled` policy's): chance, 50 on
  average;
- ``authors``: the authors' released scorer (a scores folder made with ``attention.score:
  authors``), ranked as their code ranks it (`elusive.scoring.scores.authors_rank`), which the
  `authors` policy drops by;
- ``query-row``: the paper's Figures 2-3 evidence, large - small attention *row* at the token
  just before a span (e.g. "at" before the company): the percentiles rank the tokens that row
  sees (those up to the query), so a span gets one value per later span's query, averaged per
  text (the subject of a biography: one per field).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from elusive.corpus.cloze import span_kind
from elusive.corpus.records import Record
from elusive.errors import ElusiveError
from elusive.parallel import Dist
from elusive.scoring.scores import TextScores, authors_rank, rank_desc
from elusive.stats import bootstrap_ci


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
    if scorer in ("contrast", "authors"):
        if row.contrast is None:
            raise ScorerError(f"text {row.id!r}: no contrast (the scores hold one model)")
        if scorer == "authors":
            return [-float(r) for r in authors_rank(row.contrast)]
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


def _span_share(
    shares: Sequence[float | None], offsets: Sequence[tuple[int, int]], lo: int, hi: int
) -> float | None:
    """The mean percentile of the ranked tokens overlapping characters [lo, hi), if any."""
    inside = [
        p for p, (start, end) in zip(shares, offsets, strict=True)
        if p is not None and start < hi and end > lo
    ]  # fmt: skip
    return sum(inside) / len(inside) if inside else None


def span_percentiles(
    records: Sequence[Record], rows: Sequence[TextScores], scorer: str, seed: int = 0
) -> dict[str, list[float]]:
    """span kind -> one value per text that has the span: the mean percentile of its eligible
    tokens under `scorer` (a span without an eligible token is left out for that text)."""
    by_id = _by_id(records, rows)
    out: dict[str, list[float]] = {}
    for record in records:
        row = by_id[record.id]
        shares = percentiles(scorer_values(row, scorer, seed), row.eligible)
        for key, (lo, hi) in record.spans.items():
            if (share := _span_share(shares, row.offsets, lo, hi)) is not None:
                out.setdefault(span_kind(key), []).append(share)
    return out


def _by_id(records: Sequence[Record], rows: Sequence[TextScores]) -> dict[str, TextScores]:
    by_id = {row.id: row for row in rows}
    for record in records:
        if record.id not in by_id:
            raise ScorerError(f"no scores for text {record.id!r}: score this corpus first")
    return by_id


def value_queries(record: Record, row: TextScores) -> dict[str, int]:
    """span key -> index in ``row.tokens`` of the token just before the span (the last token
    ending at or before its first character); spans with no token before them are left out."""
    queries = {}
    for key, (lo, _) in record.spans.items():
        before = [k for k, (_, end) in enumerate(row.offsets) if end <= lo]
        if before:
            queries[key] = before[-1]
    return queries


def query_rows(
    records: Sequence[Record],
    rows: Sequence[TextScores],
    specs: dict[str, str],
    config: Any,
    dist: Dist | None = None,
) -> dict[str, dict[str, list[float]]]:
    """text id -> span key -> large - small attention row at the token just before that span
    (`value_queries`), over the tokens up to that query. `specs` names the large and small
    models, which must tokenize alike (the scores' ``align: tokens``); `config` is their
    `elusive.scoring.attention.AttentionConfig` (prefix, dtype, batch size, cache); the processes of
    `dist` (default: this one alone) share the rows
    (`elusive.scoring.attention.query_attentions`)."""
    from elusive.scoring.attention import query_attentions

    by_id = _by_id(records, rows)
    jobs = [(r.id, key, q) for r in records for key, q in value_queries(r, by_id[r.id]).items()]
    text_of = {r.id: r.text for r in records}
    texts = [text_of[text_id] for text_id, _, _ in jobs]
    weights = {
        role: [
            a.weights
            for a in query_attentions(specs[role], texts, [q for *_, q in jobs], config, dist=dist)
        ]
        for role in ("large", "small")
    }
    out: dict[str, dict[str, list[float]]] = {}
    for n, (text_id, key, q) in enumerate(jobs):
        large, small = weights["large"][n], weights["small"][n]
        if not len(large) == len(small) == len(by_id[text_id].tokens):
            raise ScorerError(f"text {text_id!r}: the scores' tokens differ from the models'")
        seen = zip(large[: q + 1], small[: q + 1], strict=True)
        out.setdefault(text_id, {})[key] = [a - b for a, b in seen]
    return out


def query_row_percentiles(
    records: Sequence[Record],
    rows: Sequence[TextScores],
    contrasts: dict[str, dict[str, list[float]]],
) -> dict[str, list[float]]:
    """span kind -> one value per text: under each of its `query_rows` contrasts, the mean
    percentile of the span's eligible tokens among the eligible tokens that row sees, averaged
    over the queries that see the span."""
    by_id = _by_id(records, rows)
    out: dict[str, list[float]] = {}
    for record in records:
        row, per_span = by_id[record.id], {}
        for contrast in contrasts.get(record.id, {}).values():
            seen = len(contrast)
            shares = percentiles(contrast, row.eligible[:seen])
            for key, (lo, hi) in record.spans.items():
                share = _span_share(shares, row.offsets[:seen], lo, hi)
                if share is not None:
                    per_span.setdefault(key, []).append(share)
        for key, shares in per_span.items():
            out.setdefault(span_kind(key), []).append(sum(shares) / len(shares))
    return out


def scorer_table(
    records: Sequence[Record],
    rows: Sequence[TextScores],
    scorers: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 10_000,
    *,
    authors: Sequence[TextScores] | None = None,
    query_contrasts: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """scorer -> span kind -> {mean, low, high, n}: the mean rank percentile of the span's
    tokens over texts, with its 95% BCa CI (see the module docstring). `authors`: the rows of
    a scores folder of the authors' scorer, for an ``authors`` row; `query_contrasts`: the
    `query_rows` of the texts, for a ``query-row`` row."""
    if not any(record.spans for record in records):
        raise ScorerError("the texts have no spans to place (biographies and JSONL `spans` do)")
    values = {s: span_percentiles(records, rows, s, seed) for s in scorers or scorers_of(rows)}
    if query_contrasts is not None:
        values["query-row"] = query_row_percentiles(records, rows, query_contrasts)
    if authors is not None:
        values["authors"] = span_percentiles(records, authors, "authors", seed)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for scorer, kinds in values.items():
        table[scorer] = {}
        for kind, per_text in kinds.items():
            mean, low, high = bootstrap_ci(per_text, seed, n_boot)
            table[scorer][kind] = {"mean": mean, "low": low, "high": high, "n": len(per_text)}
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
