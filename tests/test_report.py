"""The report's rendering (`elusive.experiment.report`) and the numbers behind its figures: Figure
1's token distances of the fields from the name, the drops by span, the loss curves."""

from __future__ import annotations

from elusive.corpus.bios import FIELDS, BiosConfig, generate_bios
from elusive.experiment.figures import plot_accuracy_vs_distance
from elusive.experiment.summary import field_token_distances
from elusive.metrics import FieldScore
from elusive.models import load_model


def test_field_distances_by_hand_and_in_field_order(tiny_model_dir):
    _, tok = load_model(tiny_model_dir)
    records = generate_bios(BiosConfig(n=6, seed=2))[0]
    distances = field_token_distances(records, tok)
    assert list(distances) == list(FIELDS) and all(len(d) == 6 for d in distances.values())
    for i, record in enumerate(records):
        for f in FIELDS:
            # Reference: tokenize the words between the name and the value on their own (the
            # space before the value belongs to its first token); the value token is one more.
            between = record.text[record.spans["name"][1] : record.spans[f][0] - 1]
            n_between = len(tok(between, add_special_tokens=False)["input_ids"])
            assert distances[f][i] == n_between + 1
        row = [distances[f][i] for f in FIELDS]
        assert row == sorted(row) and len(set(row)) == len(row)  # the paper's order: increasing


def test_figure1_png(tmp_path):
    scores = {f: FieldScore(1.0 - i / 5, 1.0 - i / 6, 10) for i, f in enumerate(FIELDS)}
    out = plot_accuracy_vs_distance(
        {f: [5 * i + 4, 5 * i + 6] for i, f in enumerate(FIELDS)}, {"tiny": scores},
        tmp_path / "fig" / "figure1.png",
    )  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["figure1.png"]  # no temp file left


def test_figures_colour_every_token_category_in_the_report_order():
    from elusive.experiment.analysis import CATEGORIES
    from elusive.experiment.figures import COLOURS

    assert tuple(COLOURS) == CATEGORIES


def test_drop_by_span_against_a_loop():
    import math
    import re

    from elusive.augment.dropout import AugmentConfig
    from elusive.experiment.summary import drop_by_span
    from elusive.scoring.scores import TextScores

    records, _ = generate_bios(BiosConfig(n=4, seed=2))
    rows = []
    for record in records:  # words and punctuation marks as tokens
        offsets = [m.span() for m in re.finditer(r"\w+|[^\w\s]", record.text)]
        tokens = [record.text[a:b] for a, b in offsets]
        eligible = [t[0].isalnum() for t in tokens]
        scores = {"large": [0.0] * len(tokens), "small": [0.0] * len(tokens)}
        rows.append(TextScores(record.id, record.sha256, tokens, offsets, eligible, scores))
    alpha, beta = 0.5, 0.2
    config = AugmentConfig("position", alpha, beta, protect=("name",))
    got = drop_by_span(records, rows, [config])

    sums: dict[str, list[float]] = {}
    for record, row in zip(records, rows, strict=True):
        rank = 0
        for (a, b), eligible in zip(row.offsets, row.eligible, strict=True):
            if not eligible:  # punctuation: never dropped, not counted
                continue
            where = "other"
            for span, (lo, hi) in record.spans.items():
                if a < hi and b > lo:
                    where = span
            if where == "name":
                p = 0.0  # protected: out of the ranking
            else:
                p, rank = alpha * (1 - math.exp(-beta * rank)), rank + 1
            sums.setdefault(where, []).append(p)
    expected = {k: sum(v) / len(v) for k, v in sums.items()}
    assert got.keys() == expected.keys() and got["name"] == 0.0
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-12), key
    assert got["company"] > got["date"] > 0  # later tokens are dropped more under position
    none = drop_by_span(records, rows, [AugmentConfig("none")])
    assert set(none.values()) == {0.0}


def test_a_probe_that_one_field_lacks_is_shown_as_a_dash():
    from elusive.experiment.report import markdown_tables
    from elusive.experiment.summary import UNITS, Row, Selection

    score = {"n": 4, "em": 0.5, "em_std": 0.0, "f1": 0.6, "f1_std": 0.1}
    probed = {**score, "choice": 0.25, "choice_std": 0.0}
    test = {"city": score, "date": probed, "overall": probed}
    row = Row("small", "tiny", "none", None, None, 1e-3, 2, [0], 0.5, test)
    summary = Selection(UNITS["bios"], ["city", "date"], "em", [row], {}, {})
    lines = markdown_tables(summary).splitlines()
    probe_row = next(line for line in lines if line.startswith("| tiny") and "0.25" in line)
    assert probe_row.endswith("| - | 0.25 |")


