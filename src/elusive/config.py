"""Experiment configs: YAML/JSON files mapped onto typed dataclasses with the paper's defaults.

A config drives `elusive run` (see `elusive.pipeline`). Every section is optional::

    out: runs/demo
    seeds: [0]
    corpus: {bios: {n: 24, seed: 0}}         # or {path: corpus.jsonl, qa: qa.jsonl}
    validation: 0.3                          # share of sources whose questions pick settings
    models: {large: qwen2.5-coder-1.5b, small: qwen2.5-coder-0.5b, trained: [small]}
    attention: {prefix: "", batch_size: 8}
    augment: {policies: [none, random, attention, contrast], copies: 10,
              alpha: [0.7], beta: [0.03]}
    train: {lr: [1.0e-3], epochs: [10, 20], batch_size: 8}   # lists expand to a grid
    evaluate: {max_new_tokens: 16}
    report: {select_on: [university, company], analysis_texts: 100}

Lists in `augment.alpha`, `augment.beta`, `train.lr`, `train.epochs` and `seeds` expand to a
grid. `train.epochs` is a list of checkpoints of one run: a run trains to the largest and is
evaluated after each listed epoch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .corpus import FIELDS, BiosConfig


class ConfigError(ValueError):
    """A config file that does not fit the schema; the message names the file and key."""


@dataclass
class CorpusSection:
    """Where the texts and questions come from: exactly one of `bios`, `path` or `squad`."""

    bios: BiosConfig | None = None
    path: str | None = None
    """A corpus for `read_corpus` (JSONL, .txt, folder); `qa` names its questions."""
    qa: str | None = None
    squad: str | None = None
    """A SQuAD v1.1-format JSON file: paragraphs become texts, questions the QA set."""
    max_paragraphs: int | None = None
    max_questions: int | None = None
    require_answer_in_context: bool = True
    seed: int = 0


@dataclass
class ModelsSection:
    large: str = "qwen2.5-coder-1.5b"
    small: str = "qwen2.5-coder-0.5b"
    trained: list[str] = field(default_factory=lambda: ["small"])
    """Roles that are finetuned and evaluated (the paper trains both)."""


@dataclass
class AttentionSection:
    prefix: str = ""
    """Prepended to every text before scoring (the paper uses "Text: " for models with no BOS)."""
    batch_size: int = 8
    dtype: str = "float32"
    align: str = "tokens"


@dataclass
class AugmentSection:
    policies: list[str] = field(
        default_factory=lambda: ["none", "random", "attention", "contrast", "shuffled", "position"]
    )
    copies: int = 10
    alpha: list[float] = field(default_factory=lambda: [0.7])
    beta: list[float] = field(default_factory=lambda: [0.03])
    replace_with_spaces: bool = False


@dataclass
class TrainSection:
    """`elusive.train.TrainConfig` options; `lr` and `epochs` are grid lists."""

    lr: list[float] = field(default_factory=lambda: [1e-3])
    epochs: list[int] = field(default_factory=lambda: [20])
    full: bool = False
    lora_r: int = 16
    lora_alpha: int = 16
    batch_size: int = 8
    grad_accum: int = 1
    warmup: float = 0.05
    schedule: str = "cosine"
    max_length: int = 512
    dtype: str = "float32"
    mixed_precision: str = "auto"


@dataclass
class ReportSection:
    select_on: list[str] = field(default_factory=lambda: ["university", "company"])
    """Fields whose mean validation `select_metric` picks the best settings per policy."""
    select_metric: str = "f1"
    """The validation score that picks the settings: QA ``em`` or ``f1``, or a probe
    (``cloze_em``, ``cloze_logprob``, ``choice``, ... see `elusive.metrics.METRICS`)."""
    analysis_texts: int = 100
    """Biographies analysed for Figures 2 and 3 (attention at the token before the company)."""


@dataclass
class RunConfig:
    out: str = "runs/elusive"
    seeds: list[int] = field(default_factory=lambda: [0])
    corpus: CorpusSection = field(default_factory=lambda: CorpusSection(bios=BiosConfig()))
    validation: float = 0.3
    models: ModelsSection = field(default_factory=ModelsSection)
    attention: AttentionSection = field(default_factory=AttentionSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: dict[str, Any] = field(default_factory=dict)
    """Options of `elusive.evaluate.EvalConfig` (checked when the stage builds it)."""
    report: ReportSection = field(default_factory=ReportSection)

    def validate(self, where: str = "config") -> None:
        sources = [x for x in (self.corpus.bios, self.corpus.path, self.corpus.squad) if x]
        if len(sources) != 1:
            raise ConfigError(f"{where}: corpus needs exactly one of bios, path or squad")
        if self.corpus.path and not self.corpus.qa:
            raise ConfigError(f"{where}: corpus.path needs corpus.qa (its questions)")
        if not 0 < self.validation < 1:
            raise ConfigError(f"{where}: validation must be in (0, 1), got {self.validation}")
        if not self.seeds:
            raise ConfigError(f"{where}: seeds is empty")
        for role in self.models.trained:
            if role not in ("large", "small"):
                raise ConfigError(f"{where}: models.trained: unknown role {role!r}")
        from .augment import POLICIES

        for policy in self.augment.policies:
            if policy not in POLICIES:
                raise ConfigError(
                    f"{where}: augment.policies: unknown policy {policy!r} (one of {POLICIES})"
                )
        for name in ("alpha", "beta"):
            if not getattr(self.augment, name):
                raise ConfigError(f"{where}: augment.{name} is empty")
        if not self.train.lr or not self.train.epochs or min(self.train.epochs) < 1:
            raise ConfigError(f"{where}: train.lr and train.epochs need values (epochs >= 1)")
        from .metrics import METRICS

        if self.report.select_metric not in METRICS:
            raise ConfigError(
                f"{where}: report.select_metric: unknown metric {self.report.select_metric!r} "
                f"(one of {', '.join(METRICS)})"
            )
        if self.corpus.bios:
            unknown = set(self.report.select_on) - set(FIELDS)
            if unknown:
                raise ConfigError(f"{where}: report.select_on: unknown field {sorted(unknown)}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML or JSON config file (JSON is YAML) into a validated RunConfig."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data.update(overrides or {})
    config = from_dict(RunConfig, data, str(path))
    config.validate(str(path))
    return config


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and coercing simple types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {sorted(names)})")
    return cls(**{k: _coerce(v, hints[k], f"{where}: {k}") for k, v in data.items()})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint; numbers written as strings ("1e-3") become numbers,
    and a scalar where a list is expected becomes a one-item list."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where.replace(": ", "."))
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(v, args[0], where) for v in items]
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(_coerce(v, args[0], where) for v in items)
    if origin is dict or hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        try:
            number = hint(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (hint is int and float(value) != number):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(config: Any) -> Any:
    """A plain-data copy of a config (for the run manifest)."""
    return dataclasses.asdict(config)
