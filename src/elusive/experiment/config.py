"""Experiment configs: YAML/JSON files mapped onto typed dataclasses with the paper's defaults.

A config drives `elusive run` (see `elusive.experiment.pipeline`). Every section is optional::

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

Lists in `augment.policies`, `augment.alpha`, `augment.beta`, `train.lr`, `train.epochs` and
`seeds` expand to a grid. The attention, augment, train and evaluate sections take the options
of their module's config (`AttentionConfig`, `AugmentConfig`, `TrainConfig`, `EvalConfig`),
made from it by `section_of`, so an option is declared and checked in one place. Those of the
model stages live in `elusive.options`, which imports no torch: a config is read and checked in a
fraction of a second.
`train.epochs` is a list of checkpoints of one run: a run trains to the largest and is
evaluated after each listed epoch. `load_config` checks all of it before any stage runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elusive.augment.dropout import NEEDS_SCORES, POLICIES, AugmentConfig
from elusive.corpus.bios import FIELDS, SPANS, BiosConfig
from elusive.corpus.cloze import ProbeConfig
from elusive.corpus.squad import SquadConfig
from elusive.errors import ElusiveError
from elusive.metrics import METRICS
from elusive.options import UNTRAINED, AttentionConfig, EvalConfig, TrainConfig, shorten
from elusive.specs import check_model_spec, check_placement


class ConfigError(ElusiveError):
    """A config file that does not fit the schema; the message names the file and key."""


def section_of(
    config: type,
    name: str,
    doc: str,
    grid: dict[str, str] | None = None,
    exclude: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> type:
    """A run-config section made from module config `config`, so that each option is declared
    once: its fields but `exclude` (set by the pipeline, e.g. the model and the seed), with the
    fields of `grid` (field -> section key) as lists that expand to a grid, by default the one
    item ``[config default]``; `defaults` (section key -> value) overrides a default."""
    grid, defaults = grid or {}, defaults or {}
    hints = typing.get_type_hints(config)
    fields = []
    for f in dataclasses.fields(config):
        if f.name in exclude:
            continue
        key = grid.get(f.name, f.name)
        value = defaults.get(key, f.default)
        if f.name in grid:
            items = value if key in defaults else [value]
            fields.append(
                (key, list[hints[f.name]], field(default_factory=lambda v=items: list(v)))
            )
        else:
            fields.append((key, hints[f.name], field(default=value)))
    namespace = {"__doc__": doc, "module_config": config, "grid": grid}
    return dataclasses.make_dataclass(name, fields, namespace=namespace)


@dataclass
class CorpusSection:
    """Where the texts and questions come from: exactly one of `bios`, `path` or `squad`."""

    bios: BiosConfig | None = None
    path: str | None = None
    """A corpus for `read_corpus`: a .md, .txt or .jsonl file, a folder of them, or a Hugging
    Face dataset (a save_to_disk folder, .parquet, .json, .csv); `qa` names its questions."""
    qa: str | None = None
    """Questions (and probes) about `path`'s texts, for `read_qa`; None: span-cloze probes built
    from the texts, passages if chunked (`elusive.corpus.cloze.build_probes`, options in
    `probes`)."""
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    """How a `path` corpus without `qa` gets its probes (`elusive.corpus.cloze.ProbeConfig`)."""
    text_field: str = "text"
    """The field that holds each text in a JSONL or dataset corpus."""
    chunk: int | None = None
    """Cut each text into passages of at most this many tokens of the trained model's
    tokenizer (BOS and EOS included, as training counts), at paragraph, then sentence
    boundaries (docs/corpus.md); scoring, augmentation, training and probes then run on
    passages. None: one passage per text, and a text longer than train.max_length is an
    error."""
    squad: str | None = None
    """A SQuAD v1.1-format JSON file: paragraphs become texts, questions the QA set."""
    max_paragraphs: int | None = None
    max_questions: int | None = None
    require_answer_in_context: bool = True
    seed: int = 0


@dataclass
class ModelsSection:
    large: str | None = "qwen2.5-coder-1.5b"
    """Spec of the large model of the contrast (`elusive.models.load_model`: a folder, a .gguf
    file or an offline pack name). None (``null``) for a run whose policies rank nothing
    (none, plain, random: `elusive.augment.dropout.NEEDS_SCORES`): nothing is scored, and the report
    leaves out Figures 2-3, which need both models."""
    small: str = "qwen2.5-coder-0.5b"
    """Spec of the small model of the contrast, the one trained by default."""
    trained: list[str] = field(default_factory=lambda: ["small"])
    """Roles that are finetuned and evaluated (the paper trains both)."""
    device_map: Any = None
    """Spread each model over several devices, for models larger than one, in scoring, the
    report's analysis and evaluation (accelerate's big-model dispatch): auto, balanced,
    sequential, one device, or a mapping of module names to devices (a GPU index, cpu, disk).
    Default: the whole model on one device. Training shards with FSDP instead
    (docs/multi-gpu.md)."""
    max_memory: Any = None
    """With device_map: the most memory each device may hold, e.g. {0: 70GiB, cpu: 200GiB}; what
    does not fit goes to the CPU, then the disk."""

    @property
    def tokens_role(self) -> str:
        """The role whose tokens the scores and the augmented corpora follow: small where it is
        the only trained role, else the first trained one."""
        return "small" if self.trained == ["small"] else self.trained[0]


AttentionSection = section_of(
    AttentionConfig,
    "AttentionSection",
    "`elusive.scoring.attention.AttentionConfig` options; the output follows the first trained "
    "role.",
    exclude=("trained", "cache_dir", "chunk_size"),
)
AugmentSection = section_of(
    AugmentConfig,
    "AugmentSection",
    "`elusive.augment.dropout.AugmentConfig` options; `policies`, `alpha` and `beta` are grid "
    "lists.",
    grid={"policy": "policies", "alpha": "alpha", "beta": "beta"},
    exclude=("seed", "score_of"),
    defaults={"policies": list(POLICIES)},
)
TrainSection = section_of(
    TrainConfig,
    "TrainSection",
    "`elusive.training.train.TrainConfig` options; `lr` and `epochs` are grid lists.",
    grid={"lr": "lr", "epochs": "epochs"},
    exclude=("model", "seed"),
)


def options(section: Any, **grid_values: Any) -> dict[str, Any]:
    """Keyword arguments of the section's module config: its scalar options plus one value per
    grid field (`grid_values`, by module field name)."""
    keys = set(section.grid.values())
    data = {k: v for k, v in dataclasses.asdict(section).items() if k not in keys}
    return {**data, **grid_values}


@dataclass
class ReportSection:
    select_on: list[str] = field(default_factory=lambda: ["university", "company"])
    """Fields whose mean validation `select_metric` picks the best settings per policy."""
    select_metric: str = "f1"
    """The validation score that picks the settings: QA ``em`` or ``f1``, or a probe
    (``cloze_em``, ``cloze_logprob``, ``choice``, ... see `elusive.metrics.METRICS`)."""
    analysis_texts: int = 100
    """Biographies analysed for Figures 2 and 3 (attention at the token before the company)."""
    baselines: list[str] = field(default_factory=lambda: ["none"])
    """Policies every other policy is paired against (same test person, same seed), each in a
    table of its own; the first also in the paired-differences figure. ``untrained`` (the base
    model before training, evaluated in every run) may be one: each policy's gain over what the
    model already knew. The default's ``none`` is left out where it did not run."""


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
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    report: ReportSection = field(default_factory=ReportSection)

    def validate(self, where: str = "config") -> None:
        """Check every option and grid value, so that a bad key fails before any stage runs;
        a message names the config key (``train.lr[1]: must be > 0, got 0``)."""

        def fail(message: str) -> None:
            raise ConfigError(f"{where}: {message}")

        sources = [x for x in (self.corpus.bios, self.corpus.path, self.corpus.squad) if x]
        if len(sources) != 1:
            fail("corpus needs exactly one of bios, path or squad")
        if self.corpus.chunk is not None and not 2 <= self.corpus.chunk <= self.train.max_length:
            fail(
                f"corpus.chunk: must be in [2, train.max_length = {self.train.max_length}] so "
                f"that every passage trains whole, got {self.corpus.chunk}"
            )
        if not self.corpus.text_field:
            fail("corpus.text_field: is empty")
        if not 0 < self.validation < 1:
            fail(f"validation must be in (0, 1), got {self.validation}")
        if not self.seeds:
            fail("seeds is empty")
        for role in self.models.trained:
            if role not in ("large", "small"):
                fail(f"models.trained: unknown role {shorten(role)}")
        if self.models.large is None:
            ranking = [p for p in self.augment.policies if p in NEEDS_SCORES]
            if ranking:
                fail(
                    f"models.large: unset, and policy {ranking[0]} ranks tokens by the models' "
                    "attention: give models.large, or list only policies that rank nothing "
                    f"({', '.join(p for p in POLICIES if p not in NEEDS_SCORES)})"
                )
            if "large" in self.models.trained:
                fail("models.trained: names large, and models.large is unset")
        for role in ("large", "small"):
            if role == "large" and self.models.large is None:
                continue
            try:
                check_model_spec(getattr(self.models, role))
            except ElusiveError as exc:
                fail(f"models.{role}: {exc}")
        try:
            check_placement(
                self.models.device_map, self.models.max_memory, lambda f: f"models.{f}:"
            )
        except ElusiveError as exc:
            fail(str(exc))
        if self.report.select_metric not in METRICS:
            fail(
                f"report.select_metric: unknown metric {shorten(self.report.select_metric)} "
                f"(one of {', '.join(METRICS)})"
            )
        for index, policy in enumerate(self.report.baselines):
            known = (*self.augment.policies, UNTRAINED)
            if policy not in known and self.report.baselines != ["none"]:
                fail(
                    f"report.baselines[{index}]: {shorten(policy)} is not one of augment.policies "
                    f"({', '.join(self.augment.policies)}) nor {UNTRAINED}"
                )
        if self.report.analysis_texts < 1:
            fail(f"report.analysis_texts: must be >= 1, got {self.report.analysis_texts}")
        if self.corpus.bios:
            unknown = set(self.report.select_on) - set(FIELDS)
            if unknown:
                fail(f"report.select_on: unknown field {shorten(sorted(unknown))}")
            unknown = {span for span in self.augment.protect if span} - set(SPANS)
            if unknown:
                fail(
                    f"augment.protect: biographies have no span {shorten(sorted(unknown))} "
                    f"({SPANS})"
                )
        try:
            self._validate_modules()
        except ElusiveError as exc:
            fail(str(exc))
        self._validate_grid_values(fail)

    def _validate_grid_values(self, fail: Callable[[str], None]) -> None:
        """Refuse a grid list that gives a value twice, or two numbers that name the same run
        folder: `elusive.experiment.runs.Cell` writes ``alpha``, ``beta`` and ``lr`` with `grid_tag`
        (0.7 and 0.7000001 are both ``0.7``), so their runs would share, and overwrite, one
        folder."""
        lists: dict[str, tuple[list[Any], Callable[[Any], str] | None]] = {
            "seeds": (self.seeds, None),
            "models.trained": (self.models.trained, None),
            "augment.policies": (self.augment.policies, None),
            "augment.alpha": (self.augment.alpha, grid_tag),
            "augment.beta": (self.augment.beta, grid_tag),
            "train.lr": (self.train.lr, grid_tag),
            "train.epochs": (self.train.epochs, None),
        }
        for key, (values, tag) in lists.items():
            first: dict[Any, int] = {}
            for index, value in enumerate(values):
                j = first.setdefault(tag(value) if tag else value, index)
                if j != index and values[j] == value:
                    fail(f"{key}[{index}]: {shorten(value)} is given twice (also {key}[{j}])")
                if j != index:
                    fail(
                        f"{key}[{j}] {values[j]!r} and {key}[{index}] {value!r} name the same "
                        f"run folder ({grid_tag(value)}): give values that differ in their "
                        "first 6 significant digits"
                    )

    def _validate_modules(self) -> None:
        """Run each module config's own checks on the options it will get, naming config keys."""
        corpus = self.corpus
        if corpus.bios is not None:
            corpus.bios.validate(lambda f: f"corpus.bios.{f}:")
        corpus.probes.validate(lambda f: f"corpus.probes.{f}:")
        SquadConfig(
            max_paragraphs=corpus.max_paragraphs,
            max_questions=corpus.max_questions,
            seed=corpus.seed,
        ).validate(lambda f: f"corpus.{f}:")
        trained = "small" if self.models.trained == ["small"] else self.models.trained[0]
        AttentionConfig(**options(self.attention), trained=trained).validate(
            lambda f: f"attention.{f}:"
        )
        _validate_grid("augment", self.augment, {})
        _validate_grid("train", self.train, {"model": self.models.small})
        self.evaluate.validate(lambda f: f"evaluate.{f}:")


