"""A command's options made from config dataclasses, and the ``--config``/``--set`` it reads.

A stage command names the dataclasses it takes (`Options`), and `config_options` gives it one
option per field: the name, type and default from the field, the help from the field's
docstring (`field_docs`), a ``Literal`` field's choices as typer's. It also gets ``--config
FILE`` and ``--set KEY=VALUE``; the command receives each dataclass built from, in rising
precedence, the field defaults, the file, ``--set``, and the options typed on the command line.

Typer reads a command's options from its function's signature, so `config_options` gives the
function a signature made from the fields (`inspect.Signature`). Typer then makes these options
as it makes every hand-written one (help panel, ``--flag/--no-flag`` booleans, ``Literal``
choices), and a command mixes both in one signature; written with click directly, they would
need a second parser and help style beside typer's.

A ``--config`` file is either a flat mapping of the command's options, named as in ``--help``
with ``_`` for ``-`` (``lr: 3.0e-4``), or a run config of `elusive run` (its top level holds a
section name: ``attention:``, ``train:``, ...), of which the command reads only the sections
its `Options` name (``elusive attention`` reads ``attention``, ``models`` and
``corpus.text_field``); a grid list there must hold one value.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import itertools
import textwrap
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from elusive.experiment.config import (
    ConfigError,
    RunConfig,
    apply_sets,
    coerce,
    read_mapping,
    yaml_value,
)


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


@functools.cache
def field_hints(config: type) -> dict[str, Any]:
    """{field: type} of dataclass `config`, its annotations evaluated."""
    return typing.get_type_hints(config)


def field_default(config: type, name: str) -> Any:
    """The default of field `name` of dataclass `config`."""
    return {f.name: f.default for f in dataclasses.fields(config)}[name]


def field_help(config: type, name: str) -> str:
    """The docstring of field `name` of dataclass `config`, on one line."""
    doc = field_docs(config).get(name)
    if doc is None:  # a programming error, caught by importing the CLI in any test
        raise TypeError(f"{config.__name__}.{name} has no docstring for the CLI help")
    return doc


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated option ("date,city,...") as a tuple of names; "" is none."""
    return tuple(f.strip() for f in text.split(",")) if text.strip() else ()


@dataclass(frozen=True)
class Spelling:
    """How the command line writes a field it cannot take as typed: `parse` reads the typed
    text into the field's value, `show` writes the field's default as it is typed."""

    parse: Callable[[str], Any]
    show: Callable[[Any], str]


NAMES = Spelling(parse_names, ",".join)
"""A ``tuple[str, ...]`` field: names separated by commas (``--protect name,date``)."""
ESCAPED_NEWLINES = Spelling(lambda t: t.replace("\\n", "\n"), lambda t: t.replace("\n", "\\n"))
"""A text with newlines, typed as ``\\n`` (``--template "Q: {question}\\nA:"``)."""


