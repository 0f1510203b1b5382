"""`elusive migrate`: a run folder of an older layout is refused by `elusive run`, upgraded in
place from what it recorded, and then resumed without recomputing anything."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from elusive.cli import app
from elusive.experiment.config import ConfigError, load_config
from elusive.experiment.migrate import migrate
from elusive.experiment.pipeline import run_experiment
from elusive.experiment.runs import SCHEMA
from test_pipeline import SMALL_GRID, snapshot, tiny_pair, write_config  # noqa: F401

runner = CliRunner()


@pytest.fixture
def made(tmp_path, tiny_pair, monkeypatch):  # noqa: F811
    """A finished run folder (report stage left out: not what is tested) and its config."""
    import elusive.experiment.pipeline as pipeline

    monkeypatch.setattr(pipeline, "stage_report", lambda run: "not written")
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **SMALL_GRID))
    run = run_experiment(config, progress=False, echo=lambda _: None)
    return run, config


def _rewrite(run, edit) -> dict:
    manifest = json.loads(run.manifest_path.read_text())
    edit(manifest)
    run.manifest_path.write_text(json.dumps(manifest))
    return manifest


def test_a_folder_made_before_fingerprints_is_refused_then_migrated_and_resumed(made):
    run, config = made
    current = json.loads(run.manifest_path.read_text())
    assert current["schema"] == SCHEMA

    def schema_0(manifest):  # what elusive up to stop 11 wrote: no fingerprints, no version
        del manifest["outputs"], manifest["schema"]
        manifest["fixed_config_sha256"] = "0" * 64
        del manifest["config"]["augment"]["drop_style"]
        manifest["config"]["augment"]["replace_with_spaces"] = False

    old = _rewrite(run, schema_0)
    before = snapshot(run.root)
    with pytest.raises(ConfigError, match=r"schema 0, made by an older elusive: .*elusive migrate"):
        run_experiment(config, progress=False, echo=lambda _: None)
    assert json.loads(run.manifest_path.read_text()) == old  # refused, unchanged

    result = runner.invoke(app, ["migrate", str(run.root)])
    assert result.exit_code == 0, result.output
    assert f"schema 0 -> {SCHEMA}" in result.output
    migrated = json.loads(run.manifest_path.read_text())
    assert migrated["schema"] == SCHEMA and "fixed_config_sha256" not in migrated
    assert migrated["outputs"] == current["outputs"]  # what `elusive run` had recorded
    assert migrated["config"] == current["config"]  # the option under its new name
    run_experiment(config, progress=False, echo=lambda _: None)
    assert snapshot(run.root) == before  # nothing recomputed
    assert f"already schema {SCHEMA}" in migrate(run.root)


def test_a_version_1_folder_gets_the_option_renamed_and_a_newer_one_is_refused(made, tmp_path):
    run, config = made
    current = json.loads(run.manifest_path.read_text())

    def schema_1(manifest):  # fingerprints, no version written, the option's old name
        del manifest["schema"], manifest["config"]["augment"]["drop_style"]
        manifest["config"]["augment"]["replace_with_spaces"] = True

    _rewrite(run, schema_1)
    with pytest.raises(ConfigError, match="schema 1, made by an older elusive"):
        run_experiment(config, progress=False, echo=lambda _: None)
    assert migrate(run.root).endswith(f"schema 1 -> {SCHEMA}")
    migrated = json.loads(run.manifest_path.read_text())
    assert migrated["config"]["augment"]["drop_style"] == "space"
    assert migrated == {**current, "config": migrated["config"]}

    newer = _rewrite(run, lambda m: m.update(schema=SCHEMA + 1))
    for attempt in (lambda: migrate(run.root), lambda: run_experiment(config, progress=False)):
        with pytest.raises(ConfigError, match="made by a newer elusive"):
            attempt()
    assert json.loads(run.manifest_path.read_text()) == newer
    result = runner.invoke(app, ["migrate", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "run.json: no such file" in result.output


def test_an_old_table1_folder_is_named_and_left_as_it_was(tmp_path):
    old = tmp_path / "table1"
    for name in ("data/people.jsonl", "data/qa.jsonl", "run/run.json", "eval/metrics.json"):
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_text("{}\n")
    before = sorted(p.relative_to(old) for p in old.rglob("*"))
    result = runner.invoke(app, ["migrate", str(old)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {old}: an `elusive table1` folder of the layout before Table 1 ran as a run "
        "config (data/, run/, eval/): it records no run config to upgrade from; rerun "
        "`elusive table1 --out NEW_FOLDER`"
    )
    assert sorted(p.relative_to(old) for p in old.rglob("*")) == before
