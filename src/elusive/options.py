"""The options of the model stages (attention scoring, training, evaluation) and their checks.

The stage modules (`elusive.scoring.attention`, `elusive.training.train`,
`elusive.evaluation.evaluate`) import torch and transformers, which take seconds to load. Their
option dataclasses live here, importing neither, so that `elusive run` checks a whole config, and
`elusive --help` shows every default, in a fraction of a second; each stage module imports its own
config from here, so ``from elusive.training.train import TrainConfig`` works too. Options that
stand for a torch object are names here (`DTYPE_NAMES`, `MIXED_PRECISIONS`); the torch objects live
beside torch (`elusive.models.DTYPES`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import reprlib
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elusive.errors import ElusiveError, flag

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""Weight dtypes by their config name (`--dtype`, ``train.dtype``); `elusive.models.DTYPES`
maps each to its torch dtype."""
ROLES = ("large", "small")
ALIGNS = ("tokens", "chars")
SCORE_DTYPES = ("float32", "bfloat16")
SCORES = ("received", "authors")
"""The weight dtypes (of `DTYPE_NAMES`) that scoring accepts."""
SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
QUANTIZE = ("no", "4bit")
"""Autocast of training and generation; auto becomes one of the others on the device
(`elusive.models.resolve_mixed_precision`)."""
REPORT_TO = ("none", "tensorboard")
"""Trackers of `TrainConfig.report_to` (accelerate's ``log_with``)."""
LOGGING_ONLY = ("report_to",)
"""`TrainConfig` options that change what a run reports, not what it trains: a training run
resumes under other values of them, and the run pipeline retrains nothing for them."""
UNTRAINED = "untrained"
"""The report's row (and a `report.baselines` name) of a trained role's base model evaluated
before any training; also its evaluation folder's name
(`elusive.experiment.runs.untrained_dirs`)."""

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"


class AttentionError(ElusiveError):
    """Bad scoring input or scores file; the message names the text, file or field."""


class TrainError(ElusiveError):
    """Bad training options or a run folder that does not match them."""