def grid_tag(value: float) -> str:
    """How a grid number (alpha, beta, lr) is written in run folder names
    (`elusive.experiment.runs.Cell`): 6 significant digits."""
    return f"{value:g}"


def _validate_grid(key: str, section: Any, fixed: dict[str, Any]) -> None:
    """Check a grid section: its module config with the first value of every grid list, then
    with each other grid value in turn, so that a message names the bad value's index."""
    values = {f: getattr(section, k) for f, k in section.grid.items()}
    for f, items in values.items():
        if not items:
            raise ConfigError(f"{key}.{section.grid[f]}: is empty")
    first = options(section, **fixed, **{f: items[0] for f, items in values.items()})
    for f, items in values.items():
        for index, item in enumerate(items):

            def name(option: str, f: str = f, index: int = index) -> str:
                if option not in section.grid:
                    return f"{key}.{option}:"
                return f"{key}.{section.grid[option]}[{index if option == f else 0}]:"

            section.module_config(**{**first, f: item}).validate(name)


def load_config(path: str | Path, sets: Sequence[str] = ()) -> RunConfig:
    """Read a YAML or JSON config file (JSON is YAML) into a validated RunConfig.

    Each of `sets` is ``KEY=VALUE`` (``train.lr=3e-4``, ``evaluate.shots=5``): VALUE, parsed as
    YAML, replaces the key (``elusive run --set``). The YAML is read by `safe_yaml`: a key given
    twice, or aliases that expand past `MAX_YAML_NODES` values, are errors."""
    data = read_mapping(path, sets)
    config = from_dict(RunConfig, data, str(path))
    config.validate(str(path))
    return config


