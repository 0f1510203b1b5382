"""The run's summary (`elusive.experiment.summary`) on its own: a hand-built run folder gives the
settings, means and spreads worked out here by hand; on a finished pipeline folder, the summary is
what the report shows, and rendering it again needs no model."""

from __future__ import annotations

import json
import statistics

import pytest

from elusive.experiment.config import RunConfig, load_config
from elusive.experiment.runs import Cell, Run
from elusive.experiment.summary import gather
from elusive.io import atomic_write_text, write_jsonl
from test_pipeline import SMALL_GRID, finished, tiny_pair, write_config  # noqa: F401

PEOPLE = {"validation": ["p0", "p1"], "test": ["p2", "p3"]}
FIELDS = ("city", "company")


def f1_of(policy: str, lr: float, seed: int, person: str, field: str) -> float:
    """A made-up F1 per answer: `none` does best at lr 1e-2, `random` at 1e-3 (on validation
    as on test), seeds and people differ."""
    best = {"none": 1e-2, "random": 1e-3}.get(policy)
    base = 0.6 if lr == best else 0.2
    return round(base + 0.1 * seed + 0.05 * int(person[1:]) + (0.1 if field == "city" else 0), 6)


def answers(policy: str, lr: float | None, seed: int) -> list[dict]:
    rows = []
    for person in (*PEOPLE["validation"], *PEOPLE["test"]):
        for field in FIELDS:
            f1 = f1_of(policy, lr, seed, person, field)
            rows.append({"source_id": person, "field": field, "f1": f1, "em": float(f1 > 0.7)})
    return rows


@pytest.fixture
def hand_built(tmp_path) -> Run:
    """A run folder of two policies x two learning rates x two seeds, one epoch, evaluated
    by made-up answers; a user corpus (no biographies: no figures, no analysis)."""
    config = RunConfig()
    config.corpus.bios, config.corpus.path = None, str(tmp_path / "texts.jsonl")
    config.seeds = [0, 1]
    config.augment.policies, config.augment.alpha = ["none", "random"], [0.5]
    config.train.lr, config.train.epochs = [1e-3, 1e-2], [1]
    run = Run(config, tmp_path / "run")
    atomic_write_text(run.path("corpus", "split.json"), json.dumps(PEOPLE))
    write_jsonl(run.path("eval", "small", "untrained", "predictions.jsonl"), answers("-", 0, 0))
    for policy in ("none", "random"):
        alpha = None if policy == "none" else 0.5
        for lr in config.train.lr:
            for seed in config.seeds:
                cell = Cell("small", policy, alpha, None, lr, seed)
                rows = answers(policy, lr, seed)
                write_jsonl(run.path("eval", f"{cell.train_tag}_e1", "predictions.jsonl"), rows)
    return run


def test_the_summary_of_a_hand_built_folder_against_a_loop(hand_built, monkeypatch):
    import elusive.models

    def no_model(*args, **kwargs):
        raise AssertionError("the summary loaded a model")

    monkeypatch.setattr(elusive.models, "load_model", no_model)
    monkeypatch.setattr(elusive.models, "load_tokenizer", no_model)
    summary = gather(hand_built)
    selection = summary.selection
    assert summary.bios is None and summary.loss == {}  # no biographies, no training logs
    assert selection.unit == ("text", "texts") and selection.select_metric == "f1"
    untrained, *trained = selection.rows
    assert [r.policy for r in selection.rows] == ["untrained", "none", "random"]
    assert (untrained.lr, untrained.epochs, untrained.seeds) == (None, 0, [])
    assert untrained.test["company"]["f1_std"] is None  # one evaluation: no spread

    def mean_f1(policy, lr, seed, subset, fields):
        values = [f1_of(policy, lr, seed, p, f) for p in PEOPLE[subset] for f in fields]
        return sum(values) / len(values)

    for row in trained:
        # chosen on validation F1 of company (select_on's field that the corpus has)
        scores = {}
        for lr in (1e-3, 1e-2):
            per_seed = [mean_f1(row.policy, lr, s, "validation", ["company"]) for s in [0, 1]]
            scores[lr] = statistics.mean(per_seed)
        assert row.lr == max(scores, key=scores.get) == {"none": 1e-2, "random": 1e-3}[row.policy]
        assert row.validation_score == pytest.approx(scores[row.lr])
        assert row.seeds == [0, 1] and row.epochs == 1
        for field, fields in (("company", ["company"]), ("overall", list(FIELDS))):
            per_seed = [mean_f1(row.policy, row.lr, s, "test", fields) for s in [0, 1]]
            assert row.test[field]["f1"] == pytest.approx(statistics.mean(per_seed))
            assert row.test[field]["f1_std"] == pytest.approx(statistics.stdev(per_seed))
            assert row.test[field]["n"] == 2 * len(fields)
    # the study pairs random with none at their chosen settings, unit by unit
    study = selection.study["small"]
    assert study["baseline"] == "none" and list(study["differences"]) == ["random"]
    differences = [
        f1_of("random", 1e-3, s, p, "company") - f1_of("none", 1e-2, s, p, "company")
        for s in [0, 1]
        for p in PEOPLE["test"]
    ]
    got = study["differences"]["random"]["company"]["f1"]["mean"]
    assert got == pytest.approx(statistics.mean(differences))


def test_the_report_is_the_summary_rendered_without_a_model(
    tmp_path,
    finished,  # noqa: F811
    monkeypatch,
):
    """On a finished pipeline folder: the summary is report.json; rendering it again, with
    every model unloadable, writes report.md and report.json byte for byte as the run did."""
    import elusive.models
    import elusive.scoring.attention
    from elusive.experiment.report import render

    config = load_config(finished / "c.yaml")
    run = Run(config, finished / "run")
    report = run.path("report")
    summary = gather(run)
    assert summary.to_json() == json.loads((report / "report.json").read_text())
    assert summary.bios is not None and summary.bios.analysis_texts == 4
    assert set(summary.bios.top_rank_categories) == {"large", "small", "large - small"}

    def no_model(*args, **kwargs):
        raise AssertionError("the report loaded a model")

    monkeypatch.setattr(elusive.models, "load_model", no_model)
    monkeypatch.setattr(elusive.scoring.attention, "query_attentions", no_model)
    out = tmp_path / "again"
    written = render(gather(run), out)
    assert {p.name for p in written} == {p.name for p in report.iterdir()} - {"analysis.json"}
    for name in ("report.md", "report.json"):
        assert (out / name).read_bytes() == (report / name).read_bytes(), name