@dataclass
class AttentionConfig:
    """Options of `elusive attention`."""

    prefix: str = ""
    """Prepended to every text before scoring, e.g. "Text: " for models with no BOS token;
    its tokens are scored but left out of the output."""
    align: str = "tokens"
    """"tokens": both models must tokenize identically (the paper); "chars": map each model's
    scores onto characters and back onto the trained model's tokens (any model pair)."""
    trained: str = "small"
    """Whose tokenization the output uses: the model to be trained on the augmented corpus."""
    batch_size: int = 8
    """Texts per forward pass."""
    dtype: str = "float32"
    """Dtype of the scoring models: float32 or bfloat16."""
    cache_dir: Path | None = None
    """Cache of converted models and scores (scores go to attention/); default: ``$ELUSIVE_CACHE``
    (see `elusive.models.cache_root`)."""
    chunk_size: int = 64
    """Texts per cache file: what an interrupted run loses at most."""
    score: str = "received"
    """What each model's score of a token is. "received": the attention the token receives,
    the column mean over the queries that see it (the paper's method). "authors": the formula of
    the authors' released code replayed: each attention *row* summed and divided by (i + 1), in
    bfloat16, which is bf16(1/(i+1)) for any model up to rounding, a position ranking (the
    `authors` augment policy ranks by its contrast; see docs/attention.md)."""

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise AttentionError on a bad option, named by ``name(field)`` (see `elusive.errors`)."""
        check_finite(self, name, AttentionError)
        if self.align not in ALIGNS:
            raise AttentionError(
                f"{name('align')} must be one of {', '.join(ALIGNS)}, got {shorten(self.align)}"
            )
        if self.trained not in ROLES:
            raise AttentionError(
                f"{name('trained')} must be large or small, got {shorten(self.trained)}"
            )
        if self.dtype not in SCORE_DTYPES:
            raise AttentionError(
                f"{name('dtype')} must be one of {', '.join(SCORE_DTYPES)}, "
                f"got {shorten(self.dtype)}"
            )
        if self.score not in SCORES:
            raise AttentionError(
                f"{name('score')} must be one of {', '.join(SCORES)}, got {shorten(self.score)}"
            )
        if self.batch_size < 1:
            raise AttentionError(f"{name('batch_size')} must be at least 1, got {self.batch_size}")
        if self.chunk_size < 1:
            raise AttentionError(f"chunk_size must be at least 1, got {self.chunk_size}")


@dataclass
class TrainConfig:
    """Training options; defaults follow the paper (LoRA r=16 on all linear layers)."""

    model: str = ""
    """Model spec for `elusive.models.load_model` (folder, .gguf, offline pack name)."""
    full: bool = False
    """Finetune every weight instead of training a LoRA adapter."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha: the adapter's output is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    epochs: int = 20
    """Passes over the corpus."""
    lr: float = 1e-3
    """Peak learning rate."""
    batch_size: int = 8
    """Texts per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    warmup: float = 0.05
    """Fraction of the optimizer steps spent warming the learning rate up from 0."""
    schedule: str = "cosine"
    """Learning-rate decay after warmup: cosine or linear to 0, or constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the LoRA init and the shuffling."""
    max_length: int = 512
    """Tokens per sequence (BOS and EOS included); longer texts are cut."""
    dtype: str = "float32"
    """Dtype of the base weights: float32, bfloat16 or float16 (LoRA weights stay float32)."""
    mixed_precision: str = "auto"
    """Autocast for forward/backward, as accelerate's `mixed_precision`: no, bf16 or fp16; auto
    is bf16 where the device computes in bf16 natively, else no
    (`elusive.models.resolve_mixed_precision`). A run folder records the resolved value."""
    quantize: str = "no"
    """Base weights of a LoRA run: no (as dtype), or 4bit (QLoRA: NF4 weights, computed in dtype,
    on a GPU or the CPU; needs bitsandbytes). Evaluation and export merge the adapter into the
    unquantized base."""
    packing: bool = False
    """Join the epoch's shuffled texts, each ending in EOS, into blocks of exactly max_length
    tokens (the last block holds the rest) instead of one padded text a row; nothing is cut."""
    group_by_length: bool = False
    """Batch texts of similar length together (seeded, shuffled batches), so that batches hold
    little padding; every text is still trained on once an epoch."""
    report_to: str = "none"
    """Also log loss and learning rate through accelerate's trackers: none, or tensorboard (into
    RUN_DIR/tensorboard; needs tensorboard). log.json has them either way."""

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise TrainError on a bad option, named by ``name(field)`` (see `elusive.errors`)."""
        if not self.model:
            raise TrainError(f"no model spec given ({name('model')})")
        check_finite(self, name, TrainError)
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("warmup", 0 <= self.warmup < 1, "must be a fraction in [0, 1)"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {SCHEDULES}"),
            ("max_length", self.max_length >= 2, "must be >= 2"),
            ("dtype", self.dtype in DTYPE_NAMES, f"must be one of {DTYPE_NAMES}"),
            (
                "mixed_precision",
                self.mixed_precision in MIXED_PRECISIONS,
                f"must be one of {MIXED_PRECISIONS}",
            ),
            ("lora_r", self.full or self.lora_r >= 1, "must be >= 1"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("quantize", self.quantize in QUANTIZE, f"must be one of {QUANTIZE}"),
            ("report_to", self.report_to in REPORT_TO, f"must be one of {REPORT_TO}"),
        ]
        for field_name, ok, message in checks:
            if not ok:
                value = getattr(self, field_name)
                raise TrainError(f"{name(field_name)} {message}, got {shorten(value)}")
        if self.quantize == "4bit":
            if self.full:
                raise TrainError(
                    f"{name('quantize')} 4bit trains a LoRA adapter on frozen 4-bit weights: "
                    f"not with {name('full')}"
                )
            check_bitsandbytes(f"{name('quantize')} 4bit", TrainError)
        if self.packing and self.group_by_length:
            raise TrainError(
                f"{name('packing')} makes every block max_length tokens long, so there are no "
                f"lengths to group: give {name('group_by_length')} without it"
            )
        if self.report_to == "tensorboard" and not any(
            importlib.util.find_spec(package) for package in ("tensorboard", "tensorboardX")
        ):
            raise TrainError(
                f"{name('report_to')} tensorboard needs tensorboard, which is not installed "
                "(pip install 'elusive[tensorboard]')"
            )


@dataclass
class EvalConfig:
    """Closed-book QA options; the defaults are the paper's protocol (greedy, 16 new tokens)."""

    max_new_tokens: int = 16
    """Greedy tokens generated per answer at most."""
    template: str = DEFAULT_TEMPLATE
    """Prompt of one question; must contain ``{question}`` and should end where the answer
    starts (the answer is appended after a space in k-shot examples)."""
    shots: int = 0
    """Solved examples of other people before each question (the authors used 5); 0 = off."""
    shot_seed: int = 0
    """Seed of the choice and order of the solved examples."""
    batch_size: int = 16
    """Questions per generation batch."""
    probes: bool = True
    """Also run the knowledge probes (choice, logprob; cloze where QA lines carry a prompt)."""
    choices: int = 9
    """Distractors per question for the choice probes (chance is 1 / (choices + 1))."""
    probe_seed: int = 0
    """Seed of the distractor draw: keep it fixed across the checkpoints you compare."""
    mixed_precision: str = "auto"
    """Autocast of generation: no, bf16 or fp16; auto is bf16 where the model's device has native
    bf16, else no (`elusive.models.resolve_mixed_precision`)."""

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise ElusiveError on a bad option, named by ``name(field)`` (see `elusive.errors`)."""
        check_finite(self, name, ElusiveError)
        check_template(self.template, name("template"))
        for field_name, least in (
            ("max_new_tokens", 1),
            ("batch_size", 1),
            ("shots", 0),
            ("choices", 1),
        ):
            value = getattr(self, field_name)
            if value < least:
                raise ElusiveError(f"{name(field_name)} must be >= {least}, got {value}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ElusiveError(
                f"{name('mixed_precision')} must be auto or one of {MIXED_PRECISIONS[1:]}, "
                f"got {shorten(self.mixed_precision)}"
            )


def check_bitsandbytes(what: str, error: type[ElusiveError]) -> None:
    """Raise `error` saying that `what` (an option asking for 4-bit weights) needs bitsandbytes,
    if it is not installed: one line, before any model loads, not transformers' traceback."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise error(
            f"{what} needs bitsandbytes, which is not installed "
            '(pip install "elusive[qlora]", or pip install bitsandbytes)'
        )


