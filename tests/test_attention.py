"""The memory-bounded attention scorer against a naive reference, on tiny random models."""

import dataclasses
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from elusive.augment.dropout import AugmentConfig, AugmentError, augment_file
from elusive.cli import app
from elusive.corpus.bios import BiosConfig, generate_bios
from elusive.corpus.records import Record, record_to_json
from elusive.io import DroppedDataWarning, write_jsonl
from elusive.models import load_model
from elusive.scoring import attention, kernels
from elusive.scoring.attention import (
    AttentionConfig,
    AttentionError,
    attention_received,
    attention_row,
    authors_scores,
    query_attention,
    score_corpus,
    score_records,
    tokenize,
)
from elusive.scoring.scores import rank_desc, read_manifest, read_scores
from elusive.tiny import make_tiny_model

TEXT = (
    "Ava Mia Smith was born on May 2, 1970. She spent her early years in Boston, MA. "
    "She received mentorship and guidance from faculty members at Sorbonne University."
)


def naive_maps(model, ids, mask=None):
    """Every layer's attention maps at once (eager, output_attentions): [layers, b, h, T, T]."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            mask = None if mask is None else mask.to(model.device)
            out = model(input_ids=ids.to(model.device), attention_mask=mask, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    return torch.stack(out.attentions).cpu()


def naive_scores(model, ids):
    """The slow reference for one unpadded sequence: mean over layers and heads of the column
    sums, divided by the number of queries that see each key. [T]"""
    a = naive_maps(model, ids).mean(dim=(0, 2))[0]  # [T, T]
    length = ids.shape[1]
    return a.sum(dim=0) / (length - torch.arange(length))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    """A second tiny llama: same tokenizer as the llama fixture, other weights (the 'large')."""
    return make_tiny_model(tmp_path_factory.mktemp("twin"), arch="llama", seed=1)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return {
        arch: make_tiny_model(tmp_path_factory.mktemp(f"dirs-{arch}"), arch=arch)
        for arch in ("llama", "qwen2")
    }


def ids_of(tok, text):
    return torch.tensor([tok(text)["input_ids"]])


def test_blockwise_scores_match_naive_reference(tiny, monkeypatch):
    model, tok = tiny
    ids = ids_of(tok, TEXT)
    expected = naive_scores(model, ids)
    small = 4 * ids.shape[1] * 3  # 3-query blocks
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", {"cpu": small, "cuda": small})
    got = attention_received(model, ids)[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "sdpa"  # restored after scoring


def test_sliding_window_layers_match_naive_reference(sliding_window_model):
    model = sliding_window_model
    ids = torch.randint(0, 64, (1, 17))
    torch.testing.assert_close(
        attention_received(model, ids)[0], naive_scores(model, ids), atol=1e-5, rtol=0
    )


def test_scores_are_not_the_authors_row_sums(tiny):
    """Summing rows instead of columns gives exactly 1/(j+1) for any model: a useless score."""
    model, tok = tiny
    ids = ids_of(tok, TEXT)
    length = ids.shape[1]
    trap = 1.0 / (torch.arange(length) + 1)
    rows = naive_maps(model, ids).mean(dim=(0, 2))[0].sum(dim=1) / (torch.arange(length) + 1)
    torch.testing.assert_close(rows, trap, atol=1e-6, rtol=0)  # the mistake, reproduced
    ours = attention_received(model, ids)[0]
    assert (ours - trap).abs().max() > 1e-2


def authors_reference(model, ids):
    """Their `save_attention.py` line by line, on bf16-rounded maps: [T] float32."""
    maps = naive_maps(model, ids).to(torch.bfloat16)  # [layers, 1, heads, T, T]
    avg = maps.float().mean(dim=(0, 1, 2)).to(torch.bfloat16)  # [T, T]
    avg = torch.tril(avg).float().sum(dim=-1).to(torch.bfloat16)
    steps = torch.arange(1, avg.size(-1) + 1).to(avg)
    return (avg.float() / steps.float()).to(torch.bfloat16).float()


def test_the_authors_scorer_replayed_is_1_over_i_plus_1_up_to_bf16_rounding(tiny):
    model, tok = tiny
    ids = ids_of(tok, TEXT)
    length = ids.shape[1]
    got = authors_scores(model, ids)[0]
    torch.testing.assert_close(got, authors_reference(model, ids), atol=0, rtol=0)
    position = 1.0 / (torch.arange(length) + 1)
    assert ((got / position - 1).abs() <= 2**-7).all()  # bf16: 8 bits, two roundings
    assert (got != position).any()  # rounded, not exact
    assert (attention_received(model, ids)[0] - position).abs().max() > 1e-2  # ours differs
    # padded: each sequence's real tokens as alone, 0 at padding
    padded = torch.cat([ids, ids[:, :1].repeat(1, 4)], dim=1)
    mask = torch.ones_like(padded)
    mask[0, length:] = 0
    both = authors_scores(
        model, torch.cat([padded, padded]), torch.cat([mask, torch.ones_like(mask)])
    )
    torch.testing.assert_close(both[0, :length], got, atol=2**-8, rtol=0)
    assert (both[0, length:] == 0).all() and (both[1] > 0).all()


def test_a_corpus_scored_by_the_authors_scorer_says_so(tiny_dirs, twin_dir, tmp_path):
    records = _records(3)
    write_jsonl(tmp_path / "c.jsonl", (record_to_json(r) for r in records))
    specs = {"large": str(twin_dir), "small": str(tiny_dirs["llama"])}
    config = AttentionConfig(cache_dir=tmp_path / "cache", score="authors")
    rows = score_corpus(specs, tmp_path / "c.jsonl", tmp_path / "s", config, progress=False)
    assert read_manifest(tmp_path / "s")["score"] == "authors"
    for row in rows:
        n = len(row.tokens)
        position = [1.0 / (i + 1) for i in range(n)]
        assert row.scores["small"] == pytest.approx(position, rel=2**-7)
        assert max(abs(c) for c in row.contrast) < 2**-7  # both models: 1/(i+1), rounded
    received = score_corpus(
        specs, tmp_path / "c.jsonl", tmp_path / "r", dataclasses.replace(config, score="received"),
        progress=False,
    )  # fmt: skip
    assert received[0].scores["small"] != rows[0].scores["small"]  # cached apart
    assert "score" not in read_manifest(tmp_path / "r")
    with pytest.raises(AttentionError, match="score must be one of received, authors"):
        AttentionConfig(score="rows").validate()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_one_by_one(tiny, side):
    model, tok = tiny
    texts = [TEXT, "He worked for Google.", "Born in Paris, she studied Physics at MIT."]
    seqs = [tok(t)["input_ids"] for t in texts]
    length = max(map(len, seqs))
    ids = torch.full((len(seqs), length), 7)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq)
        mask[row, span] = 1
    batched = attention_received(model, ids, mask)
    for row, seq in enumerate(seqs):
        alone = attention_received(model, torch.tensor([seq]))[0]
        torch.testing.assert_close(batched[row][mask[row].bool()], alone, atol=1e-5, rtol=0)
        assert batched[row][~mask[row].bool()].abs().sum() == 0


def test_query_row_matches_naive_and_char_lookup(tiny):
    model, tok = tiny
    ids = ids_of(tok, TEXT)
    query = ids.shape[1] - 5
    expected = naive_maps(model, ids).mean(dim=(0, 2))[0, query]  # [T]
    got = attention_row(model, ids, torch.tensor([query]))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got[query + 1 :].abs().sum() == 0  # causal: nothing after the query

    at = TEXT.index(" at Sorbonne") + 1  # the "preposition token" before the value
    by_char = query_attention(model, tok, TEXT, query_char=at)
    assert by_char.tokens[by_char.query].strip() == "at"
    by_token = query_attention(model, tok, TEXT, query_token=by_char.query)
    assert by_token.weights == by_char.weights
    assert abs(sum(by_char.weights) - 1) < 1e-4  # a softmax row: BOS (if any) included
    with pytest.raises(AttentionError, match="exactly one"):
        query_attention(model, tok, TEXT)


def test_query_rows_batched_and_cached_match_one_by_one(tiny_dirs, tmp_path, monkeypatch):
    """`query_attentions` (the report's Figure 2-3 path): right-padded batches and the cache
    give each text's `query_attention`; a second call computes nothing."""
    spec = str(tiny_dirs["llama"])
    model, tok = load_model(spec)
    texts = [r.text for r in _records(5)]
    queries = [3, 9, 5, 12, 7]
    config = AttentionConfig(cache_dir=tmp_path, batch_size=2, chunk_size=3, prefix="Text: ")
    rows = attention.query_attentions(spec, texts, queries, config, progress=False)
    for text, query, row in zip(texts, queries, rows, strict=True):
        alone = query_attention(model, tok, text, query_token=query, prefix="Text: ")
        assert (row.tokens, row.query, row.eligible) == (alone.tokens, query, alone.eligible)
        torch.testing.assert_close(row.weights, alone.weights, atol=1e-6, rtol=0)
    calls = _count_runs(monkeypatch)
    assert attention.query_attentions(spec, texts, queries, config, progress=False) == rows
    assert calls == []
    with pytest.raises(AttentionError, match="text 1: query_token 999 out of range"):
        attention.query_attentions(spec, texts[:2], [0, 999], config, progress=False)


def test_tokenize_drops_prefix_and_keeps_offsets_in_the_text(tiny):
    _, tok = tiny
    text = "Ava Mia Smith, born 1970."
    plain = tokenize(tok, text)
    prefixed = tokenize(tok, text, prefix="Text: ")
    assert len(prefixed.ids) > len(plain.ids)
    kept = prefixed.kept
    assert "".join(prefixed.tokens[k] for k in kept if not prefixed.special[k]) == text
    for k in kept:
        start, end = prefixed.offsets[k]
        if not prefixed.special[k]:
            assert prefixed.tokens[k] == text[start:end]
    has_bos = prefixed.special[0]
    assert has_bos == (tok.bos_token_id in tok("x")["input_ids"])
    assert sum(prefixed.in_prefix) >= 2  # "Text", ":" are scored but dropped


def test_eligibility():
    assert attention.is_eligible(" Paris", False)
    assert not attention.is_eligible(" ,", False)
    assert not attention.is_eligible("  ", False)
    assert not attention.is_eligible("<bos>", True)


def _records(n=6):
    return generate_bios(BiosConfig(n=n, seed=3))[0]


def _count_runs(monkeypatch, fail_on=None):
    calls = []
    real = attention._run

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "_run", counting)
    return calls


