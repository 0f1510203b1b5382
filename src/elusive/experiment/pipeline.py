"""The experiment runner: one config from corpus to report (`elusive run CONFIG.yaml`).

The pipeline is `PIPELINE`, a list of stages (`elusive.experiment.runs.Stage`: what each reads, the
outputs it writes and its work), each writing into the run folder (`elusive.experiment.layout`) and
skipped when its outputs are already there::

    corpus/     corpus.jsonl, qa.jsonl, split.json (validation / test sources)
    scores/     attention scores of both models (elusive.scoring.attention); scores/authors/
                those of the authors' scorer, where the `authors` policy is in the grid; none
                where no policy ranks tokens (their corpora come from the tokens alone)
    augment/    one JSONL per (policy, alpha, beta, seed)
    train/      one run folder per (trained role, augmentation, lr); epochs resume
    eval/       metrics.json + predictions.jsonl per (train run, epoch)
                and per trained role, its base model untrained (ROLE/untrained/)
    analysis    report/analysis.json: the attention rows of Figures 2-3
                (elusive.experiment.analysis)
    report/     report.md, report.json and the figures, from the folder alone
                (elusive.experiment.report)
    run.json    the manifest: config, versions, input hashes, stage timings
    .elusive.lock  held by the process writing the folder (its pid and host)

Every file is written atomically and training resumes from its last epoch, so an interrupted
run picks up where it stopped and gives the numbers an uninterrupted run gives. A stage redoes
only the outputs whose inputs changed since they were made (`elusive.experiment.runs.Run.refresh`,
asking each stage's fingerprints), so a config fixed after a failure, or edited, resumes the folder.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from elusive.corpus.bios import generate_bios
from elusive.corpus.records import QAItem, Record, qa_to_json, read_corpus, read_qa, record_to_json
from elusive.experiment import layout
from elusive.experiment.analysis import analysis_fingerprints, analysis_recorded, write_analysis
from elusive.experiment.config import ConfigError, CorpusSection, RunConfig, options
from elusive.experiment.runs import (
    Cell,
    Context,
    Run,
    Stage,
    changed_options,
    content_hash,
    digest,
    eval_dirs,
    grid,
    scores_run,
    unscored_rows,
    untrained_dirs,
)
from elusive.io import (
    CorpusError,
    atomic_write_text,
    file_sha256,
    folder_lock,
    read_json,
    write_jsonl,
)
from elusive.options import LOGGING_ONLY, UNTRAINED
from elusive.parallel import Dist

# --------------------------------------------------------------------------- stages


def stage_corpus(run: Run) -> str:
    """Write the corpus and its questions into the run folder and split the sources."""
    corpus_path, qa_path = run.path(layout.CORPUS_FILE), run.path(layout.QA_FILE)
    split_path = run.path(layout.SPLIT_FILE)
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
        from elusive.corpus.squad import SquadConfig, read_squad

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
    the passages (`elusive.corpus.cloze`)."""
    if section.qa is not None:
        return read_qa(section.qa, sources={r.id for r in (*documents, *passages)})
    from elusive.corpus.cloze import build_probes, warn_skipped

    probes = build_probes(passages, section.probes)
    warn_skipped(probes, str(section.path))
    return probes.items