def check_finite(config: object, name: Callable[[str], str], error: type[ElusiveError]) -> None:
    """Raise `error` if a float option of dataclass `config` is infinite or NaN (YAML's ``.inf``,
    ``--lr inf``): range checks such as ``lr > 0`` let infinity through, and NaN or infinity
    poisons whatever is computed from it."""
    for option in dataclasses.fields(config):
        value = getattr(config, option.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{name(option.name)} must be a finite number, got {value}")


TEMPLATE_FIELDS = ("question",)
"""The fields `elusive.evaluation.evaluate.build_prompts` fills into `EvalConfig.template`."""


def check_template(template: str, where: str) -> None:
    """Refuse a prompt template that `str.format` cannot fill with `TEMPLATE_FIELDS` alone: a
    field other than ``{question}``, a conversion or format spec, a lone brace (a literal brace
    is written ``{{`` or ``}}``), or no ``{question}`` at all."""
    shown = shorten(template)
    try:
        fields = [
            (field, conversion, spec)
            for _, field, spec, conversion in string.Formatter().parse(template)
            if field is not None
        ]
    except ValueError:
        raise ElusiveError(
            f"{where} has a lone {{ or }} in {shown}: write a literal brace as {{{{ or }}}}"
        ) from None
    for field, conversion, spec in fields:
        if field not in TEMPLATE_FIELDS or conversion or spec:
            written = (
                f"{{{field}{'!' * bool(conversion)}{conversion or ''}{':' * bool(spec)}{spec}}}"
            )
            raise ElusiveError(
                f"{where} has {shorten(written)} in {shown}: only {{question}} is filled in "
                "(no conversion or format spec); write a literal brace as {{ or }}"
            )
    if not fields:
        raise ElusiveError(f"{where} must contain {{question}}, got {shown}")


def shorten(value: object, limit: int = 80) -> str:
    """The repr of `value` for an error message, cut to about `limit` characters: a message is
    one line, and a huge value (a YAML alias expansion, a megabyte string) is never printed
    whole, nor repr'd whole on the way (`reprlib` stops at a few items a level)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
