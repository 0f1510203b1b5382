"""The paper's Table 1 and Figure 1 (`elusive table1`): plain finetuning on biographies, as a run
config of the pipeline (`elusive.experiment.pipeline`).

`table1_config` builds the `RunConfig`: a biography corpus, the one model as the trained
``small`` (no ``models.large``: nothing is scored, and the report leaves out Figures 2-3), the
``plain`` policy alone (each original once per epoch), one learning rate, seed and epoch count.
`run_table1` runs it into a run folder like any other (resumable, fingerprinted), whose
report holds Table 2's layout with the untrained row and Figure 1 (report/fig1.png).

The pipeline splits the people into validation and test (``validation``, 0.3 by default); with
one setting nothing is chosen on validation. Every person is trained on and evaluated: each
evaluation folder's metrics.json (what `run_table1` returns and `elusive table1` prints) holds
every person's scores, as the paper's Table 1; the report's rows are those of the test people,
as in every run's report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from elusive.corpus.bios import BiosConfig
from elusive.experiment.config import (
    AugmentSection,
    CorpusSection,
    ModelsSection,
    RunConfig,
    TrainSection,
)
from elusive.experiment.runs import grid
from elusive.options import EvalConfig, TrainConfig

if TYPE_CHECKING:
    from elusive.evaluation.evaluate import EvalResult
    from elusive.parallel import Dist

POLICY = "plain"
"""Table 1's augmentation: none; each original once per epoch."""


def table1_config(
    config: TrainConfig,
    out_dir: str | Path,
    n: int = 1000,
    bios_seed: int = 0,
    eval_config: EvalConfig | None = None,
) -> RunConfig:
    """The run config of Table 1: `n` biographies of generator seed `bios_seed`, model
    ``config.model`` trained as ``small`` with the rest of `config` (its ``epochs``, ``lr`` and
    ``seed`` as one-item grid lists), the plain policy alone, evaluated with `eval_config`."""
    train = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in ("model", "seed", "lr", "epochs")
    }
    run = RunConfig(
        out=str(out_dir),
        seeds=[config.seed],
        corpus=CorpusSection(bios=BiosConfig(n=n, seed=bios_seed)),
        models=ModelsSection(large=None, small=config.model, trained=["small"]),
        augment=AugmentSection(policies=[POLICY]),
        train=TrainSection(**train, lr=[config.lr], epochs=[config.epochs]),
        evaluate=eval_config or EvalConfig(),
    )
    run.validate("elusive table1")
    return run


def run_table1(
    config: TrainConfig,
    out_dir: str | Path,
    n: int = 1000,
    bios_seed: int = 0,
    eval_config: EvalConfig | None = None,
    progress: bool = True,
    dist: Dist | None = None,
) -> EvalResult:
    """The paper's Table 1 and Figure 1: `table1_config` run by
    `elusive.experiment.pipeline.run_experiment` into run folder `out_dir` (resumed where it
    stopped; a changed option redoes what it reaches), by the processes of `dist` (default: those of
    `accelerate launch`). Returns the trained model's evaluation at its last epoch over every person
    (`elusive.evaluation.evaluate.EvalResult`), with the base model's untrained one as its
    ``baseline``; the run folder's report holds Table 2's layout and Figure 1 (report/fig1.png)."""
    from elusive.evaluation.evaluate import read_eval
    from elusive.experiment import layout
    from elusive.experiment.pipeline import run_experiment

    run_config = table1_config(config, out_dir, n, bios_seed, eval_config)
    echo = print if progress else (lambda line: None)
    run = run_experiment(run_config, out_dir, progress=progress, echo=echo, dist=dist)
    (cell,) = grid(run_config)
    result = read_eval(run.path(layout.evaluation(cell, config.epochs)))
    result.baseline = read_eval(run.path(layout.untrained("small")))
    return result
