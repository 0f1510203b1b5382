"""`elusive.scorers`: where each scorer ranks a text's spans, checked against a slow loop."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus import Record, record_to_json
from elusive.io import write_jsonl
from elusive.scorers import ScorerError, percentiles, scorer_table, scorers_of, span_percentiles
from elusive.scores import TextScores, rank_desc, write_scores

runner = CliRunner()


def texts(n: int, seed: int = 0) -> tuple[list[Record], list[TextScores]]:
    """`n` texts "Name Surname lives in City now ." whose contrast ranks the name's two tokens
    first, the city third, the rest after; "." is not eligible."""
    rng = random.Random(seed)
    records, rows = [], []
    for k in range(n):
        words = ["Ann", " Lee", " lives", " in", f" Town{k}", " now", " ."]
        text = "".join(words)
        offsets, at = [], 0
        for w in words:
            offsets.append((at, at + len(w)))
            at += len(w)
        spans = {"name": (0, 7), "city": (offsets[4][0] + 1, offsets[4][1])}
        record = Record(f"t{k}", text, spans=spans)
        contrast = [0.9, 0.8, 0.1, 0.2, 0.7, 0.3, 0.0]
        large = [rng.random() for _ in words]
        small = [a - c for a, c in zip(large, contrast, strict=True)]
        eligible = [True] * 6 + [False]
        rows.append(
            TextScores(
                record.id,
                record.sha256,
                words,
                offsets,
                eligible,
                {"large": large, "small": small},
                contrast,
                rank_desc(contrast, eligible),
            )
        )
        records.append(record)
    return records, rows


def test_percentiles_put_the_first_at_100_and_the_last_at_0():
    assert percentiles([0.1, 0.5, 0.3, 0.9], [True, True, True, False]) == [0.0, 100.0, 50.0, None]
    assert percentiles([0.4], [True]) == [100.0]


def test_each_scorer_places_the_spans_as_a_slow_loop_does():
    records, rows = texts(40)
    assert scorers_of(rows) == ["contrast", "large", "small", "position", "shuffled"]
    table = scorer_table(records, rows, seed=3, n_boot=2000)
    # contrast ranks the name's tokens 1st and 2nd of 6, the city 3rd: 100, 80 -> 90; 60
    assert table["contrast"]["name"]["mean"] == pytest.approx(90.0)
    assert table["contrast"]["city"]["mean"] == pytest.approx(60.0)
    assert table["contrast"]["name"]["low"] == table["contrast"]["name"]["high"] == 90.0
    # position: the name's tokens are the first two (100, 80), the city the 5th of 6 (20)
    assert table["position"]["name"]["mean"] == pytest.approx(90.0)
    assert table["position"]["city"]["mean"] == pytest.approx(20.0)
    assert table["large"]["city"]["n"] == 40
    for scorer in ("large", "shuffled"):
        for kind in ("name", "city"):
            values = []
            for record, row in zip(records, rows, strict=True):
                if scorer == "large":
                    value = row.scores["large"]
                else:
                    order = list(range(len(row.tokens)))
                    random.Random(f"3:{row.id}").shuffle(order)
                    value = order
                ranked = sorted(range(6), key=lambda t: (-value[t], t))  # eligible: first 6
                share = {t: 100 * (1 - r / 5) for r, t in enumerate(ranked)}
                lo, hi = record.spans[kind]
                inside = [
                    share[t] for t in range(6) if row.offsets[t][0] < hi > lo < row.offsets[t][1]
                ]
                values.append(np.mean(inside))
            cell = table[scorer][kind]
            assert cell["mean"] == pytest.approx(np.mean(values))
            assert cell["low"] <= cell["mean"] <= cell["high"]
    # shuffled is chance: about 50 for every span, its CI holding 50
    assert 35 < table["shuffled"]["name"]["mean"] < 65
    assert table["shuffled"]["name"]["low"] < 50 < table["shuffled"]["name"]["high"]
    assert span_percentiles(records, rows, "shuffled", 3) == span_percentiles(
        records, rows, "shuffled", 3
    )  # deterministic by seed


def test_the_command_prints_the_table_and_refuses_texts_without_spans(tmp_path):
    records, rows = texts(12)
    manifest = {"models": {}, "corpus": "c.jsonl", "prefix": "", "align": "tokens",
                "trained": "small"}  # fmt: skip
    write_scores(tmp_path / "scores", manifest, rows)
    write_jsonl(tmp_path / "scores" / "c.jsonl", (record_to_json(r) for r in records))
    out = tmp_path / "table.json"
    result = runner.invoke(
        app, ["scorers", "--scores", str(tmp_path / "scores"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| scorer | name | city |\n|---|---|---|\n| contrast | 90.0")
    assert json.loads(out.read_text())["position"]["city"]["mean"] == pytest.approx(20.0)

    plain = [Record(r.id, r.text) for r in records]
    write_jsonl(tmp_path / "plain.jsonl", (record_to_json(r) for r in plain))
    args = [
        "scorers",
        "--scores",
        str(tmp_path / "scores"),
        "--corpus",
        str(tmp_path / "plain.jsonl"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "have no spans to place" in result.output
    one = [dataclasses.replace(r, scores={"model": r.scores["large"]}, contrast=None) for r in rows]
    assert scorers_of(one) == ["model", "position", "shuffled"]
    with pytest.raises(ScorerError, match="no contrast"):
        scorer_table(records, one, ["contrast"])