def _passages(config: RunConfig, records: list[Record]) -> list[Record]:
    """The documents cut into passages of `corpus.chunk` tokens of the (first) trained model's
    tokenizer, or, without chunk, the documents as they are; either way a text longer than
    `train.max_length` for a trained model is refused here, before anything is written or
    scored (`elusive.training.train.train` refuses it too)."""
    from elusive.corpus.chunking import chunk_records, sequence_lengths
    from elusive.models import load_tokenizer

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
    each of the run's scores folders (`elusive.experiment.layout.score_folders`); every launched
    process scores its share (`elusive.scoring.attention.score_corpus`)."""
    from elusive.scoring.attention import AttentionConfig, score_corpus

    config, models = run.config, run.config.models
    if not scores_run(config):
        return "no policy ranks tokens: nothing to score"
    scored = []
    for folder, score in layout.score_folders(
        config.augment.policies, config.attention.score
    ).items():
        if run.path(folder, "manifest.json").exists():  # written after scores.jsonl
            continue
        rows = score_corpus(
            {"large": models.large, "small": models.small},
            run.path(layout.CORPUS_FILE),
            run.path(folder),
            AttentionConfig(
                **options(config.attention, score=score),
                trained="small" if models.trained == ["small"] else models.trained[0],
            ),
            progress=progress,
            device_map=models.device_map,
            max_memory=models.max_memory,
            dist=run.dist,
        )
        by = " by the authors' scorer" if folder == layout.AUTHORS_SCORES else ""
        scored.append(f"{len(rows)} texts scored{by}")
    return ", ".join(scored) or "scores already there"


def stage_augment(run: Run, progress: bool) -> str:
    """Write each cell's augmented corpus, from its policy's scores, or in a run that scores
    nothing (`elusive.experiment.runs.scores_run`) from each text's tokens
    (`elusive.experiment.runs.unscored_rows`, the rows the scores would hold)."""
    from elusive.augment.dropout import AugmentConfig, augment, load_inputs

    unscored = None  # (records, token rows), read once where the run scores nothing
    written = 0
    tags = {}
    for cell in grid(run.config):
        tags[(cell.role, cell.augment_tag)] = cell
    for (role, _), cell in tags.items():
        path = run.path(layout.augmented(cell))
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
        if scores_run(run.config):
            records, rows, config = load_inputs(
                run.path(layout.scores_of(cell.policy)), run.path(layout.CORPUS_FILE), config
            )
        else:
            if unscored is None:
                texts = read_corpus(run.path(layout.CORPUS_FILE))
                unscored = texts, unscored_rows(run.config, texts)
            records, rows = unscored
        write_jsonl(path, augment(records, rows, config, progress=progress))
        written += 1
    return f"{len(tags)} augmented corpora ({written} new)"


def stage_train(run: Run, progress: bool, echo: Callable[[str], None]) -> str:
    from elusive.training.train import TrainConfig, train

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
        corpus = run.path(layout.augmented(cell))
        train(config, corpus, run.path(layout.training(cell)), progress=progress)
    return f"{len(runs)} training runs"


def stage_evaluate(run: Run, progress: bool) -> str:
    """Evaluate every (training run, epoch) not yet evaluated, and each trained role's base
    model untrained (`elusive.experiment.runs.untrained_dirs`: one evaluation per role, on the same
    questions and options). While at least as many are left as the run's processes
    (`Run.dist`), each process takes every world-th one alone (nothing to exchange); all
    processes share the questions of the last ones (fewer than the processes), so none waits
    idle for a whole checkpoint. Either way each checkpoint's answers are the ones a single
    process gives."""
    from elusive.evaluation.evaluate import evaluate_checkpoint
    from elusive.models import DTYPES

    questions = read_qa(run.path(layout.QA_FILE))
    models = run.config.models
    placement = {"device_map": models.device_map, "max_memory": models.max_memory}
    dtype = DTYPES[run.config.train.dtype]

    def weights(cell: Cell | None, role: str, epoch: int) -> tuple[str, Path | None]:
        """The (model spec, adapter) of a checkpoint, as `load_for_eval` takes them."""
        spec = getattr(models, role)
        if cell is None:  # the base model, untrained
            return spec, None
        checkpoint = run.path(layout.checkpoint(cell, epoch))
        return (str(checkpoint), None) if run.config.train.full else (spec, checkpoint)

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
    dist = run.dist
    dist.barrier()  # every process has listed the work before any writes
    rounds = len(todo) - len(todo) % dist.world  # the checkpoints evaluated one per process
    for index, (cell, role, epoch, out, meta) in enumerate(todo):
        shared = index >= rounds
        if not shared and index % dist.world != dist.rank:
            continue
        write = run.is_main or not shared
        evaluate_checkpoint(
            out, *weights(cell, role, epoch), questions, run.config.evaluate, meta, dtype,
            progress=progress, dist=dist if shared else Dist.single(), write=write,
            **placement,
        )  # fmt: skip
        done += write
    untrained = len(run.config.models.trained)
    return f"{len(jobs) - untrained} evaluations + {untrained} untrained ({done} new)"


def stage_analysis(run: Run) -> str:
    """The attention rows of Figures 2-3 (`elusive.experiment.analysis`); every launched process
    scores its share of the texts."""
    return write_analysis(run)


def stage_report(run: Run) -> str:
    """The report, rendered from the run folder alone (`elusive.experiment.report`)."""
    from elusive.experiment.report import write_report

    paths = write_report(run)
    return f"wrote {', '.join(p.name for p in paths)} to {run.path(layout.REPORT)}"


# --------------------------------------------------------------------------- fingerprints


def corpus_fingerprints(run: Run) -> dict[str, str]:
    """The corpus folder: the corpus section, `validation` and its source files by content;
    with `corpus.chunk`, the first trained model's tokenizer too (it cuts the passages)."""
    config, models = run.config, run.config.models
    section = config.corpus
    sources = [content_hash(Path(s)) for s in (section.path, section.qa, section.squad) if s]
    if section.chunk is None:
        return {layout.CORPUS: digest(changed_options(section), config.validation, sources)}
    from elusive.models import spec_key

    tokenizer = spec_key(getattr(models, models.trained[0]))
    return {layout.CORPUS: digest(changed_options(section), config.validation, sources, tokenizer)}


