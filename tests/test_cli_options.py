"""`elusive.cli_options`: a command's options made from dataclass fields."""

import dataclasses
from typing import Any, Literal

import pytest
import typer
from typer.testing import CliRunner

from elusive.cli_options import ESCAPED_NEWLINES, Options, config_options

runner = CliRunner()


def test_a_new_field_becomes_an_option_with_its_choices(tmp_path):
    """A field added to a dataclass needs no CLI code: it appears as an option, a Literal's
    choices checked by typer, and is read from --config too."""

    @dataclasses.dataclass
    class Knobs:
        mode: Literal["fast", "slow"] = "fast"
        """How to go."""
        level: int = 1
        """How far."""

    seen = []
    small = typer.Typer()

    @small.command()
    @config_options(knobs=Options(Knobs))
    def go(*, knobs: Knobs) -> None:
        seen.append(knobs)

    (tmp_path / "k.yaml").write_text("level: 3\n")
    result = runner.invoke(small, ["--mode", "slow", "--config", str(tmp_path / "k.yaml")])
    assert result.exit_code == 0, result.output
    assert seen == [Knobs(mode="slow", level=3)]
    result = runner.invoke(small, ["--mode", "medium"])
    assert result.exit_code == 2 and "'medium' is not one of" in result.output
    assert "How far." in runner.invoke(small, ["--help"]).output


def test_a_field_listed_twice_or_unknown_is_refused_when_the_command_is_made():
    from elusive.augment.dropout import AugmentConfig
    from elusive.experiment.config import CorpusSection

    def command(seed: int = 0, *, config: AugmentConfig) -> None: ...

    with pytest.raises(TypeError, match="option 'seed' is given twice"):
        config_options(config=Options(AugmentConfig))(command)
    with pytest.raises(TypeError, match="CorpusSection has no field 'txt_field'"):
        Options(CorpusSection, only=("txt_field",)).fields()


@dataclasses.dataclass
class Spelled:
    names: tuple[str, ...] = ("a", "b")
    """Some names."""
    placement: Any = None
    """Anything YAML holds."""
    text: str = "x\ny"
    """Two lines."""


def test_fields_the_command_line_cannot_hold_as_typed_are_spelled(tmp_path):
    """A tuple of names is typed comma-separated, a field of any type as YAML, a text with
    newlines as \\n; the file holds them as YAML. The command learns which options were set."""
    seen = []
    small = typer.Typer()

    @small.command()
    @config_options(spelled=Options(Spelled, spellings={"text": ESCAPED_NEWLINES}))
    def go(*, spelled: Spelled, given: frozenset[str]) -> None:
        seen.append((spelled, given))

    typed = ["--names", "c,d", "--placement", "{0: 1GiB}", "--text", "p\\nq"]
    assert runner.invoke(small, typed).exit_code == 0
    assert seen.pop() == (Spelled(("c", "d"), {0: "1GiB"}, "p\nq"), {"names", "placement", "text"})
    assert runner.invoke(small, []).exit_code == 0
    assert seen.pop() == (Spelled(), frozenset())
    (tmp_path / "s.yaml").write_text('names: [e]\ntext: "r\\ns"\n')
    assert runner.invoke(small, ["--config", str(tmp_path / "s.yaml")]).exit_code == 0
    assert seen.pop() == (Spelled(("e",), None, "r\ns"), {"names", "text"})
    shown = runner.invoke(small, ["--help"], terminal_width=200).output
    assert "[default: a,b]" in shown and "[default: x\\ny]" in shown
