"""The experiment runner: one config from corpus to report (`elusive run CONFIG.yaml`).

Stages, each writing into the run folder and skipped when its outputs are already there::

    corpus/     corpus.jsonl, qa.jsonl, split.json (validation / test sources)
    scores/     attention scores of both models (elusive.attention); scores/authors/ those of
                the authors' scorer, where the `authors` policy is in the grid
    augment/    one JSONL per (policy, alpha, beta, seed)
    train/      one run folder per (trained role, augmentation, lr); epochs resume
    eval/       metrics.json + predictions.jsonl per (train run, epoch)
                and per trained role, its base model untrained (ROLE/untrained/)
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
from .config import UNTRAINED, ConfigError, CorpusSection, RunConfig, options
from .corpus import QAItem, Record, qa_to_json, read_corpus, read_qa, record_to_json
from .io import CorpusError, atomic_write_text, file_sha256, folder_lock, read_json, write_jsonl
from .runs import (
    STAGES,
    Cell,
    Run,
    eval_dirs,
    grid,
    score_folders,
    scores_folder,
    untrained_dirs,
)

# --------------------------------------------------------------------------- stages


def stage_corpus(run: Run) -> str:
    """Write the corpus and its questions into the run folder and split the sources."""
    corpus_path, qa_path = run.path("corpus", "corpus.jsonl"), run.path("corpus", "qa.jsonl")
    split_path = run.path("corpus", "split.json")
    if not split_path.exists():
        records, questions = _load_source(run.config)
        documents, records = records, _passages(run.config, records)
        if run.config.corpus.path is not None:
            questions = _path_questions(run.config.corpus, documents, records)
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
    """The documents and questions of the config's corpus; a `corpus.path`'s questions come
    once its passages are cut (`_path_questions`)."""
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
    return read_corpus(section.path, section.text_field), []  # questions: `_path_questions`


def _path_questions(
    section: CorpusSection, documents: list[Record], passages: list[Record]
) -> list[QAItem]:
    """The questions of a `corpus.path`: its `corpus.qa`, each about a document or a passage
    (as `elusive probes build --chunk` writes them), or without one the span-cloze probes of
    the passages (`elusive.cloze`)."""
    if section.qa is not None:
        return read_qa(section.qa, sources={r.id for r in (*documents, *passages)})
    from .cloze import build_probes, warn_skipped

    probes = build_probes(passages, section.probes)
    warn_skipped(probes, str(section.path))
    return probes.items


def _passages(config: RunConfig, records: list[Record]) -> list[Record]:
    """The documents cut into passages of `corpus.chunk` tokens of the (first) trained model's
    tokenizer, or, without chunk, the documents as they are; either way a text longer than
    `train.max_length` for a trained model is refused here, before anything is written or
    scored (`elusive.train.train` refuses it too)."""
    from .chunking import chunk_records, sequence_lengths
    from .models import load_tokenizer

    models, limit = config.models, config.train.max_length
    specs = dict.fromkeys(getattr(models, role) for role in models.trained)
    tokenizers = {spec: load_tokenizer(spec) for spec in specs}
    if config.corpus.chunk is not None:
        records = chunk_records(records, tokenizers[next(iter(specs))], config.corpus.chunk)
    for spec, tokenizer in tokenizers.items():
        lengths = sequence_lengths(tokenizer, [r.text for r in records])
        for record, length in zip(records, lengths, strict=True):
            if length > limit:
                raise CorpusError(
                    f"text {record.id!r} is {length} tokens long for model {spec} (BOS and EOS "
                    f"included), more than train.max_length {limit}: set corpus.chunk to cut "
                    "texts into passages, or raise train.max_length"
                )
    return records


def stage_attention(run: Run, progress: bool) -> str:
    """Score every text with the large and the small model (cached per model and text), into
    each of the run's scores folders (`elusive.runs.score_folders`); every launched process
    scores its share (`elusive.attention.score_corpus`)."""
    from .attention import AttentionConfig, score_corpus

    models = run.config.models
    scored = []
    for folder, score in score_folders(run.config).items():
        out = run.path(folder)
        if (out / "manifest.json").exists():  # written after scores.jsonl (elusive.attention)
            continue
        rows = score_corpus(
            {"large": models.large, "small": models.small},
            run.path("corpus", "corpus.jsonl"),
            out,
            AttentionConfig(
                **options(run.config.attention, score=score),
                trained="small" if models.trained == ["small"] else models.trained[0],
            ),
            progress=progress,
            device_map=models.device_map,
            max_memory=models.max_memory,
        )
        scored.append(f"{len(rows)} texts scored ({score})")
    return ", ".join(scored) or "scores already there"


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
            run.path(scores_folder(cell.policy)), run.path("corpus", "corpus.jsonl"), config
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
    """Evaluate every (training run, epoch) not yet evaluated, and each trained role's base
    model untrained (`elusive.runs.untrained_dirs`: one evaluation per role, on the same
    questions and options). While at least `world` are left, process `rank` takes every
    world-th one alone (nothing to exchange); all processes share the questions of the last ones
    (fewer than `world`), so none waits idle for a whole checkpoint. Either way each
    checkpoint's answers are the ones a single process gives."""
    from .evaluate import evaluate_qa, load_for_eval, write_eval
    from .models import DTYPES
    from .parallel import process_state

    questions = read_qa(run.path("corpus", "qa.jsonl"))
    models = run.config.models
    placement = {"device_map": models.device_map, "max_memory": models.max_memory}
    dtype = DTYPES[run.config.train.dtype]

    def load(cell: Cell | None, role: str, epoch: int):
        spec = getattr(models, role)
        if cell is None:  # the base model, untrained
            return load_for_eval(spec, dtype=dtype, **placement)
        checkpoint = run.path("train", cell.train_tag, f"epoch-{epoch}")
        if run.config.train.full:
            return load_for_eval(str(checkpoint), dtype=dtype, **placement)
        return load_for_eval(spec, adapter=checkpoint, dtype=dtype, **placement)

    # (cell or None for the untrained base model, role, epoch, folder, metrics.json's meta)
    jobs: list[tuple[Cell | None, str, int, Path, dict]] = [
        (None, role, 0, out, {UNTRAINED: {"role": role, "model": getattr(models, role)}})
        for role, out in untrained_dirs(run)
    ]
    jobs += [
        (cell, cell.role, epoch, out, {"cell": cell.__dict__, "epoch": epoch})
        for cell, epoch, out in eval_dirs(run)
    ]
    done = 0
    todo = [job for job in jobs if not (job[3] / "metrics.json").exists()]
    process_state().wait_for_everyone()  # every process has listed the work before any writes
    rounds = len(todo) - len(todo) % world  # the checkpoints evaluated one per process
    for index, (cell, role, epoch, out, meta) in enumerate(todo):
        shared = index >= rounds
        if not shared and index % world != rank:
            continue
        model, tokenizer = load(cell, role, epoch)
        result = evaluate_qa(
            model, tokenizer, questions, run.config.evaluate, progress=progress, shared=shared
        )
        if run.is_main or not shared:
            write_eval(out, result, meta)
            done += 1
    untrained = len(run.config.models.trained)
    return f"{len(jobs) - untrained} evaluations + {untrained} untrained ({done} new)"


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
