"""A run folder of `elusive run` and its grid: what the pipeline writes and the report reads.

`Run` is the folder and its manifest (run.json); `grid` expands a config's lists into `Cell`s,
one training run each, evaluated after every epoch of ``train.epochs`` (`eval_dirs`). A `Stage`
is one step of the pipeline (`elusive.experiment.pipeline.PIPELINE`): its outputs, where
`elusive.experiment.layout` puts them, each with the fingerprint of what it is made from, and the
work that writes them.

Every output of a stage (the corpus, the scores, one augmented corpus, one training run, one
evaluation, the analysis of Figures 2-3) is recorded in the manifest with its fingerprint
(`Stage.fingerprints`): the config options it reads and the contents of the files it reads.
Before a stage runs, `Run.refresh` removes the outputs whose fingerprint changed, so a run folder
whose config was fixed or edited redoes only what the change reaches, and says which. Inputs
are hashed by content where they are files, so a change that leaves a file identical (a
scoring batch size) stops there. Nothing else is ever removed: a path the manifest does not
record as an output is refused, and so are a folder elusive did not make and a corpus inside
the run folder (`Run.check`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from elusive.corpus.records import Record
from elusive.experiment import layout
from elusive.experiment.config import ConfigError, RunConfig, to_dict
from elusive.io import (
    OutputError,
    atomic_write_text,
    check_apart,
    check_out_dir,
    file_sha256,
    foreign_entries,
    read_json,
    remove_temp_files,
)
from elusive.parallel import Dist
from elusive.scoring.scores import TextScores

SCHEMA = 2
"""The run folder's layout version, recorded in run.json as ``schema``: 1 records every output
with the fingerprint of its inputs (``outputs``), 2 names a dropped token's rendering
``augment.drop_style``. A folder of another version opens after `elusive migrate FOLDER`
(`elusive.experiment.migrate`), which upgrades it in place."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a trained role, an augmentation setting, a learning rate and a
    seed. Its training run is evaluated at every epoch of ``train.epochs``."""

    role: str
    policy: str
    alpha: float | None
    beta: float | None
    lr: float
    seed: int

    @property
    def augment_tag(self) -> str:
        parts = [self.policy]
        if self.alpha is not None:
            parts.append(f"a{self.alpha:g}")
        if self.beta is not None:
            parts.append(f"b{self.beta:g}")
        return "_".join([*parts, f"s{self.seed}"])

    @property
    def train_tag(self) -> str:
        return f"{self.role}/{self.augment_tag}_lr{self.lr:g}"

    @property
    def setting(self) -> tuple[str, str, float | None, float | None, float]:
        """The cell without its seed: what the report averages over seeds."""
        return (self.role, self.policy, self.alpha, self.beta, self.lr)


def grid(config: RunConfig) -> list[Cell]:
    """Expand the config's lists into cells; a policy takes only the parameters it declares
    (`elusive.augment.dropout.PARAMETERS`: `none` and `plain` no alpha or beta, `random` no
    beta)."""
    from elusive.augment.dropout import PARAMETERS

    cells = []
    for role in config.models.trained:
        for policy in config.augment.policies:
            takes = PARAMETERS[policy]
            alphas = config.augment.alpha if "alpha" in takes else [None]
            betas = config.augment.beta if "beta" in takes else [None]
            for alpha in alphas:
                for beta in betas:
                    for lr in config.train.lr:
                        for seed in config.seeds:
                            cells.append(Cell(role, policy, alpha, beta, lr, seed))
    return cells


def scores_run(config: RunConfig) -> bool:
    """Whether the run scores its corpus: some policy of it ranks tokens
    (`elusive.augment.dropout.needs_scores`); the others draw from the tokens alone
    (`unscored_rows`)."""
    from elusive.augment.dropout import needs_scores

    return needs_scores(config.augment.policies)


def unscored_rows(config: RunConfig, records: Sequence[Record]) -> list[TextScores]:
    """For a run that scores nothing: the rows its policies draw from, each text's tokens as the
    scores would hold them (the tokens role's model, ``attention.prefix``:
    `elusive.scoring.attention.token_rows`)."""
    from elusive.scoring.attention import token_rows

    spec = getattr(config.models, config.models.tokens_role)
    return token_rows(records, spec, config.attention.prefix)


@dataclass(frozen=True)
class Context:
    """How a stage runs in this process: progress bars and where its lines go (who this process
    is among the launched ones is the run's `Run.dist`)."""

    progress: bool = True
    echo: Callable[[str], None] = print


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: what it reads, what it writes and the work that writes it."""

    name: str
    reads: tuple[str, ...]
    """The config options and run-folder files its outputs are made from: what `fingerprints`
    hashes (a section name stands for its options that differ from their defaults)."""
    fingerprints: Callable[[Run], dict[str, str]]
    """Its outputs, as paths relative to the run folder (`elusive.experiment.layout`), each with the
    fingerprint of what it is made from. Files are hashed by content: they exist once the
    stages before have run (a missing one hashes as None, and then none of the outputs exist
    yet). A stage whose outputs are written anew every run (the report) has none."""
    run: Callable[[Run, Context], str]
    """Write the outputs that are not there yet; returns the stage's one-line summary."""
    every_process: bool = True
    """Under `accelerate launch`, whether every process runs it (sharing its work) or the main
    process alone while the others wait."""
    self_recorded: Callable[[Run], dict[str, str]] | None = None
    """For outputs that hold the inputs they were made from (report/analysis.json): the
    fingerprints they hold, which count as the manifest's record where it has none."""


# --------------------------------------------------------------------------- the run folder


class Run:
    """A run folder and its manifest (``run.json``)."""

    def __init__(
        self, config: RunConfig, out: str | Path | None = None, dist: Dist | None = None
    ) -> None:
        self.config = config
        self.root = Path(out or config.out)
        self.dist = dist or Dist.single()
        """The processes that run it (`elusive.parallel`; default: this one alone); the stages
        share their work among them."""
        self.manifest_path = self.root / "run.json"
        self.manifest: dict[str, Any] = {}

    @property
    def is_main(self) -> bool:
        """Whether this is the main process of `dist`: the one that writes the manifest and
        prints."""
        return self.dist.is_main

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def check(self) -> None:
        """Refuse, before anything is written, a folder elusive cannot own: a file, a folder
        that holds other things but no run.json (not a run folder: a refresh would remove the
        user's files), and a corpus input inside the folder or holding it."""
        check_out_dir(self.root, ("run.json",))
        if not self.manifest_path.exists() and (foreign := foreign_entries(self.root)):
            raise OutputError(
                f"{self.root}: is not empty and is no elusive run folder (no run.json; it holds "
                f"{foreign[0].name}): choose a new or empty --out"
            )
        corpus = self.config.corpus
        inputs = {f"corpus.{key}": getattr(corpus, key) for key in ("path", "qa", "squad")}
        check_apart([self.root], inputs)

    def open(self, echo: Callable[[str], None] = print) -> None:
        """Create or reopen the folder (after `check`); a reopened folder says which config keys
        changed (`refresh` then redoes what they reach). The writing process holds the folder's
        lock meanwhile (`elusive.io.folder_lock`, taken by `run_experiment`)."""
        self.check()
        if self.is_main:  # what a killed process was writing (the others wait for this one)
            remove_temp_files(self.root, recursive=True)
        if self.manifest_path.exists():
            self.manifest = read_json(self.manifest_path)
            check_schema(self.manifest, self.manifest_path)
            changed = _changed_keys(self.manifest["config"], to_dict(self.config))
            if changed and self.is_main:
                echo(f"config changed since this folder was made: {', '.join(changed)}")
        else:
            self.manifest = {"schema": SCHEMA, "stages": {}, "outputs": {}}
        self.manifest.update(config=to_dict(self.config), versions=_versions())
        self.save()

    def refresh(self, stage: Stage, echo: Callable[[str], None] = print) -> None:
        """Before `stage` runs: remove each of its outputs made from other inputs than its
        fingerprint says now, say which, and record the fingerprints. Only what the manifest
        records (or an output records of itself: `Stage.self_recorded`) is removed: a path
        there that neither records is not elusive's, nor is a link (elusive makes none), and
        either is refused rather than removed. Outputs are complete once they exist (atomic
        files, resumable training runs), so a recorded fingerprint with no output just means
        the work is still to do."""
        recorded = self.manifest.setdefault("outputs", {})
        made = stage.fingerprints(self)
        held = stage.self_recorded(self) if stage.self_recorded else {}
        known = {rel: recorded.get(rel, held.get(rel)) for rel in made}
        for rel, fingerprint in made.items():
            path = self.path(rel)
            link = path.is_symlink() and known[rel] != fingerprint
            if link or (known[rel] is None and path.exists()):
                raise OutputError(
                    f"{path}: exists but was not written by elusive (no record in "
                    f"{self.manifest_path}); move it or choose another --out"
                )
        stale = []
        for rel, fingerprint in made.items():
            path = self.path(rel)
            if known[rel] != fingerprint and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                stale.append(rel)
            recorded[rel] = fingerprint
        self.save()
        if stale and self.is_main:
            shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
            echo(f"  {stage.name}: redoing {len(stale)} made from other inputs: {shown}")

    def save(self) -> None:
        if self.is_main:
            atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2) + "\n")

    def stage(
        self, name: str, work: Callable[[], str], echo: Callable[[str], None], step: str = ""
    ) -> None:
        """Run one stage, time it, record it in the manifest and print one line (after `step`,
        e.g. ``[2/7]``)."""
        began = time.perf_counter()
        summary = work()
        seconds = time.perf_counter() - began
        self.manifest["stages"][name] = {"seconds": round(seconds, 2), "summary": summary}
        self.save()
        if self.is_main:
            echo(f"{step} {name}: {summary} ({seconds:.1f} s)".lstrip())