def test_the_note_says_whether_settings_were_chosen_or_there_was_one_per_policy():
    from elusive.experiment.report import markdown_tables
    from elusive.experiment.summary import UNITS, Row, Selection

    test = {"overall": {"n": 4, "em": 0.5, "em_std": 0.0, "f1": 0.75, "f1_std": 0.0}}
    one = Row("small", "tiny", "none", None, None, 1e-3, 2, [0], 0.5, test)
    picked = Row("small", "tiny", "random", 0.5, None, 1e-3, 2, [0], 0.5, test, settings=3)
    alone = markdown_tables(Selection(UNITS["bios"], [], "f1", [one], {}, {}))
    assert "4 test questions; one setting per policy (nothing chosen on validation);" in alone
    both = markdown_tables(Selection(UNITS["bios"], [], "f1", [one, picked], {}, {}))
    assert "4 test questions; settings chosen per policy on validation F1 of overall;" in both


def test_loss_curves_draw_every_policy_and_seed_from_the_training_logs(
    tiny_model_dir, tmp_path, monkeypatch
):
    """After tiny training runs laid out as a run folder: the summary's loss points, one curve
    per (policy, seed) of the chosen settings with the steps of each run's log.json (the
    untrained reference row, which trained nothing, left out), drawn as loss-small.png."""
    import json

    import elusive.experiment.report as report_module
    from elusive.experiment.config import RunConfig
    from elusive.experiment.report import loss_figures
    from elusive.experiment.runs import Cell, Run
    from elusive.experiment.summary import Row, RunSummary, Selection, loss_points
    from elusive.training.train import TrainConfig, train

    run = Run(RunConfig(), tmp_path / "run")
    records = generate_bios(BiosConfig(n=8, seed=1))[0]
    rows = [
        Row("small", "none", "none", None, None, 1e-2, 2, [0, 1], 0.0, {}),
        Row("small", "none", "random", 0.5, None, 1e-2, 2, [0, 1], 0.0, {}),
    ]
    logs = {}
    for row in rows:
        for seed in row.seeds:
            cell = Cell(row.role, row.policy, row.alpha, row.beta, row.lr, seed)
            config = TrainConfig(
                model=str(tiny_model_dir), epochs=2, lr=1e-2, batch_size=4, seed=seed,
                mixed_precision="no",
            )  # fmt: skip
            train(config, records, run.path("train", cell.train_tag), progress=False)
            log = json.loads(run.path("train", cell.train_tag, "log.json").read_text())
            logs[f"{row.policy} seed {seed}"] = [(s["step"], s["loss"]) for s in log["steps"]]
    rows.append(Row("small", "none", "untrained", None, None, None, 0, [0, 1], 0.0, {}))
    loss = loss_points(run, rows)
    assert loss == {"small": logs} and len(logs) == 4 and all(len(p) == 4 for p in logs.values())

    drawn = []
    plot = report_module.plot_loss_curves
    monkeypatch.setattr(
        report_module,
        "plot_loss_curves",
        lambda curves, title, out: drawn.append(curves) or plot(curves, title, out),
    )
    models = {"large": run.config.models.large, "small": run.config.models.small}
    selection = Selection(("person", "people"), [], "f1", rows, {}, {})
    summary = RunSummary(run.root, models, [], selection, loss, None)
    written, lines = loss_figures(summary, run.path("report"))
    assert written == [run.path("report", "loss-small.png")]
    assert (
        written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[0].stat().st_size > 10_000
    )
    assert drawn == [logs]
    assert lines == [
        f"- [loss-small.png](loss-small.png): training loss per optimizer step of "
        f"{run.config.models.small} (small), one line per policy (at its chosen setting) and seed."
    ]


def test_the_untrained_row_comes_first_without_a_spread():
    from elusive.experiment.report import markdown_tables
    from elusive.experiment.summary import UNITS, Row, Selection

    test = {"overall": {"n": 4, "em": 0.25, "em_std": None, "f1": 0.5, "f1_std": None}}
    untrained = Row("small", "tiny", "untrained", None, None, None, 0, [], 0.5, test)
    test = {"overall": {"n": 4, "em": 0.5, "em_std": 0.1, "f1": 0.75, "f1_std": 0.0}}
    trained = Row("small", "tiny", "none", None, None, 1e-3, 2, [0, 1], 0.75, test)
    summary = Selection(UNITS["bios"], [], "f1", [untrained, trained], {}, {})
    text = markdown_tables(summary)
    assert "mean ± std over seeds [0, 1]. untrained: the base model before any training" in text
    lines = [line for line in text.splitlines() if line.startswith("| tiny")]
    assert lines[:2] == [
        "| tiny | untrained | - | - | - | 0 | 0.25 | 0.50 |",
        "| tiny | none | - | - | 0.001 | 2 | 0.50 ± 0.10 | 0.75 |",
    ]