@dataclass(frozen=True)
class Options:
    """The options a command takes from dataclass `config`: one per field, but those `only`
    leaves out, or else those in `exclude` (set by the command or internal)."""

    config: type
    section: str | None = None
    """The run-config section (dotted, ``corpus.bios``) that holds these fields, read when
    ``--config`` is a run config; None: a flat file only."""
    only: tuple[str, ...] | None = None
    """The fields to take, where a command takes a few of a larger dataclass."""
    exclude: tuple[str, ...] = ()
    """Fields that are no option of the command."""
    names: Mapping[str, str] = field(default_factory=dict)
    """field -> option name, where it differs (``seed`` -> ``bios_seed``)."""
    required: tuple[str, ...] = ()
    """Fields that must be typed on the command line (no default)."""
    helps: Mapping[str, str] = field(default_factory=dict)
    """field -> help, where this command's option means more or less than the docstring."""
    spellings: Mapping[str, Spelling] = field(default_factory=dict)
    """field -> how it is typed, beside the spellings its type implies (`spelling`)."""

    def fields(self) -> list[str]:
        """The fields that are options, in the dataclass's order."""
        names = [f.name for f in dataclasses.fields(self.config)]
        for name in (*(self.only or ()), *self.exclude, *self.names, *self.required):
            if name not in names:  # a programming error, caught by importing the CLI
                raise TypeError(f"{self.config.__name__} has no field {name!r}")
        if self.only is not None:
            return [name for name in names if name in self.only]
        return [name for name in names if name not in self.exclude]

    def option(self, name: str) -> str:
        """The option (parameter) name of field `name`."""
        return self.names.get(name, name)

    def spelling(self, name: str) -> Spelling | None:
        """How field `name` is typed, if not as itself: a tuple of names comma-separated, a
        field of any type as YAML (``--device-map "{0: 20GiB}"``), or the command's own."""
        if name in self.spellings:
            return self.spellings[name]
        hint = field_hints(self.config)[name]
        if typing.get_origin(hint) is tuple:
            return NAMES
        if hint is Any:
            return Spelling(functools.partial(yaml_value, "--" + name.replace("_", "-")), str)
        return None

    def parameter(self, name: str) -> inspect.Parameter:
        """The typer parameter of field `name`."""
        hint = field_hints(self.config)[name]
        default = field_default(self.config, name)
        spelled = self.spelling(name)
        if spelled is not None:
            hint = str | None if default is None else str
            default = None if default is None else spelled.show(default)
        if default is dataclasses.MISSING or name in self.required:
            default = inspect.Parameter.empty
        help_ = self.helps.get(name) or field_help(self.config, name)
        return inspect.Parameter(
            self.option(name),
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[hint, typer.Option(help=help_)],
        )


ConfigFileOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of this command's options (named as in --help, with _ for -), "
        "or a run config (its sections of this command); options typed here win over it.",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(  # a short metavar: a wide one squeezes every option's name in --help
        "--set",
        metavar="<k=v>",
        help="KEY=VALUE: an option (VALUE read as YAML) over --config; repeatable.",
    ),
]
GIVEN = "given"
"""A command's parameter of this name receives the options set by the file, --set or the
command line (not left at their defaults)."""


