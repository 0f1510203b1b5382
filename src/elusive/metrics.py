"""Answer metrics: SQuAD-style exact match and word-level F1, averaged per field and overall.

Normalisation follows SQuAD v1.1 (lowercase, drop punctuation, drop the articles a/an/the,
collapse whitespace), extended to Unicode: text is NFC-normalised first, and every Unicode
punctuation character (category P*) is deleted as well as ASCII `string.punctuation`.
Accents are kept ("José" != "Jose"). Written here because the hub metric cannot be fetched
offline.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_ASCII_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalisation (Unicode-aware, see the module docstring)."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(
        ch for ch in text if ch not in _ASCII_PUNCT and not unicodedata.category(ch).startswith("P")
    )
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Word-level F1 of the normalised strings. If either is empty, F1 is 1.0 when both are
    (the SQuAD v2.0 convention) and 0.0 otherwise."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of a prediction against several gold answers: the best of each, as SQuAD."""
    if not golds:
        raise ValueError("at least one gold answer is needed")
    return (
        max(exact_match(prediction, g) for g in golds),
        max(f1_score(prediction, g) for g in golds),
    )


PROBES: tuple[str, ...] = (
    "choice",
    "logprob",
    "cloze_em",
    "cloze_f1",
    "cloze_choice",
    "cloze_logprob",
)
"""Knowledge-probe metrics (`elusive.evaluation.probes`), beside QA ``em`` and ``f1``."""
METRICS: tuple[str, ...] = ("em", "f1", *PROBES)
LABELS: dict[str, str] = {
    "em": "EM",
    "f1": "F1",
    "cloze_em": "cloze EM",
    "cloze_f1": "cloze F1",
    "cloze_choice": "cloze choice",
    "cloze_logprob": "cloze logprob",
}
"""How tables and figures name a metric (others go by their key)."""


@dataclass(frozen=True)
class FieldScore:
    """Mean scores over the `n` questions of a field; a probe is None where it was not run
    (``cloze_*`` needs QA lines with a cloze prompt), and so are `em` and `f1` for a field of
    probes without questions (span-cloze probes, `elusive.corpus.cloze`)."""

    em: float | None
    f1: float | None
    n: int
    choice: float | None = None
    """Share of questions whose gold answer out-scores every distractor (chance 1/(k+1))."""
    logprob: float | None = None
    """Mean per-token log-probability of the gold answer after the QA prompt."""
    cloze_em: float | None = None
    cloze_f1: float | None = None
    cloze_choice: float | None = None
    cloze_logprob: float | None = None

    def present(self) -> dict[str, float]:
        """The metrics that were measured, in METRICS order."""
        return {m: getattr(self, m) for m in METRICS if getattr(self, m) is not None}


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[str, FieldScore]:
    """Average per-question rows (``field`` plus any of METRICS) per field, plus ``overall``
    over every row. A metric is averaged over the rows that have it (not None).

    Fields keep the order they first appear in; ``overall`` comes last.
    """
    sums: dict[str, dict[str, list[float]]] = {}  # field -> metric -> [sum, count]
    counts: dict[str, int] = {}
    for row in rows:
        for key in (row["field"], "overall"):
            counts[key] = counts.get(key, 0) + 1
            acc = sums.setdefault(key, {})
            for metric in METRICS:
                if row.get(metric) is not None:
                    pair = acc.setdefault(metric, [0.0, 0])
                    pair[0] += row[metric]
                    pair[1] += 1
    order = [k for k in counts if k != "overall"] + (["overall"] if counts else [])
    return {
        key: FieldScore(
            n=counts[key],
            # a field of probes alone has no QA answer: no em, no f1
            **{"em": None, "f1": None, **{m: t / n for m, (t, n) in sums[key].items()}},
        )
        for key in order
    }


def unmeasured(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per field and ``overall`` (keyed and ordered as by `aggregate`), the METRICS that rows
    carry but none has a value for: `aggregate` leaves such a metric out of that field's
    scores, and this names it. Fields missing nothing are left out."""
    measured: dict[str, dict[str, bool]] = {}  # field -> metric carried -> any value
    for row in rows:
        for key in (row["field"], "overall"):
            seen = measured.setdefault(key, {})
            for metric in METRICS:
                if metric in row:
                    seen[metric] = seen.get(metric, False) or row[metric] is not None
    order = [k for k in measured if k != "overall"] + (["overall"] if measured else [])
    missing = {key: [m for m in METRICS if measured[key].get(m) is False] for key in order}
    return {key: names for key, names in missing.items() if names}
