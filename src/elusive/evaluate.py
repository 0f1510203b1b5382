"""Closed-book QA scoring: SQuAD-style exact match and word-level F1, per field and overall.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class FieldScore:
    """Mean EM and F1 over `n` questions."""

    em: float
    f1: float
    n: int


def aggregate(rows: Iterable[tuple[str, float, float]]) -> dict[str, FieldScore]:
    """Average (field, em, f1) rows per field, plus ``overall`` over every row.

    Fields keep the order they first appear in; ``overall`` comes last.
    """
    sums: dict[str, list[float]] = {}
    for field, em, f1 in rows:
        for key in (field, "overall"):
            acc = sums.setdefault(key, [0.0, 0.0, 0])
            acc[0] += em
            acc[1] += f1
            acc[2] += 1
    overall = sums.pop("overall", None)
    out = {k: FieldScore(em / n, f1 / n, int(n)) for k, (em, f1, n) in sums.items()}
    if overall is not None:
        em, f1, n = overall
        out["overall"] = FieldScore(em / n, f1 / n, int(n))
    return out