def test_cache_hit_recomputes_nothing_and_interrupted_runs_resume(
    tiny_dirs, twin_dir, tmp_path, monkeypatch
):
    specs = {"large": str(twin_dir), "small": str(tiny_dirs["llama"])}
    config = AttentionConfig(cache_dir=tmp_path, batch_size=2, chunk_size=2)
    records = _records()
    with monkeypatch.context() as m:
        calls = _count_runs(m, fail_on=2)
        with pytest.raises(KeyboardInterrupt):
            score_records(records, specs, config, progress=False)
    calls = _count_runs(monkeypatch)
    first, prints, _ = score_records(records, specs, config, progress=False)
    assert sum(calls) == 2 * len(records) - 2  # the large model's first chunk was kept
    calls.clear()
    again, _, _ = score_records(records, specs, config, progress=False)
    assert calls == []
    assert again == first
    assert prints["large"] != prints["small"]
    other = AttentionConfig(cache_dir=tmp_path, batch_size=2, chunk_size=2, prefix="Text: ")
    score_records(records[:1], specs, other, progress=False)
    assert sum(calls) == 2  # a new prefix is a new key


@pytest.mark.parametrize("prefix", ["", "Text: "])
def test_token_rows_hold_the_tokens_the_scores_hold(tiny_dirs, twin_dir, tmp_path, prefix):
    """What the policies that rank nothing draw from: the trained role's tokens, offsets and
    eligibility exactly as scoring writes them, and no scores."""
    from elusive.scoring.attention import token_rows

    records = _records(3)
    specs = {"large": str(twin_dir), "small": str(tiny_dirs["llama"])}
    config = AttentionConfig(cache_dir=tmp_path, prefix=prefix)
    scored, _, _ = score_records(records, specs, config, progress=False)
    rows = token_rows(records, specs["small"], prefix)
    fields = ("id", "text_sha256", "tokens", "offsets", "eligible")
    for row, reference in zip(rows, scored, strict=True):
        assert [getattr(row, f) for f in fields] == [getattr(reference, f) for f in fields]
        assert row.scores == {} and row.contrast is None


