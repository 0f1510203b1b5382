import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elusive.cli import app

runner = CliRunner()


def test_bios_generate_writes_files(tmp_path):
    result = runner.invoke(
        app, ["bios", "generate", "--n", "20", "--seed", "1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    people = [json.loads(line) for line in (tmp_path / "people.jsonl").read_text().splitlines()]
    qa = (tmp_path / "qa.jsonl").read_text().splitlines()
    assert len(people) == 20 and len(qa) == 100
    assert set(people[0]) == {"id", "name", "gender", "fields", "text", "spans"}


def test_bad_option_is_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["bios", "generate", "--out", str(out), "--field-order", "date,city"]
    )
    assert result.exit_code != 0
    assert "--field-order must be a permutation" in result.output
    assert not out.exists()


def test_every_option_has_help():
    for args in (["--help"], ["bios", "--help"], ["bios", "generate", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
    text = runner.invoke(app, ["bios", "generate", "--help"]).output
    for option in ("--out", "--n", "--seed", "--templates", "--field-order", "--shuffle-sentences"):
        assert option in text


SQUAD = Path(__file__).parent / "data" / "squad_small.json"


@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        (["bios", "generate"], "FILE", "is a file, not a folder"),
        (["bios", "generate"], "FILE/sub", "cannot be made as a folder: {tmp}/FILE is a file"),
        (["bios", "generate"], "DIR", "DIR/qa.jsonl: is a folder"),
        (["squad", "convert", str(SQUAD)], "DIR", "DIR/qa.jsonl: is a folder"),
        # the inputs below are missing too: the output must be refused before they are read
        (["attention", "--corpus", "none.jsonl", "--model", "nope"], "FILE", "is a file"),
        (["augment", "--scores", "none"], "DIR", "DIR: is a folder; give a file path"),
        (["train", "--model", "nope", "--corpus", "none.jsonl"], "FILE", "is a file"),
        (["evaluate", "--model", "nope", "--qa", "none.jsonl"], "FILE", "is a file"),
    ],
)
def test_unwritable_output_fails_first_in_one_line_writing_nothing(tmp_path, command, out, message):
    (tmp_path / "FILE").write_text("keep me\n")
    (tmp_path / "DIR" / "qa.jsonl").mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, [*command, "--out", str(tmp_path / out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message.format(tmp=tmp_path) in lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "FILE").read_text() == "keep me\n"
