"""The experiment runner: one config from corpus to report (`elusive run CONFIG.yaml`).

Stages, each writing into the run folder and skipped when its outputs are already there::

    corpus/     corpus.jsonl, qa.jsonl, split.json (validation / test sources)
    scores/     attention scores of both models (elusive.attention)
    augment/    one JSONL per (policy, alpha, beta, seed)
    train/      one run folder per (trained role, augmentation, lr); epochs resume
    eval/       metrics.json + predictions.jsonl per (train run, epoch)
    report/     report.md, report.json and the figures
    run.json    the manifest: config, versions, input hashes, stage timings
    .elusive.lock  held by the process writing the folder (its pid and host)

Every file is written atomically and training resumes from its last epoch, so an interrupted
run picks up where it stopped and gives the numbers an uninterrupted run gives. A stage redoes
only the outputs whose inputs changed since they were made (`elusive.runs.fingerprints`), so a
config fixed after a failure, or edited, resumes the folder.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from .bios import generate_bios
from .config import ConfigError, RunConfig, options
from .corpus import QAItem, Record, qa_to_json, read_corpus, read_qa, record_to_json
from .io import atomic_write_text, file_sha256, folder_lock, read_json, write_jsonl
from .runs import STAGES, Run, eval_dirs, grid

# --------------------------------------------------------------------------- stages


def stage_corpus(run: Run) -> str:
    """Write the corpus and its questions into the run folder and split the sources."""
    corpus_path, qa_path = run.path("corpus", "corpus.jsonl"), run.path("corpus", "qa.jsonl")
    split_path = run.path("corpus", "split.json")
    if not split_path.exists():
        records, questions = _load_source(run.config)
        sources = sorted({q.source_id for q in questions})
        random.Random(run.config.corpus.seed).shuffle(sources)
        n_val = max(1, math.ceil(run.config.validation * len(sources)))
        if n_val >= len(sources):  # checked before anything is written
            raise ConfigError(
                f"validation {run.config.validation} leaves no test questions "
                f"({len(sources)} sources)"
            )
        split = {"validation": sorted(sources[:n_val]), "test": sorted(sources[n_val:])}
        write_jsonl(corpus_path, (record_to_json(r) for r in records))
        write_jsonl(qa_path, (qa_to_json(q) for q in questions))
        atomic_write_text(split_path, json.dumps(split, indent=1) + "\n")
    run.manifest["inputs"] = {
        "corpus_sha256": file_sha256(corpus_path),
        "qa_sha256": file_sha256(qa_path),
    }
    split = read_json(split_path)
    return (
        f"{sum(1 for _ in corpus_path.open())} texts, "
        f"{len(split['validation'])} validation / {len(split['test'])} test sources"
    )


def _load_source(config: RunConfig) -> tuple[list[Record], list[QAItem]]:
    section = config.corpus
    if section.bios is not None:
        return generate_bios(section.bios)
    if section.squad is not None:
        from .squad import SquadConfig, read_squad

        return read_squad(
            section.squad,
            SquadConfig(
                max_paragraphs=section.max_paragraphs,
                max_questions=section.max_questions,
                require_answer_in_context=section.require_answer_in_context,
                seed=section.seed,
            ),
        )
    records = read_corpus(section.path)
    if section.qa is None:  # no questions: span-cloze probes from the texts themselves
        from .cloze import build_probes, warn_skipped

        probes = build_probes(records, section.probes)
        warn_skipped(probes, str(section.path))
        return records, probes.items
    return records, read_qa(section.qa, sources={r.id for r in records})


def stage_attention(run: Run, progress: bool) -> str:
    """Score every text with the large and the small model (cached per model and text); every
    launched process scores its share (`elusive.attention.score_corpus`)."""
    from .attention import AttentionConfig, score_corpus

    out = run.path("scores")
    if (out / "manifest.json").exists():  # written after scores.jsonl (elusive.attention)
        return "scores already there"
    models = run.config.models
    rows = score_corpus(
        {"large": models.large, "small": models.small},
        run.path("corpus", "corpus.jsonl"),
        out,
        AttentionConfig(
            **options(run.config.attention),
            trained="small" if models.trained == ["small"] else models.trained[0],
        ),
        progress=progress,
        device_map=models.device_map,
        max_memory=models.max_memory,
    )
    return f"{len(rows)} texts scored"


def stage_augment(run: Run, progress: bool) -> str:
    from .augment import AugmentConfig, augment, load_inputs

    written = 0
    tags = {}
    for cell in grid(run.config):
        tags[(cell.role, cell.augment_tag)] = cell
    for (role, tag), cell in tags.items():
        path = run.path("augment", role, f"{tag}.jsonl")
        if path.exists():
            continue
        grid_values = {
            "policy": cell.policy,
            "alpha": cell.alpha if cell.alpha is not None else 0.0,
            "beta": cell.beta if cell.beta is not None else 0.0,
        }
        config = AugmentConfig(
            **options(run.config.augment, **grid_values), seed=cell.seed, score_of=role
        )
        records, rows, config = load_inputs(
            run.path("scores"), run.path("corpus", "corpus.jsonl"), config
        )
        write_jsonl(path, augment(records, rows, config, progress=progress))
        written += 1
    return f"{len(tags)} augmented corpora ({written} new)"


def stage_train(run: Run, progress: bool, echo: Callable[[str], None]) -> str:
    from .train import TrainConfig, train

    section = run.config.train
    runs = {cell.train_tag: cell for cell in grid(run.config)}
    for index, (tag, cell) in enumerate(runs.items(), start=1):
        if run.is_main:
            echo(f"  train {index}/{len(runs)}: {tag}")
        config = TrainConfig(
            **options(section, epochs=max(section.epochs), lr=cell.lr),
            model=getattr(run.config.models, cell.role),
            seed=cell.seed,
        )
        corpus = run.path("augment", cell.role, f"{cell.augment_tag}.jsonl")
        train(config, corpus, run.path("train", tag), progress=progress)
    return f"{len(runs)} training runs"


def stage_evaluate(run: Run, progress: bool, rank: int = 0, world: int = 1) -> str:
    """Evaluate every (training run, epoch) not yet evaluated. While at least `world` are left,
    process `rank` takes every world-th one alone (nothing to exchange); all processes share the
    questions of the last ones (fewer than `world`), so none waits idle for a whole checkpoint.
    Either way each checkpoint's answers are the ones a single process gives."""
    from .evaluate import evaluate_qa, load_for_eval, write_eval
    from .models import DTYPES
    from .parallel import process_state

    questions = read_qa(run.path("corpus", "qa.jsonl"))
    models = run.config.models
    placement = {"device_map": models.device_map, "max_memory": models.max_memory}
    done = 0
    todo = [(c, e, d) for c, e, d in eval_dirs(run) if not (d / "metrics.json").exists()]
    process_state().wait_for_everyone()  # every process has listed the work before any writes
    rounds = len(todo) - len(todo) % world  # the checkpoints evaluated one per process
    for index, (cell, epoch, out) in enumerate(todo):
        shared = index >= rounds
        if not shared and index % world != rank:
            continue
        checkpoint = run.path("train", cell.train_tag, f"epoch-{epoch}")
        spec = getattr(models, cell.role)
        dtype = DTYPES[run.config.train.dtype]
        if run.config.train.full:
            model, tokenizer = load_for_eval(str(checkpoint), dtype=dtype, **placement)
        else:
            model, tokenizer = load_for_eval(spec, adapter=checkpoint, dtype=dtype, **placement)
        result = evaluate_qa(
            model, tokenizer, questions, run.config.evaluate, progress=progress, shared=shared
        )
        if run.is_main or not shared:
            write_eval(out, result, {"cell": cell.__dict__, "epoch": epoch})
            done += 1
    total = sum(1 for _ in eval_dirs(run))
    return f"{total} evaluations ({done} new)"