def test_contrast_rows_follow_the_contract(tiny_dirs, twin_dir, tmp_path):
    records = _records(3)
    specs = {"large": str(twin_dir), "small": str(tiny_dirs["llama"])}
    rows, _, _ = score_records(records, specs, AttentionConfig(cache_dir=tmp_path), progress=False)
    model, tok = load_model(tiny_dirs["llama"])
    for record, row in zip(records, rows, strict=True):
        assert row.text_sha256 == record.sha256
        assert row.tokens[0] == "<bos>" and not row.eligible[0] and row.rank[0] == -1
        assert [record.text[s:e] for s, e in row.offsets[1:]] == row.tokens[1:]
        small = attention_received(model, ids_of(tok, record.text))[0]
        torch.testing.assert_close(torch.tensor(row.scores["small"]), small, atol=1e-6, rtol=0)
        diff = [a - b for a, b in zip(row.scores["large"], row.scores["small"], strict=True)]
        assert row.contrast == pytest.approx(diff, abs=1e-6)
        eligible = [k for k, ok in enumerate(row.eligible) if ok]
        assert sorted(row.rank[k] for k in eligible) == list(range(len(eligible)))
        best = min(eligible, key=lambda k: row.rank[k])
        assert row.contrast[best] == max(row.contrast[k] for k in eligible)
        assert not any(row.eligible[k] for k, t in enumerate(row.tokens) if t.strip() in ".,")