def config_options(**groups: Options) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command whose parameter named K of `groups` receives the dataclass
    ``groups[K].config`` built from its options (see the module docstring): the decorated
    function's signature has the command's own parameters, one option per field of each
    group, ``--config`` and ``--set``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in (*groups, GIVEN)]
        options = {g.option(name): (key, name) for key, g in groups.items() for name in g.fields()}
        taken = [p.name for p in own] + list(options) + ["config_file", "sets", "ctx"]
        for name in {n for n in taken if taken.count(n) > 1}:  # caught by importing the CLI
            raise TypeError(f"{command.__name__}: option {name!r} is given twice")
        parameters = [
            *own,
            *(groups[key].parameter(name) for key, name in options.values()),
            inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=ConfigFileOption),
            inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=SetOption),
            inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        ]  # fmt: skip

        @functools.wraps(command)
        def run(*, ctx: typer.Context, config_file: Path | None, sets: list[str] | None, **kw):
            values = {name: kw.pop(name) for name in options}
            typed = {name: value for name, value in values.items() if _typed(ctx, name)}
            built, given = build_configs(groups, typed, config_file, sets or [])
            if GIVEN in signature.parameters:
                kw[GIVEN] = given
            return command(**kw, **built)

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        run.options = groups  # type: ignore[attr-defined]  # for the tests
        return run

    return decorate


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was typed on the command line (not left at its default)."""
    # by name: typer vendors click (typer._click) in some versions, with its own enum
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"


def build_configs(
    groups: Mapping[str, Options], typed: dict[str, Any], path: Path | None, sets: list[str]
) -> tuple[dict[str, Any], frozenset[str]]:
    """{group key: its dataclass} from the options of file `path`, then `sets`, then those
    `typed` on the command line (by option name, as typed), and the names of the options so
    set. Every error is one line naming the file (or --set) and the key."""
    options = {g.option(name): (key, name) for key, g in groups.items() for name in g.fields()}
    values: dict[str, tuple[Any, str, str]] = {}  # option -> (value, where, key named in errors)
    if path is not None:
        values |= read_options(path, groups, skip=set(typed))
    from_sets = apply_sets({}, sets, "--set")
    _check_known(from_sets, options, "--set")
    values |= {name: (value, "--set", name) for name, value in from_sets.items()}
    built: dict[str, dict[str, Any]] = {key: {} for key in groups}
    for option, (value, where, key) in values.items():
        group, name = options[option]
        hint = field_hints(groups[group].config)[name]
        built[group][name] = coerce(value, hint, where, key)
    for option, text in typed.items():
        group, name = options[option]
        spelled = groups[group].spelling(name)
        built[group][name] = spelled.parse(text) if spelled and text is not None else text
    configs = {key: groups[key].config(**fields) for key, fields in built.items()}
    return configs, frozenset(values) | frozenset(typed)


RUN_SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))
"""The top-level keys of a run config: a ``--config`` file holding one is a run config."""


def read_options(
    path: Path, groups: Mapping[str, Options], skip: Collection[str] = ()
) -> dict[str, tuple[Any, str, str]]:
    """{option: (value, file, key)} of the ``--config`` file at `path`: a flat mapping of the
    command's options, or a run config, whose `Options.section` sections are read; the
    options in `skip` (typed on the command line, which wins) are not taken from a run config,
    so that a grid list of theirs is no error."""
    options = {g.option(name): (key, name) for key, g in groups.items() for name in g.fields()}
    data = read_mapping(path)
    where = str(path)
    if not any(key in RUN_SECTIONS and key not in options for key in data):
        _check_known(data, options, where)
        return {name: (value, where, name) for name, value in data.items()}
    _check_known(data, dict.fromkeys(RUN_SECTIONS), where)
    found: dict[str, tuple[Any, str, str]] = {}
    for group in groups.values():
        if group.section is None:
            continue
        section, cls = _section(data, group.section, where)
        grid: dict[str, str] = getattr(cls, "grid", {})  # field -> its grid list's key
        for name in group.fields():
            key = grid.get(name, name)
            if key not in section or group.option(name) in skip:
                continue
            value, dotted = section[key], f"{group.section}.{key}"
            if name in grid and isinstance(value, list):
                if len(value) != 1:
                    raise ConfigError(
                        f"{where}: {dotted}: a grid of {len(value)} values; this command takes "
                        f"one: give it with --{group.option(name).replace('_', '-')}"
                    )
                (value,) = value
            found[group.option(name)] = (value, where, dotted)
    return found


def _section(data: dict[str, Any], dotted: str, where: str) -> tuple[dict[str, Any], type]:
    """The mapping at `dotted` of run config `data` (empty where absent or null) and the run
    config's dataclass of that section, whose fields its keys must be."""
    cls: Any = RunConfig
    node: Any = data
    for depth, part in enumerate(dotted.split(".")):
        hint = typing.get_type_hints(cls)[part]
        (cls,) = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        node = {} if node.get(part) is None else node[part]
        key = ".".join(dotted.split(".")[: depth + 1])
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {type(node).__name__}")
        _check_known(node, {f.name: None for f in dataclasses.fields(cls)}, where, f"{key}.")
    return node, cls


def _check_known(data: Mapping[str, Any], known: Mapping[str, Any], where: str, prefix: str = ""):
    """Refuse a key of `data` not in `known`, naming it, `where` and the closest known key."""
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(str(name), list(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            shown = str(name) if len(str(name)) <= 80 else str(name)[:77] + "..."
            raise ConfigError(f"{where}: {prefix}{shown}: unknown key ({hint})")
