import json

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