def stage_report(run: Run) -> str:
    from .report import write_report

    paths = write_report(run)
    return f"wrote {', '.join(p.name for p in paths)} to {run.path('report')}"


def run_experiment(
    config: RunConfig,
    out: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Run:
    """Run every stage of `config` (skipping finished work) and return the run.

    Under `accelerate launch` every process scores its share of the texts, trains (data
    parallel), evaluates its share of the checkpoints and questions and scores its share of the
    report's analysis texts; the main process alone runs the other stages while the rest wait.
    The main process holds the run folder's lock throughout (`elusive.io.folder_lock`), so a
    second run on the same folder refuses instead of removing this one's outputs.
    """
    from .parallel import process_state

    state = process_state()
    run = Run(config, out, is_main=state.is_main_process)
    run.check()  # before the lock file: a folder that is refused gets nothing written into it
    with folder_lock(run.root) if run.is_main else nullcontext():
        with state.main_process_first():
            run.open(echo)
        rank, world = state.process_index, state.num_processes
        stages: dict[str, Callable[[], str]] = {
            "corpus": lambda: stage_corpus(run),
            "attention": lambda: stage_attention(run, progress),
            "augment": lambda: stage_augment(run, progress),
            "train": lambda: stage_train(run, progress and run.is_main, echo),
            "evaluate": lambda: stage_evaluate(run, progress and run.is_main, rank, world),
            "report": lambda: stage_report(run),
        }
        for name in STAGES:
            if run.is_main:
                run.refresh(name, echo)
            state.wait_for_everyone()
            if run.is_main or name not in ("corpus", "augment"):
                run.stage(name, stages[name], echo)
            state.wait_for_everyone()
    return run