def test_mismatched_tokenizers_name_the_first_differing_token(tiny_dirs, tmp_path):
    specs = {"large": str(tiny_dirs["llama"]), "small": str(tiny_dirs["qwen2"])}
    records = _records(2)
    with pytest.raises(
        AttentionError, match=r"'p0'.*token 0: '<bos>' \(large\) vs '\w+' \(small\)"
    ):
        score_records(records, specs, AttentionConfig(cache_dir=tmp_path), progress=False)
    rows, _, _ = score_records(
        records, specs, AttentionConfig(cache_dir=tmp_path, align="chars"), progress=False
    )
    assert rows[0].tokens[0] != "<bos>"  # the trained (small, qwen2) model's tokens
    assert len(rows[0].scores["large"]) == len(rows[0].tokens)


def test_chars_alignment_is_exact_for_identical_tokenizers(tiny_dirs, twin_dir, tmp_path):
    records = _records(2)
    specs = {"large": str(twin_dir), "small": str(tiny_dirs["llama"])}
    by_tokens, _, _ = score_records(
        records, specs, AttentionConfig(cache_dir=tmp_path), progress=False
    )
    config = AttentionConfig(cache_dir=tmp_path, align="chars")
    by_chars, _, _ = score_records(records, specs, config, progress=False)
    for a, b in zip(by_tokens, by_chars, strict=True):
        assert a.scores["small"] == b.scores["small"]
        assert a.scores["large"][1:] == pytest.approx(b.scores["large"][1:], abs=1e-6)
        assert b.scores["large"][0] == 0.0  # BOS covers no character


