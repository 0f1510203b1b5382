"""The scores file format: what `elusive attention` writes and `elusive augment` reads.

A scores folder holds ``scores.jsonl`` (one :class:`TextScores` a line: the trained model's
tokens of a text, their character offsets, the attention each received per role, the contrast
and its rank) and ``manifest.json`` (the models, the trained role, the alignment and prefix),
written after the scores so that a folder with a manifest is complete. This module imports no
torch, so augmentation and the report read scores without loading the models' stack; the
scoring itself is `elusive.scoring.attention`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elusive.io import atomic_write_text, iter_jsonl, read_json, write_jsonl
from elusive.options import AttentionError


@dataclass
class TextScores:
    """The scores of one text: one row of ``scores.jsonl``."""

    id: str
    text_sha256: str
    tokens: list[str]
    """Token strings of the trained model's tokenization, prefix tokens removed."""
    offsets: list[tuple[int, int]]
    """Character span of each token in the original text."""
    eligible: list[bool]
    scores: dict[str, list[float]]
    """Attention each token receives, per role ("large", "small", or "model")."""
    contrast: list[float] | None = None
    """large - small, when both roles are scored."""
    rank: list[int] = field(default_factory=list)
    """Rank of the contrast (else of the single model's score) among eligible tokens."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "text_sha256": self.text_sha256,
            "tokens": self.tokens,
            "offsets": [list(o) for o in self.offsets],
            "eligible": self.eligible,
            "scores": self.scores,
        }
        if self.contrast is not None:
            out["contrast"] = self.contrast
        out["rank"] = self.rank
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> TextScores:
        def need(key: str, kind: type) -> Any:
            if not isinstance(obj.get(key), kind):
                raise AttentionError(f"{where}: field {key!r} missing or not a {kind.__name__}")
            return obj[key]

        n = len(need("tokens", list))
        lists = {k: need(k, list) for k in ("offsets", "eligible", "rank")}
        scores = need("scores", dict)
        if "contrast" in obj:
            lists["contrast"] = need("contrast", list)
        lists.update({f"scores.{role}": v for role, v in scores.items()})
        for key, value in lists.items():
            if len(value) != n:
                raise AttentionError(f"{where}: field {key!r} has {len(value)} items, not {n}")
        return cls(
            id=str(need("id", str)),
            text_sha256=need("text_sha256", str),
            tokens=obj["tokens"],
            offsets=[(int(s), int(e)) for s, e in obj["offsets"]],
            eligible=[bool(x) for x in obj["eligible"]],
            scores={role: [float(x) for x in v] for role, v in scores.items()},
            contrast=[float(x) for x in obj["contrast"]] if "contrast" in obj else None,
            rank=[int(x) for x in obj["rank"]],
        )


def write_scores(out_dir: str | Path, manifest: dict[str, Any], rows: Iterable[TextScores]) -> Path:
    """Write ``scores.jsonl`` and then ``manifest.json`` into `out_dir`, each atomically."""
    out = Path(out_dir)
    write_jsonl(out / "scores.jsonl", (row.to_json() for row in rows))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(scores_dir: str | Path) -> dict[str, Any]:
    path = Path(scores_dir) / "manifest.json"
    if not path.is_file():
        raise AttentionError(f"{path}: no such file (run `elusive attention` first)")
    manifest = read_json(path)
    for key in ("models", "trained", "align", "prefix"):
        if key not in manifest:
            raise AttentionError(f"{path}: missing field {key!r}")
    return manifest


def read_scores(scores_dir: str | Path) -> list[TextScores]:
    """Read ``scores.jsonl`` of a scores folder (its manifest must be there too)."""
    read_manifest(scores_dir)
    path = Path(scores_dir) / "scores.jsonl"
    try:
        return [TextScores.from_json(obj, f"{path}:{n}") for n, obj in iter_jsonl(path)]
    except ValueError as exc:  # CorpusError from iter_jsonl, or AttentionError
        raise AttentionError(str(exc)) from None


def authors_rank(values: Sequence[float]) -> list[int]:
    """Rank of each token of a text (0 = first) as the authors' released code ranks its scores
    (``data_augmentation.py``: ``np.argsort(scores)[::-1]`` over every token of the text, in
    float32). Their contrast is mostly zeros (see `elusive.scoring.attention.authors_scores`), so
    most of this order is numpy's order of ties, reversed: the last of a run of equal values first
    for short texts, an order of numpy's sort algorithm (and build) for longer ones."""
    order = np.argsort(np.asarray(values, dtype=np.float32))[::-1]
    ranks = [0] * len(values)
    for r, k in enumerate(order.tolist()):
        ranks[k] = r
    return ranks


def rank_desc(values: Sequence[float], eligible: Sequence[bool]) -> list[int]:
    """Rank of each eligible value from the highest (0); -1 for ineligible; ties by position."""
    ranks = [-1] * len(values)
    order = sorted((k for k, ok in enumerate(eligible) if ok), key=lambda k: (-values[k], k))
    for r, k in enumerate(order):
        ranks[k] = r
    return ranks