def attention_fingerprints(run: Run) -> dict[str, str]:
    """Each scores folder (`layout.score_folders`): the corpus by content, the attention
    section, both models and the trained roles (whose tokenizer aligns the scores); the authors'
    scorer's also by its score."""
    from elusive.models import spec_key

    config, models = run.config, run.config.models
    if not scores_run(config):  # no policy ranks tokens: nothing is scored
        return {}
    large, small = spec_key(models.large), spec_key(models.small)
    corpus = content_hash(run.path(layout.CORPUS_FILE))
    made = [corpus, changed_options(config.attention), models.trained, large, small]
    folders = layout.score_folders(config.augment.policies, config.attention.score)
    return {
        folder: digest(*made) if folder == layout.SCORES else digest(*made, score)
        for folder, score in folders.items()
    }


def augment_fingerprints(run: Run) -> dict[str, str]:
    """One augmented corpus per cell: the scores and the corpus by content, the augment
    section and the cell's role, policy, alpha, beta and seed (its policy's scores folder:
    `layout.scores_of`). In a run that scores nothing, the tokens stand for the scores: the
    tokens role's model and ``attention.prefix``."""
    from elusive.models import spec_key

    config = run.config
    corpus = content_hash(run.path(layout.CORPUS_FILE))
    policies = config.augment.policies
    if scores_run(config):
        files = {p: run.path(layout.scores_of(p), "scores.jsonl") for p in policies}
        scores = {p: content_hash(path) for p, path in files.items()}
    else:
        tokens = spec_key(getattr(config.models, config.models.tokens_role))
        scores = dict.fromkeys(policies, {"tokens": tokens, "prefix": config.attention.prefix})

    return {
        layout.augmented(cell): digest(
            scores[cell.policy],
            corpus,
            changed_options(config.augment),
            cell.role,
            cell.policy,
            cell.alpha,
            cell.beta,
            cell.seed,
        )
        for cell in grid(config)
    }


def train_fingerprints(run: Run) -> dict[str, str]:
    """One training run per cell: its augmented corpus by content, the train section but what
    only logging reads, the largest epoch, the cell's lr, its role's model and seed."""
    from elusive.models import spec_key

    config, section = run.config, run.config.train
    # what a run logs to is no input of its weights: switching trackers retrains nothing
    changed = {k: v for k, v in changed_options(section).items() if k not in LOGGING_ONLY}
    return {
        layout.training(cell): digest(
            content_hash(run.path(layout.augmented(cell))),
            changed,
            max(section.epochs),
            cell.lr,
            spec_key(getattr(config.models, cell.role)),
            cell.seed,
        )
        for cell in grid(config)
    }


def evaluate_fingerprints(run: Run) -> dict[str, str]:
    """One evaluation per (training run, epoch): the training run's fingerprint, the epoch, the
    questions by content and the evaluate section; and per trained role its base model's."""
    from elusive.models import spec_key

    config = run.config
    trained = train_fingerprints(run)
    questions = content_hash(run.path(layout.QA_FILE))
    evaluations = {
        str(out.relative_to(run.root)): digest(
            trained[layout.training(cell)], epoch, questions, changed_options(config.evaluate)
        )
        for cell, epoch, out in eval_dirs(run)
    }
    # The base model as it loads for evaluation (its spec and train.dtype, the weights'
    # dtype), the questions and the evaluation options: no other option reaches it.
    untrained = {
        str(out.relative_to(run.root)): digest(
            UNTRAINED,
            spec_key(getattr(config.models, role)),
            config.train.dtype,
            questions,
            changed_options(config.evaluate),
        )
        for role, out in untrained_dirs(run)
    }
    return {**untrained, **evaluations}