def test_cli_writes_scores_folder(tiny_dirs, twin_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": TEXT}, {"text": "Hi there."}])
    out = tmp_path / "scores"
    runner = CliRunner()
    args = ["attention", "--corpus", str(corpus), "--out", str(out), "--cache-dir", str(tmp_path)]
    pair = ["--large", str(twin_dir), "--small", str(tiny_dirs["llama"])]
    result = runner.invoke(app, args + pair + ["--prefix", "Text: ", "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["large"]["spec"] == str(twin_dir)
    assert (manifest["prefix"], manifest["align"], manifest["trained"]) == (
        "Text: ",
        "tokens",
        "small",
    )
    rows = read_scores(out)
    assert [r.id for r in rows] == ["a", "line-2"]
    assert "Text" not in rows[0].tokens[:3] and rows[0].contrast is not None

    result = runner.invoke(app, args + ["--model", str(tiny_dirs["qwen2"])])
    assert result.exit_code == 0, result.output
    rows = read_scores(out)
    assert set(rows[0].scores) == {"model"} and rows[0].contrast is None

    result = runner.invoke(app, args + ["--model", str(tiny_dirs["qwen2"]), "--large", "x"])
    assert result.exit_code != 0 and "either --model or" in result.output
    result = runner.invoke(app, args + ["--model", str(tmp_path / "missing.gguf")])
    assert result.exit_code != 0 and "missing.gguf" in result.output
    assert read_scores(out) == rows  # nothing half-written by the failed runs


def test_batch_size_error_names_the_option():
    with pytest.raises(AttentionError, match="--batch-size must be at least 1, got 0") as err:
        AttentionConfig(batch_size=0).validate()
    assert "chunk" not in str(err.value)


def test_text_longer_than_the_model_fails_before_scoring(tiny_dirs, tmp_path, monkeypatch):
    short = tmp_path / "short"
    shutil.copytree(tiny_dirs["llama"], short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 16
    (short / "config.json").write_text(json.dumps(config))
    records = [Record("fits", "Ava was born."), Record("long", TEXT)]
    n_tokens = len(load_model(short)[1](TEXT)["input_ids"])
    assert n_tokens > 16
    calls = _count_runs(monkeypatch)
    with pytest.raises(AttentionError, match=f"text 'long' is {n_tokens} tokens long.* 16 pos"):
        score_records(records, {"model": str(short)}, AttentionConfig(cache_dir=tmp_path))
    assert calls == []


def test_manifest_corpus_is_found_from_another_folder(tiny_dirs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    write_jsonl(work / "c.jsonl", [{"id": "a", "text": TEXT}])
    monkeypatch.chdir(work)  # relative paths, as typed in a shell
    specs = {"model": str(tiny_dirs["llama"])}
    score_corpus(specs, "c.jsonl", "scores", AttentionConfig(cache_dir=tmp_path), progress=False)
    assert json.loads((work / "scores" / "manifest.json").read_text())["corpus"] == "../c.jsonl"
    monkeypatch.chdir(tmp_path)
    config = AugmentConfig(policy="attention", copies=1)
    assert augment_file(work / "scores", tmp_path / "aug.jsonl", config) == 2
    (work / "c.jsonl").rename(work / "moved.jsonl")
    with pytest.raises(AugmentError, match=r"c.jsonl: no such file .*the corpus .*manifest.json"):
        augment_file(work / "scores", tmp_path / "aug2.jsonl", config)


def test_a_huge_text_fails_before_it_is_tokenised_naming_file_text_and_lengths(
    tiny_dirs, tmp_path, monkeypatch
):
    """A megabyte line cannot fit 2048 positions of tokens of at most 15 characters: it is
    refused from its length, never tokenised, and no model weights load."""
    spec = str(tiny_dirs["llama"])
    longest = max(map(len, load_model(spec)[1].get_vocab()))
    corpus = write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": "fits", "text": TEXT}, {"id": "huge", "text": "Ava Smith " * 100_000}],
    )
    tokenised, loaded = [], []
    real = attention.tokenize
    monkeypatch.setattr(attention, "tokenize", lambda tok, text, prefix="": (
        tokenised.append(len(text)), real(tok, text, prefix))[1])  # fmt: skip
    monkeypatch.setattr("elusive.models.load_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(AttentionError) as err:
        score_corpus({"model": spec}, corpus, tmp_path / "s", AttentionConfig(cache_dir=tmp_path))
    assert str(err.value) == (
        f"{corpus}: text 'huge' is 1000000 characters long, more than the 2048 positions of "
        f"model {spec!r} hold (at most {longest} characters a token): cut it into passages "
        "(corpus.chunk in a run config)"
    )
    assert tokenised == [] and loaded == [] and not (tmp_path / "s").exists()


def test_unwritable_cache_warns_once_and_keeps_this_runs_scores(tiny_dirs, twin_dir, tmp_path):
    specs = {"large": str(twin_dir), "small": str(tiny_dirs["llama"])}
    records = _records()
    (tmp_path / "afile").write_text("in the cache's way\n")
    blocked = AttentionConfig(cache_dir=tmp_path / "afile", batch_size=2, chunk_size=2)
    with pytest.warns(DroppedDataWarning) as caught:
        rows, _, _ = score_records(records, specs, blocked, progress=False)
    # one text for both models, which Python's warning filter shows once
    assert {str(w.message) for w in caught} == {
        f"{tmp_path}/afile/attention: cannot write the score cache (not a directory); this run "
        "keeps its scores in memory, a rerun scores again"
    }
    cached = AttentionConfig(cache_dir=tmp_path / "cache", batch_size=2, chunk_size=2)
    assert rows == score_records(records, specs, cached, progress=False)[0]
    assert (tmp_path / "afile").read_text() == "in the cache's way\n"


def test_shares_that_could_not_reach_the_cache_stop_in_one_error(tiny_dirs, tmp_path):
    from elusive.parallel import Dist

    # Rank 1 of 2 is given no batch of the one there is: as if rank 0 scored it and could not
    # write it to the cache, where this one reads it.
    second = Dist(rank=1, world=2, exchange=list, wait=lambda: None)
    (tmp_path / "afile").write_text("in the cache's way\n")
    config = AttentionConfig(cache_dir=tmp_path / "afile")
    specs = {"model": str(tiny_dirs["llama"])}
    with pytest.raises(AttentionError, match="share their scores through the cache"):
        score_records(_records(2), specs, config, progress=False, dist=second)


# --------------------------------------------------------------------------- exact numbers
#
# The reductions over query blocks and padded batches, against the naive maps.


def test_query_rows_across_query_blocks_match_naive(tiny, monkeypatch):
    model, tok = tiny
    ids = ids_of(tok, TEXT)
    length = ids.shape[1]
    # 3-query blocks: queries at a block's first and last row, in later blocks, and the last
    queries = torch.tensor([0, 1, 2, 3, 5, 9, length - 1])
    batch = ids.repeat(len(queries), 1)
    heads = model.config.num_attention_heads
    small = len(queries) * heads * length * 3
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", {"cpu": small, "cuda": small})
    got = attention_row(model, batch, queries)
    expected = naive_maps(model, ids).mean(dim=(0, 2))[0, queries]  # [queries, T]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_query_rows_of_a_left_padded_batch_equal_one_by_one(tiny):
    model, tok = tiny
    seqs = [tok(t)["input_ids"] for t in (TEXT, "He worked for Google.")]
    length = max(map(len, seqs))
    ids = torch.full((2, length), 7)
    mask = torch.zeros(2, length, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, length - len(seq) :] = torch.tensor(seq)
        mask[row, length - len(seq) :] = 1
    batched = attention_row(model, ids, torch.tensor([length - 1, length - 2]), mask)
    for row, seq in enumerate(seqs):
        alone = attention_row(model, torch.tensor([seq]), torch.tensor([len(seq) - 1 - row]))[0]
        torch.testing.assert_close(batched[row][mask[row].bool()], alone, atol=1e-5, rtol=0)
        assert batched[row][~mask[row].bool()].abs().sum() == 0


# --------------------------------------------------------------------------- exact numbers
#
# The per-block softmax (`_attention`, `_mask_block`) against eager attention written out head by
# head in float64, the character projection against a per-character loop, and the contrast
# against the two models' own scores.


def eager_attention(query, key, value, mask=None, scaling=None, window=None, softcap=None):
    """Slow reference: per head h (reading kv head h // groups), in float64, softmax(q k^T *
    scaling, softcapped, masked) and its product with v. No mask: query i (the last queries of
    the keys) sees keys j <= i, within `window`; a bool mask says who sees whom, a float mask
    is added. Returns (probs [b, h, q, k], out [b, h, q, d])."""
    q, k, v = (t.double() for t in (query, key, value))
    batch, heads, q_len, head_dim = q.shape
    k_len, groups = k.shape[2], heads // k.shape[1]
    scaling = head_dim**-0.5 if scaling is None else scaling
    probs = torch.zeros(batch, heads, q_len, k_len, dtype=torch.float64)
    out = torch.zeros(batch, heads, q_len, head_dim, dtype=torch.float64)
    low = torch.finfo(torch.float32).min
    for b in range(batch):
        for h in range(heads):
            logits = q[b, h] @ k[b, h // groups].T * scaling  # [q, k]
            if softcap is not None:
                logits = torch.tanh(logits / softcap) * softcap
            for i in range(q_len):
                for j in range(k_len):
                    pos = i + k_len - q_len
                    if mask is None:
                        seen = j <= pos and (window is None or pos - j < window)
                    elif mask.dtype == torch.bool:
                        seen = bool(mask[b, 0, i, j])
                    else:
                        seen, logits[i, j] = True, logits[i, j] + float(mask[b, 0, i, j])
                    if not seen:
                        logits[i, j] = low
            probs[b, h] = logits.softmax(-1)
            out[b, h] = probs[b, h] @ v[b, h // groups]
    return probs, out


class _Layer(torch.nn.Module):
    """What SDPA reads of an attention layer: its kv groups and causality."""

    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _qkv(q_len=7, k_len=7, heads=4, kv_heads=2, head_dim=8, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_dim, generator=g) * 2
    k, v = (torch.randn(batch, kv_heads, k_len, head_dim, generator=g) for _ in range(2))
    return q, k, v


def _left_padded_mask(length=7, pad=(0, 3)):
    """Causal bool mask [b, 1, T, T] of left-padded sequences, and their real tokens [b, T]."""
    valid = torch.ones(len(pad), length, dtype=torch.bool)
    for b, n in enumerate(pad):
        valid[b, :n] = False
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return (causal & valid[:, None, :])[:, None], valid


def _reduced(reduction, *args, **kwargs):
    token = attention._ACTIVE.set(reduction)
    try:
        return attention._attention(*args, **kwargs)
    finally:
        attention._ACTIVE.reset(token)


BOOL_MASK, PADDED = _left_padded_mask()
FLOAT_MASK = torch.zeros(BOOL_MASK.shape).masked_fill(~BOOL_MASK, torch.finfo(torch.float32).min)
CASES = {
    "causal": ({}, None),
    "scaled": ({"scaling": 0.3}, None),
    "window": ({"sliding_window": 3}, None),
    "softcap": ({"softcap": 1.5}, None),
    "bool mask": ({"mask": BOOL_MASK}, PADDED),
    "float mask": ({"mask": FLOAT_MASK}, PADDED),
}


@pytest.mark.parametrize("queries_per_block", [1, 2, 3, 100])
@pytest.mark.parametrize("case", list(CASES))
def test_blocked_attention_is_eager_attention_and_its_column_sums(
    case, queries_per_block, monkeypatch
):
    """Each block's softmax is the eager one, its output too, and the reduction receives the
    column sums of the real queries, whatever the block size."""
    options, valid = CASES[case]
    query, key, value = _qkv()
    batch, heads, length, _ = query.shape
    valid = torch.ones(batch, length, dtype=torch.bool) if valid is None else valid
    budget = batch * heads * length * queries_per_block
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", {"cpu": budget, "cuda": budget})
    mask = options.get("mask")
    rest = {k: v for k, v in options.items() if k != "mask"}
    reduction = attention._ColumnSum(valid)
    out, none = _reduced(reduction, _Layer(2), query, key, value, mask, **rest)
    window, softcap = rest.get("sliding_window"), rest.get("softcap")
    probs, expected = eager_attention(query, key, value, mask, rest.get("scaling"), window, softcap)
    assert none is None and out.shape == (batch, length, heads, query.shape[-1])
    rows = valid[:, :, None, None].expand(out.shape)  # a padding query sees no key: any row
    torch.testing.assert_close(out[rows], expected.transpose(1, 2)[rows].float(), atol=1e-5, rtol=0)
    column = (probs * valid[:, None, :, None]).sum(dim=(1, 2))  # [b, T]
    torch.testing.assert_close(reduction.total, column.float(), atol=1e-5, rtol=0)
    assert reduction.maps == heads


def test_blocked_attention_of_the_last_queries_sees_every_earlier_key(monkeypatch):
    """Fewer queries than keys: query i is position i + k_len - q_len."""
    query, key, value = _qkv(q_len=3, k_len=7)
    budget = 2 * 4 * 7 * 2  # 2-query blocks
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", {"cpu": budget, "cuda": budget})
    reduction = attention._ColumnSum(torch.ones(2, 7, dtype=torch.bool))
    out, _ = _reduced(reduction, _Layer(2), query, key, value, None)
    probs, expected = eager_attention(query, key, value)
    torch.testing.assert_close(out, expected.transpose(1, 2).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(reduction.total, probs.sum(dim=(1, 2)).float(), atol=1e-5, rtol=0)


@pytest.mark.skipif(not kernels.INTERPRETED, reason="the fused kernel on the CPU: the interpreter")
def test_fused_attention_is_eager_attention_and_its_column_sums(monkeypatch):
    """The layer through the fused kernel (a right-padded batch: the causal mask hides the
    padding): the same output and column sums as eager attention; a sliding window or a
    softcap, which the kernel lacks, takes the blocked path."""
    calls = []
    column_sums = kernels.column_sums
    monkeypatch.setattr(attention, "KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(kernels, "column_sums", lambda *a: calls.append(1) or column_sums(*a))
    query, key, value = _qkv(seed=1)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 5:] = False
    rows = valid[:, :, None, None].expand(2, 7, 4, 8)  # padding queries: any row
    for options in ({}, {"scaling": 0.3}, {"sliding_window": 3}, {"softcap": 1.5}):
        reduction = attention._ColumnSum(valid)
        out, none = _reduced(reduction, _Layer(2), query, key, value, None, **options)
        probs, expected = eager_attention(
            query,
            key,
            value,
            scaling=options.get("scaling"),
            window=options.get("sliding_window"),
            softcap=options.get("softcap"),
        )
        assert none is None
        expected = expected.transpose(1, 2).float()
        torch.testing.assert_close(out[rows], expected[rows], atol=1e-5, rtol=0)
        column = (probs * valid[:, None, :, None]).sum(dim=(1, 2))
        torch.testing.assert_close(reduction.total, column.float(), atol=1e-5, rtol=0)
        assert reduction.maps == 4
    assert len(calls) == 2


def test_half_precision_attention_is_eager_attention_to_its_precision():
    """bfloat16 queries, keys and values: float32 probabilities, an output in bfloat16."""
    query, key, value = (t.bfloat16() for t in _qkv(seed=2))
    reduction = attention._ColumnSum(torch.ones(2, 7, dtype=torch.bool))
    out, _ = _reduced(reduction, _Layer(2), query, key, value, None)
    probs, expected = eager_attention(query, key, value)
    assert out.dtype == torch.bfloat16 and reduction.total.dtype == torch.float32
    torch.testing.assert_close(out.float(), expected.transpose(1, 2).float(), atol=3e-2, rtol=0)
    torch.testing.assert_close(reduction.total, probs.sum(dim=(1, 2)).float(), atol=3e-2, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_without_a_reduction_is_eager_attention(masked):
    """Outside scoring (e.g. `generate`) the layer is plain SDPA, with its own defaults."""
    query, key, value = _qkv()
    mask = BOOL_MASK if masked else None
    out, none = attention._attention(_Layer(2), query, key, value, mask)
    _, expected = eager_attention(query, key, value, mask)
    assert none is None
    if masked:  # rows of padding (no key at all) are SDPA's business
        rows = PADDED[:, :, None, None].expand(out.shape)
        out, expected = out[rows], expected.transpose(1, 2)[rows]
    else:
        expected = expected.transpose(1, 2)
    torch.testing.assert_close(out, expected.float(), atol=1e-5, rtol=0)
    causal = attention._attention(_Layer(2), query, key, value, None, 0.3, is_causal=False)[0]
    _, full = eager_attention(query, key, value, torch.ones_like(BOOL_MASK), 0.3)
    torch.testing.assert_close(causal, full.transpose(1, 2).float(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="softcap"):  # SDPA has none: refused, never ignored
        attention._attention(_Layer(2), query, key, value, mask, softcap=1.5)


def _tokenized(offsets, in_prefix=None):
    n = len(offsets)
    in_prefix = in_prefix or [False] * n
    return attention.Tokenized(list(range(n)), ["t"] * n, offsets, [False] * n, in_prefix)


def project_reference(source_offsets, scores, skip, target_offsets, n_chars):
    """Per character: the mean score of the source tokens (not in `skip`) covering it; per target
    token, the mean over its covered characters, 0.0 where none is covered."""
    per_char = []
    for c in range(n_chars):
        covering = [
            scores[k] for k, (a, b) in enumerate(source_offsets) if a <= c < b and k not in skip
        ]
        per_char.append(sum(covering) / len(covering) if covering else None)
    out = []
    for a, b in target_offsets:
        covered = [x for x in per_char[a:b] if x is not None]
        out.append(sum(covered) / len(covered) if covered else 0.0)
    return out


def test_projected_scores_are_character_means_of_character_means():
    """Overlapping source tokens, a prefix token left out, a character no source token covers,
    a target token over several source tokens and one (BOS) over no character."""
    source = _tokenized(
        [(0, 0), (0, 0), (0, 3), (2, 5), (5, 6), (8, 10)], [False, True] + [False] * 4
    )
    scores = [9.0, 100.0, 0.25, 1.0, -0.5, 2.0]
    target = _tokenized([(0, 0), (0, 2), (2, 6), (6, 9), (9, 10), (7, 8)])
    got = attention._project(source, scores, target, 10)
    expected = project_reference(source.offsets, scores, {1}, target.offsets, 10)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] == 0.0 and got[5] == 0.0  # BOS, and a character no source token covers
    # the prefix token covers nothing; one over characters counts, out of the mean
    inside = _tokenized([(0, 4), (0, 2)], [True, False])
    assert attention._project(inside, [5.0, 1.0], _tokenized([(0, 4)]), 4) == [1.0]


@pytest.mark.parametrize(
    "pair,align,trained",
    [
        (("twin", "llama"), "tokens", "small"),
        (("qwen2", "llama"), "chars", "small"),
        (("qwen2", "llama"), "chars", "large"),
    ],
)
def test_each_roles_scores_and_their_contrast_are_the_models_own(
    tiny_dirs, twin_dir, tmp_path, pair, align, trained
):
    """Per role, s_j of its own model on its own tokens, projected through characters onto the
    trained model's tokens under align chars; the contrast is large - small of those, rounded
    as the scores are (7 significant digits); the rank orders the contrast."""
    dirs = {"twin": twin_dir, **tiny_dirs}
    names = dict(zip(("large", "small"), pair, strict=True))
    specs = {role: str(dirs[name]) for role, name in names.items()}
    records = _records(2)
    config = AttentionConfig(cache_dir=tmp_path, align=align, trained=trained)
    rows, _, _ = score_records(records, specs, config, progress=False)
    models = {role: load_model(spec) for role, spec in specs.items()}
    for record, row in zip(records, rows, strict=True):
        own = {}
        for role, (model, tok) in models.items():
            item = tokenize(tok, record.text)
            own[role] = (item, attention_received(model, torch.tensor([item.ids]))[0].tolist())
        target = own[trained][0]
        assert row.tokens == [target.tokens[k] for k in target.kept]
        for role, (item, scores) in own.items():
            if role != trained and align == "chars":
                skip = {k for k, p in enumerate(item.in_prefix) if p}
                scores = project_reference(
                    item.offsets, scores, skip, target.offsets, len(record.text)
                )
            expected = [scores[k] for k in target.kept]
            assert row.scores[role] == pytest.approx(expected, abs=1e-6)
        large, small = row.scores["large"], row.scores["small"]
        assert row.contrast == [float(f"{a - b:.7g}") for a, b in zip(large, small, strict=True)]
        assert row.rank == rank_desc(row.contrast, row.eligible)


def test_one_models_rows_have_no_contrast_and_rank_by_its_scores(tiny_dirs, tmp_path):
    rows, _, _ = score_records(
        _records(2), {"model": str(tiny_dirs["qwen2"])}, AttentionConfig(cache_dir=tmp_path)
    )
    for row in rows:
        assert row.contrast is None and set(row.scores) == {"model"}
        assert row.rank == rank_desc(row.scores["model"], row.eligible)
        assert sorted(r for r in row.rank if r >= 0) == list(range(sum(row.eligible)))


def test_a_text_past_the_model_positions_is_refused_naming_the_fix(tiny_dirs, tmp_path):
    """Short enough in characters to be tokenised, too long in tokens for the 2048 positions:
    refused before scoring, naming the text, its tokens and corpus.chunk."""
    spec = str(tiny_dirs["llama"])
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "long", "text": "Ava Smith. " * 1500}])
    with pytest.raises(AttentionError) as err:
        score_corpus({"model": spec}, corpus, tmp_path / "s", AttentionConfig(cache_dir=tmp_path))
    message = str(err.value)
    assert message.startswith(f"{corpus}: text 'long' is ") and "tokens long" in message
    assert message.endswith(
        f"more than the 2048 positions of model {spec!r}: cut it into passages "
        "(corpus.chunk in a run config)"
    )
    assert not (tmp_path / "s").exists()
