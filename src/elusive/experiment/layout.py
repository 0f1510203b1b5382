"""The run folder's layout: where every stage of `elusive run` writes, as paths relative to the
run folder (``Run.path`` makes them absolute). The manifest records outputs by these paths, so
they are the keys of run.json's ``outputs``; nothing else builds a run folder's paths::

    corpus/     corpus.jsonl, qa.jsonl, split.json
    scores/     scores.jsonl, manifest.json; authors/ the same of the authors' scorer
    augment/    ROLE/AUGMENT_TAG.jsonl
    train/      ROLE/AUGMENT_TAG_lrLR/ (epoch-N/, log.json)
    eval/       ROLE/AUGMENT_TAG_lrLR_eN/ and ROLE/untrained/ (metrics.json, predictions.jsonl)
    report/     analysis.json, report.md, report.json and the figures
"""

from __future__ import annotations

from typing import Protocol

from elusive.options import UNTRAINED


class Cell(Protocol):
    """A point of the grid (`elusive.experiment.runs.Cell`): what its paths are named by."""

    @property
    def role(self) -> str: ...

    @property
    def augment_tag(self) -> str: ...

    @property
    def train_tag(self) -> str: ...


CORPUS = "corpus"
CORPUS_FILE = "corpus/corpus.jsonl"
QA_FILE = "corpus/qa.jsonl"
SPLIT_FILE = "corpus/split.json"
SCORES = "scores"
"""The scores folder (`elusive.scoring.scores`: scores.jsonl, then manifest.json once complete)."""
SCORES_FILE = "scores/scores.jsonl"
SCORES_MANIFEST = "scores/manifest.json"
AUTHORS_SCORES = "scores/authors"
"""The scores of the authors' released scorer (``attention.score: authors``), which the
`authors` policy ranks by; written only where a run has that policy."""
REPORT = "report"
ANALYSIS_FILE = "report/analysis.json"
"""The attention rows of Figures 2-3 (`elusive.experiment.analysis`)."""


def score_folders(policies: list[str], score: str) -> dict[str, str]:
    """The scores folders of a run of `policies` whose ``attention.score`` is `score`, each with
    the score it is made with: the run's own, and the authors' scorer's where a policy ranks
    by it."""
    return {SCORES: score, **({AUTHORS_SCORES: "authors"} if "authors" in policies else {})}


def scores_of(policy: str) -> str:
    """The scores folder `policy` ranks by."""
    return AUTHORS_SCORES if policy == "authors" else SCORES


def augmented(cell: Cell) -> str:
    """The augmented corpus a cell trains on (shared by its learning rates)."""
    return f"augment/{cell.role}/{cell.augment_tag}.jsonl"


def training(cell: Cell) -> str:
    """A cell's training run folder (`elusive.training.train`: its epochs and log.json)."""
    return f"train/{cell.train_tag}"


def checkpoint(cell: Cell, epoch: int) -> str:
    return f"{training(cell)}/epoch-{epoch}"


def training_log(cell: Cell) -> str:
    return f"{training(cell)}/log.json"


def evaluation(cell: Cell, epoch: int) -> str:
    """The evaluation of a cell's checkpoint after `epoch`."""
    return f"eval/{cell.train_tag}_e{epoch}"


def untrained(role: str) -> str:
    """The evaluation of a trained role's base model, untrained (one per role)."""
    return f"eval/{role}/{UNTRAINED}"