def _no_outputs(run: Run) -> dict[str, str]:
    """The report is written anew every run: no outputs to keep or remove."""
    return {}


# --------------------------------------------------------------------------- the pipeline

# The stage functions are looked up when a stage runs (not bound here), so that a test can
# replace one of them on the module.
PIPELINE: tuple[Stage, ...] = (
    Stage(
        "corpus",
        reads=("corpus", "validation", "corpus.path/qa/squad files", "tokenizer with chunk"),
        fingerprints=corpus_fingerprints,
        run=lambda run, _: stage_corpus(run),
        every_process=False,
    ),
    Stage(
        "attention",
        reads=(
            "attention",
            "models.large/small/trained",
            "augment.policies (nothing scored where none ranks tokens)",
            layout.CORPUS_FILE,
        ),
        fingerprints=attention_fingerprints,
        run=lambda run, context: stage_attention(run, context.progress),
    ),
    Stage(
        "augment",
        reads=(
            "augment",
            "seeds",
            layout.SCORES_FILE,
            f"{layout.AUTHORS_SCORES}/scores.jsonl",
            "where nothing is scored: the tokens role's model, attention.prefix",
            layout.CORPUS_FILE,
        ),
        fingerprints=augment_fingerprints,
        run=lambda run, context: stage_augment(run, context.progress),
        every_process=False,
    ),
    Stage(
        "train",
        reads=("train", "models (trained roles)", "seeds", "augment/ROLE/TAG.jsonl"),
        fingerprints=train_fingerprints,
        run=lambda run, context: stage_train(run, context.progress and run.is_main, context.echo),
    ),
    Stage(
        "evaluate",
        reads=("evaluate", "train.dtype", "train/ROLE/TAG (its fingerprint)", layout.QA_FILE),
        fingerprints=evaluate_fingerprints,
        run=lambda run, context: stage_evaluate(run, context.progress and run.is_main),
    ),
    Stage(
        "analysis",
        reads=("corpus.bios", "report.analysis_texts", "attention", "models.large/small files"),
        fingerprints=analysis_fingerprints,
        run=lambda run, _: stage_analysis(run),
        self_recorded=analysis_recorded,
    ),
    Stage(
        "report",
        reads=("the run folder",),
        fingerprints=_no_outputs,
        run=lambda run, _: stage_report(run),
        every_process=False,
    ),
)
STAGES = tuple(stage.name for stage in PIPELINE)
"""The stages' names, in the order they run."""


def stage_named(name: str) -> Stage:
    """The stage of `PIPELINE` called `name`."""
    return next(stage for stage in PIPELINE if stage.name == name)


def run_experiment(
    config: RunConfig,
    out: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    dist: Dist | None = None,
) -> Run:
    """Run every stage of `config` (skipping finished work) and return the run.

    The processes of `dist` (default: those of `accelerate launch`, this one alone when not
    launched; the run's `Run.dist`) each score their share of the texts, train (data
    parallel), evaluate their share of the checkpoints and questions and score their share of
    the analysis texts; the main process alone runs the other stages (`Stage.every_process`)
    while the rest wait.
    The main process holds the run folder's lock throughout (`elusive.io.folder_lock`), so a
    second run on the same folder refuses instead of removing this one's outputs.
    """
    dist = dist or Dist.launched()
    run = Run(config, out, dist)
    run.check()  # before the lock file: a folder that is refused gets nothing written into it
    with folder_lock(run.root) if run.is_main else nullcontext():
        with dist.main_first():
            run.open(echo)
        context = Context(progress, echo)
        for number, stage in enumerate(PIPELINE, start=1):
            if run.is_main:
                run.refresh(stage, echo)
            dist.barrier()
            if run.is_main or stage.every_process:
                work = partial(stage.run, run, context)
                run.stage(stage.name, work, echo, f"[{number}/{len(PIPELINE)}]")
            dist.barrier()
    return run
