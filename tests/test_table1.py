"""`elusive table1`: the paper's Table 1 as a run config executed by the pipeline."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus.records import read_corpus, read_qa
from elusive.evaluation.evaluate import read_eval
from elusive.experiment import layout
from elusive.experiment.runs import grid
from elusive.experiment.table1 import run_table1, table1_config
from elusive.io import iter_jsonl
from elusive.metrics import aggregate
from elusive.options import EvalConfig, TrainConfig
from elusive.tiny import make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

N = 4  # people: 5 questions each


def options(model: str, **changed) -> tuple[TrainConfig, EvalConfig]:
    evaluation = EvalConfig(max_new_tokens=changed.pop("max_new_tokens", 4))
    return TrainConfig(model=model, epochs=1, batch_size=4, **changed), evaluation


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("table1") / "tiny", seed=0))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model):
    """A Table 1 run folder and what `run_table1` returned."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train, evaluation = options(model)
    return out, run_table1(train, out, N, 0, evaluation, progress=False)


def mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.name != "run.json" and "report" not in p.parts
    }


def test_table1_is_a_run_folder_of_the_pipeline(finished, model):
    out, result = finished
    train, evaluation = options(model)
    (cell,) = grid(table1_config(train, out, N, 0, evaluation))
    assert (cell.role, cell.policy, cell.seed) == ("small", "plain", 0)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["config"]["models"]["large"] is None
    assert manifest["config"]["augment"]["policies"] == ["plain"]
    recorded = set(manifest["outputs"])
    expected = {
        layout.CORPUS,
        layout.augmented(cell),
        layout.training(cell),
        layout.evaluation(cell, 1),
        layout.untrained("small"),
    }
    assert recorded == expected
    assert {p.name for p in out.iterdir()} == {
        "run.json",
        "corpus",
        "augment",
        "train",
        "eval",
        "report",
    }
    # plain: each original once, nothing dropped
    texts = [row["text"] for _, row in iter_jsonl(out / layout.augmented(cell))]
    assert texts == [r.text for r in read_corpus(out / layout.CORPUS_FILE)]
    assert (out / layout.checkpoint(cell, 1) / "adapter_config.json").is_file()

    # every person is evaluated: the result is the evaluation folder's, over every question
    questions = read_qa(out / layout.QA_FILE)
    assert len(questions) == 5 * N
    evaluated = out / layout.evaluation(cell, 1)
    assert result.scores == read_eval(evaluated).scores
    predictions = [row for _, row in iter_jsonl(evaluated / "predictions.jsonl")]
    assert result.scores == aggregate(predictions)
    assert result.scores["overall"].n == result.baseline.scores["overall"].n == 5 * N
    assert result.baseline.scores == read_eval(out / layout.untrained("small")).scores


def test_table1_report_has_the_untrained_row_and_figure_1_and_no_scores(finished):
    out, _ = finished
    report = json.loads((out / "report" / "report.json").read_text())
    assert [row["policy"] for row in report["rows"]] == ["untrained", "plain"]
    assert report["figures"]["top_rank_categories"] is None
    assert set(report["figures"]["distance_from_name"]) == {
        "date",
        "city",
        "university",
        "major",
        "company",
    }
    assert (out / "report" / "fig1.png").stat().st_size > 0
    assert not (out / "report" / "fig2.png").exists() and not (out / "report" / "fig3.png").exists()
    assert "Figures 2-3 are not drawn" in (out / "report" / "report.md").read_text()
    # a plain run scores nothing and analyses nothing
    assert not (out / "scores").exists() and not (out / layout.ANALYSIS_FILE).exists()
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert stages["attention"]["summary"] == "no policy ranks tokens: nothing to score"
    assert stages["analysis"]["summary"] == "no models.large: no Figures 2-3"


@pytest.mark.parametrize(
    ("changed", "redone"),
    [
        ({}, set()),
        ({"max_new_tokens": 3}, {"eval"}),
        ({"lr": 2e-3}, {"train", "eval"}),
    ],
)
def test_a_rerun_does_nothing_and_a_changed_option_redoes_what_it_reaches(
    tmp_path, finished, model, changed, redone
):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    before = mtimes(out)
    train, evaluation = options(model, **changed)
    run_table1(train, out, N, 0, evaluation, progress=False)
    after = mtimes(out)
    touched = {Path(rel).parts[0] for rel in after.keys() | before.keys()
               if before.get(rel) != after.get(rel)}  # fmt: skip
    assert touched == redone
    if "lr" in changed:  # another grid cell: its own training run, the first one kept
        assert (out / "train" / "small" / "plain_s0_lr0.002" / "epoch-1").is_dir()


def test_cli_table1_prints_both_tables_and_the_report(tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["table1", "--model", model, "--out", "t1", "--n", str(N), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output and f"{N} people, 1 epochs" in result.output
    assert str(Path("t1", "report", "report.md")) in result.output
    assert (tmp_path / "t1" / "report" / "fig1.png").is_file()


def test_a_ranking_policy_without_a_large_model_is_one_config_error(model):
    from elusive.experiment.config import ConfigError

    config = table1_config(TrainConfig(model=model), "out")
    config.augment.policies = ["plain", "contrast"]
    with pytest.raises(ConfigError, match=r"models.large: unset, and policy contrast ranks"):
        config.validate()
    config.augment.policies = ["plain"]
    config.models.trained = ["small", "large"]
    with pytest.raises(ConfigError, match=r"models.trained: names large, and models.large is"):
        config.validate()
