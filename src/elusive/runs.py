"""A run folder of `elusive run` and its grid: what the pipeline writes and the report reads.

`Run` is the folder and its manifest (run.json); `grid` expands a config's lists into `Cell`s,
one training run each, evaluated after every epoch of ``train.epochs`` (`eval_dirs`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, to_dict
from .evaluate import EvalConfig
from .io import atomic_write_text

STAGES = ("corpus", "attention", "augment", "train", "evaluate", "report")


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
    """Expand the config's lists into cells. `none` takes no alpha or beta, `random` no beta."""
    cells = []
    for role in config.models.trained:
        for policy in config.augment.policies:
            alphas = [None] if policy == "none" else config.augment.alpha
            betas = [None] if policy in ("none", "random") else config.augment.beta
            for alpha in alphas:
                for beta in betas:
                    for lr in config.train.lr:
                        for seed in config.seeds:
                            cells.append(Cell(role, policy, alpha, beta, lr, seed))
    return cells


# --------------------------------------------------------------------------- the run folder


class Run:
    """A run folder and its manifest (``run.json``)."""

    def __init__(
        self, config: RunConfig, out: str | Path | None = None, is_main: bool = True
    ) -> None:
        self.config = config
        self.root = Path(out or config.out)
        self.is_main = is_main
        """Under `accelerate launch`, only the main process writes the manifest and prints."""
        self.manifest_path = self.root / "run.json"
        self.manifest: dict[str, Any] = {}

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def open(self) -> None:
        """Create or reopen the folder. A folder made with another config refuses, except
        for the grid lists, which may grow (their outputs are named by their values)."""
        fixed = _fixed_hash(self.config)
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text("utf-8"))
            if self.manifest.get("fixed_config_sha256") != fixed:
                raise ConfigError(
                    f"{self.root}: this run folder was made with a different config "
                    "(only seeds, alpha, beta, lr, epochs and policies may change): "
                    "choose another out folder"
                )
            self._check_last_epoch()
        else:
            self.manifest = {"stages": {}}
        self.manifest.update(
            config=to_dict(self.config), fixed_config_sha256=fixed, versions=_versions()
        )
        self.save()

    def _check_last_epoch(self) -> None:
        """Refuse a new largest ``train.epochs``: each training run follows a learning-rate
        schedule over all its epochs, so one trained to the old largest epoch cannot be extended
        to give what a longer run gives. Epochs up to the old largest may be added or dropped."""
        was = max(self.manifest["config"]["train"]["epochs"])
        now = max(self.config.train.epochs)
        if now != was:
            raise ConfigError(
                f"{self.root}: train.epochs: the training runs here end at epoch {was}, the "
                f"config's at {now}; a run's schedule spans all its epochs, so it cannot be "
                f"extended or cut: keep {was} as the largest epoch or choose another out folder"
            )

    def save(self) -> None:
        if self.is_main:
            atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2) + "\n")

    def stage(self, name: str, work: Callable[[], str], echo: Callable[[str], None]) -> None:
        """Run one stage, time it, record it in the manifest and print one line."""
        began = time.perf_counter()
        summary = work()
        seconds = time.perf_counter() - began
        self.manifest["stages"][name] = {"seconds": round(seconds, 2), "summary": summary}
        self.save()
        if self.is_main:
            index = STAGES.index(name) + 1
            echo(f"[{index}/{len(STAGES)}] {name}: {summary} ({seconds:.1f} s)")


def _fixed_hash(config: RunConfig) -> str:
    data = to_dict(config)
    data.pop("out")
    data.pop("seeds")
    data.pop("report")
    data["augment"].pop("policies")
    for key in ("alpha", "beta"):
        data["augment"].pop(key)
    for key in ("lr", "epochs"):
        data["train"].pop(key)
    # Options added to the schema after run folders were made hash as before, so those folders
    # still open: evaluate (then the mapping as written) as its options that differ from the
    # defaults, train's lora_dropout and weight_decay left out at their default.
    defaults = to_dict(EvalConfig())
    data["evaluate"] = {k: v for k, v in data["evaluate"].items() if defaults[k] != v}
    for key in ("lora_dropout", "weight_decay"):
        if data["train"][key] == 0.0:
            data["train"].pop(key)
    # Each training run records its resolved mixed precision and resumes with it when "auto"
    # (elusive.train), so "auto" hashes as "no", the default before "auto": folders made then
    # still open.
    if data["train"]["mixed_precision"] == "auto":
        data["train"]["mixed_precision"] = "no"
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("elusive", "torch", "transformers", "peft", "accelerate"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "missing"
    return out


def eval_dirs(run: Run) -> Iterator[tuple[Cell, int, Path]]:
    """Every (cell, epoch) of the grid with its evaluation folder, eval/TRAIN_TAG_eEPOCH."""
    for cell in grid(run.config):
        for epoch in sorted(set(run.config.train.epochs)):
            yield cell, epoch, run.path("eval", f"{cell.train_tag}_e{epoch}")