def schema_of(manifest: dict[str, Any]) -> int:
    """The layout version of a run folder's manifest: its ``schema``; a manifest without one is
    0 (no fingerprints: elusive up to stop 11) or 1 (fingerprints, the version not written)."""
    return manifest.get("schema", 1 if "outputs" in manifest else 0)


def check_schema(manifest: dict[str, Any], path: Path) -> None:
    """Refuse, in one line, a manifest of another layout version than `SCHEMA`."""
    found = schema_of(manifest)
    if "schema" in manifest and found == SCHEMA:
        return
    if found > SCHEMA:
        raise ConfigError(
            f"{path}: run folder of schema {found}, made by a newer elusive (this one reads "
            f"schema {SCHEMA}): upgrade elusive"
        )
    raise ConfigError(
        f"{path}: run folder of schema {found}, made by an older elusive: upgrade it with "
        f"`elusive migrate {path.parent}`, then rerun"
    )


def changed_options(section: Any) -> dict[str, Any]:
    """A config section's scalar options that differ from their defaults (grid lists are
    the cell's): an option added to the schema later leaves existing fingerprints as they were."""
    grid_keys = set(getattr(section, "grid", {}).values())
    default = to_dict(type(section)())
    return {k: v for k, v in to_dict(section).items() if k not in grid_keys and default.get(k) != v}


def digest(*parts: Any) -> str:
    """A short hash of JSON-able parts: a fingerprint."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def content_hash(path: Path) -> str | None:
    """The SHA-256 of a file, of every file under a folder (with their names), or None."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return digest([(str(p.relative_to(path)), content_hash(p)) for p in files])
    return None


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted config keys whose values differ, as ``key (old -> new)``."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and key != "out":
            changed.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return changed


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("elusive", "torch", "transformers", "peft", "accelerate"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "missing"
    return out


def untrained_dirs(run: Run) -> Iterator[tuple[str, Path]]:
    """Every trained role with the folder of its base model's evaluation, eval/ROLE/untrained:
    one per role, shared by every cell (greedy answers and the probes are deterministic, so
    policy, seed and epoch cannot change it)."""
    for role in run.config.models.trained:
        yield role, run.path(layout.untrained(role))


def eval_dirs(run: Run) -> Iterator[tuple[Cell, int, Path]]:
    """Every (cell, epoch) of the grid with its evaluation folder, eval/TRAIN_TAG_eEPOCH."""
    for cell in grid(run.config):
        for epoch in sorted(set(run.config.train.epochs)):
            yield cell, epoch, run.path(layout.evaluation(cell, epoch))
