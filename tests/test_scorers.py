"""`elusive.scoring.scorers`: where each scorer ranks a text's spans, checked against a slow
loop."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus.records import Record, record_to_json
from elusive.io import write_jsonl
from elusive.scoring.scorers import (
    ScorerError,
    percentiles,
    query_row_percentiles,
    scorer_table,
    scorers_of,
    span_percentiles,
    value_queries,
)
from elusive.scoring.scores import TextScores, authors_rank, rank_desc, read_scores, write_scores

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


def test_query_row_ranks_what_each_query_sees_as_a_slow_loop_does():
    records, rows = texts(6)
    # the city (token 4) has one token before it: " in" (token 3); the name none before it
    assert value_queries(records[0], rows[0]) == {"city": 3}
    rng = random.Random(5)
    contrasts = {r.id: {"city": [rng.random() for _ in range(4)]} for r in records}
    got = query_row_percentiles(records, rows, contrasts)
    assert set(got) == {"name"}  # the city is after its own query: that row cannot see it
    for value, record in zip(got["name"], records, strict=True):
        row = contrasts[record.id]["city"]
        ranked = sorted(range(4), key=lambda t: (-row[t], t))  # the 4 tokens the row sees
        share = {t: 100 * (1 - r / 3) for r, t in enumerate(ranked)}
        assert value == pytest.approx((share[0] + share[1]) / 2)
    table = scorer_table(records, rows, ["shuffled"], query_contrasts=contrasts, n_boot=500)
    assert list(table) == ["shuffled", "query-row"]
    assert table["query-row"]["name"]["n"] == 6 and "city" not in table["query-row"]


def test_the_authors_row_ranks_as_their_argsort_does():
    records, rows = texts(8)
    # the authors' contrast: zero but where bf16 rounding differs (here token 2 and 5)
    authors = [
        dataclasses.replace(r, contrast=[0.0, 0.0, 1e-4, 0.0, 0.0, -1e-4, 0.0]) for r in rows
    ]
    table = scorer_table(records, rows, ["position"], authors=authors, n_boot=500)
    # their order: np.argsort(...)[::-1] over all 7 tokens, token 2 first and 5 last; the
    # zeros between in numpy's order of ties, which its SIMD sorts make depend on the CPU
    ranks = authors_rank(authors[0].contrast)
    assert ranks == list(np.argsort(np.argsort(np.float32(authors[0].contrast))[::-1]))
    assert ranks[2] == 0 and ranks[5] == 6
    among = sorted(range(6), key=lambda t: ranks[t])  # the 6 eligible tokens, in their order
    share = {t: 100 * (1 - r / 5) for r, t in enumerate(among)}
    assert table["authors"]["name"]["mean"] == pytest.approx((share[0] + share[1]) / 2)
    assert table["authors"]["city"]["mean"] == pytest.approx(share[4])


def test_the_command_adds_the_authors_and_query_row_scorers_from_the_models(tmp_path):
    from elusive.corpus.bios import BiosConfig, generate_bios
    from elusive.models import load_model
    from elusive.scoring.attention import AttentionConfig, query_attention, score_corpus
    from elusive.tiny import make_tiny_model

    small = make_tiny_model(tmp_path / "small", arch="llama", seed=0)
    large = make_tiny_model(tmp_path / "large", arch="llama", seed=1)
    records = generate_bios(BiosConfig(n=4, seed=0))[0]
    write_jsonl(tmp_path / "c.jsonl", (record_to_json(r) for r in records))
    specs = {"large": str(large), "small": str(small)}
    for folder, score in (("s", "received"), ("a", "authors")):
        config = AttentionConfig(cache_dir=tmp_path / "cache", score=score)
        score_corpus(specs, tmp_path / "c.jsonl", tmp_path / folder, config, progress=False)
    args = ["scorers", "--scores", str(tmp_path / "s"), "--authors", str(tmp_path / "a")]
    result = runner.invoke(app, [*args, "--query-rows", "--out", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "t.json").read_text())
    assert list(table) == ["contrast", "large", "small", "position", "shuffled", "query-row",
                           "authors"]  # fmt: skip
    assert table["query-row"]["name"]["n"] == 4
    # the name's value for the first person, from each field's query row computed here
    rows = read_scores(tmp_path / "s")
    record, row = records[0], rows[0]
    models = {role: load_model(spec)[0] for role, spec in specs.items()}
    tokenizer = load_model(small)[1]
    shares = []
    for q in value_queries(record, row).values():
        weights = {
            role: query_attention(model, tokenizer, record.text, query_token=q).weights
            for role, model in models.items()
        }
        contrast = [a - b for a, b in zip(weights["large"], weights["small"], strict=True)][: q + 1]
        ranked = percentiles(contrast, row.eligible[: q + 1])
        lo, hi = record.spans["name"]
        inside = [p for p, (s, e) in zip(ranked, row.offsets, strict=False) if p is not None
                  and s < hi and e > lo]  # fmt: skip
        if inside:
            shares.append(sum(inside) / len(inside))
    got = query_row_percentiles([record], [row], rows_at(records[:1], rows[:1], specs))["name"]
    assert got == pytest.approx([sum(shares) / len(shares)], abs=1e-9)
    bad = runner.invoke(app, ["scorers", "--scores", str(tmp_path / "s"), "--authors",
                              str(tmp_path / "s")])  # fmt: skip
    assert bad.exit_code == 2 and "policy authors ranks by the authors' scorer" in bad.output


def rows_at(records, rows, specs):
    from elusive.scoring.attention import AttentionConfig
    from elusive.scoring.scorers import query_rows

    return query_rows(records, rows, specs, AttentionConfig())