def read_mapping(path: str | Path, sets: Sequence[str] = ()) -> dict[str, Any]:
    """The mapping a YAML or JSON config file holds, with each ``KEY=VALUE`` of `sets` applied;
    every way the file can be wrong is a one-line ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give a config file (YAML or JSON)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = safe_yaml(text) or {}
    except YamlRefused as exc:
        raise ConfigError(f"{path}:{exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:  # PyYAML composes nested collections by recursion
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except ValueError as exc:  # a number Python will not convert (an int of 5000 digits)
        raise ConfigError(f"{path}: a value cannot be read ({shorten(str(exc))})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return apply_sets(data, sets, str(path))


def apply_sets(data: dict[str, Any], sets: Sequence[str], where: str) -> dict[str, Any]:
    """`data` with each ``KEY=VALUE`` of `sets` applied (VALUE read as YAML; a dotted KEY
    reaches into sections); `where` names the config in errors."""
    for item in sets:
        _set(data, item, where)
    return data


MAX_YAML_NODES = 100_000
"""The most nodes a YAML document may hold once its aliases are expanded. A config holds a few
hundred; the bound refuses an alias bomb (anchors that nest aliases of each other, a few lines
that expand to billions of values) before anything walks the expansion."""


class YamlRefused(yaml.YAMLError):
    """YAML that parses but is refused: a key given twice, or aliases that expand too far.
    Its message is ``LINE: what``, to follow a file name."""


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data, no arbitrary tags) that also refuses a key given twice
    in one mapping, where PyYAML keeps the last silently, and a document whose aliases expand
    beyond `MAX_YAML_NODES` nodes or into themselves. Booleans are YAML 1.2's: only true and
    false (any case), so ``mixed_precision: no`` stays the string accelerate spells it, where
    YAML 1.1 would read False."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: keys may override
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: PyYAML's own error names it
                    continue
                if seen is not key_node:
                    raise YamlRefused(
                        f"{key_node.start_mark.line + 1}: duplicate key {shorten(key)} (first at "
                        f"line {seen.start_mark.line + 1}); give each key once"
                    )
        return super().construct_mapping(node, deep=deep)


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _check_expansion(root: yaml.Node | None) -> None:
    """Refuse a node graph whose expansion (every alias replaced by what it names) holds more
    than `MAX_YAML_NODES` nodes, or an alias inside the node it names. Counts each shared node
    once, without expanding anything, and without recursion."""
    size: dict[int, int] = {}  # id(node) -> nodes of its expansion
    open_nodes: set[int] = set()  # the nodes whose expansion is being counted: the ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)] if root is not None else []
    while stack:
        node, counted = stack.pop()
        children = _children(node)
        if counted:
            open_nodes.discard(id(node))
            size[id(node)] = 1 + sum(size[id(child)] for child in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise YamlRefused(
                    f"{node.start_mark.line + 1}: more than {MAX_YAML_NODES} values once "
                    "aliases are expanded; a config holds a few hundred"
                )
        elif id(node) in open_nodes:
            raise YamlRefused(f"{node.start_mark.line + 1}: an alias refers to a node holding it")
        elif id(node) not in size:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def safe_yaml(text: str) -> Any:
    """`text` read as YAML by `yaml.safe_load`'s rules, refusing duplicate keys and alias bombs
    (`YamlRefused`)."""
    loader = _SafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_value(flag: str, text: str | None) -> Any:
    """A command-line option's value read as YAML, as the config file would hold it
    (``--max-memory "{0: 70GiB, cpu: 200GiB}"``); None stays None."""
    if text is None:
        return None
    try:
        return safe_yaml(text)
    except yaml.YAMLError:
        raise ConfigError(f"{flag} {shorten(text)}: not valid YAML") from None


def _set(data: dict[str, Any], item: str, where: str) -> None:
    """Apply one ``KEY=VALUE`` override to the raw config mapping `data`."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {shorten(item)}: expected KEY=VALUE, e.g. train.lr=3e-4")
    try:
        value = safe_yaml(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {shorten(item)}: the value is not valid YAML") from None
    *parents, last = key.split(".")
    node = data
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            dotted = ".".join(parents[: depth + 1])
            raise ConfigError(f"{where}: --set {key}: {dotted} is not a section")
    node[last] = value


def from_dict(cls: type, data: Any, where: str, key: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys and coercing simple types; errors
    read ``WHERE: KEY: message`` with `key` the dotted path of `data` in the config."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names)}"
            raise ConfigError(f"{where}: {prefix}{_cut(str(name))}: unknown key ({hint})")
    return cls(**{k: coerce(v, hints[k], where, prefix + k) for k, v in data.items()})


def _cut(text: str, limit: int = 80) -> str:
    """`text` cut to about `limit` characters, for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """Check `value` against a type hint; numbers written as strings ("1e-3") become numbers,
    and a scalar where a list is expected becomes a one-item list. Errors read
    ``WHERE: KEY: message``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where, key)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, key)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [coerce(v, args[0], where, f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(coerce(v, args[0], where, key) for v in items)
    if origin is dict or hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {shorten(value)}")
        return value
    if hint in (int, float):
        try:
            number = hint(value) if not isinstance(value, bool) else None
            if hint is int and number is not None and float(value) != number:
                number = None  # 1.5 is no int
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(.inf)
            number = None
        if number is None:
            raise ConfigError(f"{where}: {key}: expected {hint.__name__}, got {shorten(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {shorten(value)}")
        return value
    return value


def to_dict(config: Any) -> Any:
    """A plain-data copy of a config (for the run manifest), as JSON gives it back: tuples
    become lists, so a reopened folder's recorded config compares equal to the same config."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
