"""The memory-bounded attention scorer against a naive reference, on tiny random models."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from elusive import attention
from elusive.attention import (
    AttentionConfig,
    AttentionError,
    TextScores,
    attention_received,
    attention_row,
    query_attention,
    rank_desc,
    read_scores,
    score_corpus,
    score_records,
    tokenize,
    write_scores,
)
from elusive.augment import AugmentConfig, AugmentError, augment_file
from elusive.bios import BiosConfig, generate_bios
from elusive.cli import app
from elusive.corpus import Record
from elusive.io import DroppedDataWarning, write_jsonl
from elusive.models import load_model, make_tiny_model

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


def test_eligibility_and_rank():
    assert rank_desc([0.1, 0.5, 0.3, 0.9], [True, True, True, False]) == [2, 0, 1, -1]
    assert rank_desc([0.2, 0.2], [True, True]) == [0, 1]  # ties by position
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


def test_scores_files_round_trip_and_bad_files_fail(tmp_path):
    row = TextScores(
        id="p0",
        text_sha256="ab",
        tokens=["Ava", " ."],
        offsets=[(0, 3), (3, 5)],
        eligible=[True, False],
        scores={"large": [0.5, 0.1], "small": [0.25, 0.2]},
        contrast=[0.25, -0.1],
        rank=[0, -1],
    )
    manifest = {"models": {}, "corpus": "c", "prefix": "", "align": "tokens", "trained": "small"}
    write_scores(tmp_path, manifest, [row])
    assert read_scores(tmp_path) == [row]
    single = TextScores("p1", "cd", ["A"], [(0, 1)], [True], {"model": [0.3]}, None, [0])
    write_scores(tmp_path, manifest, [single])
    assert "contrast" not in (tmp_path / "scores.jsonl").read_text()
    assert read_scores(tmp_path) == [single]
    bad = single.to_json() | {"rank": [0, 1]}
    (tmp_path / "scores.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(AttentionError, match=r"scores.jsonl:1: field 'rank' has 2 items"):
        read_scores(tmp_path)
    with pytest.raises(AttentionError, match="manifest.json: no such file"):
        read_scores(tmp_path / "nowhere")


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
        f"model {spec!r} hold (at most {longest} characters a token): split it"
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


def test_shares_that_could_not_reach_the_cache_stop_in_one_error(tiny_dirs, tmp_path, monkeypatch):
    import elusive.parallel

    # This process scores no batch: as if the other launched processes scored them all and
    # could not write them to the cache, where this one reads them.
    monkeypatch.setattr(elusive.parallel, "my_share", lambda costs: [])
    (tmp_path / "afile").write_text("in the cache's way\n")
    config = AttentionConfig(cache_dir=tmp_path / "afile")
    with pytest.raises(AttentionError, match="share their scores through the cache"):
        score_records(_records(2), {"model": str(tiny_dirs["llama"])}, config, progress=False)


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
