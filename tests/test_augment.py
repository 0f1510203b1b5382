import copy
import dataclasses
import hashlib
import json
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import elusive.augment.dropout as augment_module
from elusive.augment.dropout import (
    POLICIES,
    RANKED,
    AugmentConfig,
    AugmentError,
    augment,
    augment_file,
    drop_probabilities,
    load_inputs,
)
from elusive.cli import app
from elusive.corpus.bios import BiosConfig, generate_bios
from elusive.corpus.records import Record, read_corpus, record_to_json
from elusive.io import DroppedDataWarning
from elusive.io import write_jsonl as write_rows
from elusive.scoring.scores import TextScores, write_scores

runner = CliRunner()
TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]")  # words with their leading space, or punctuation


def fake_scores(record, roles=("large", "small"), seed=0, space_in_token=True):
    """Scores of `record` by the preamble's schema: regex tokens after a BOS, random scores."""
    rng = np.random.default_rng(seed)
    spans = [m.span() for m in TOKEN.finditer(record.text)]
    if not space_in_token:  # tokenizers whose offsets leave out the leading space
        spans = [(s + len(record.text[s:e]) - len(record.text[s:e].lstrip()), e) for s, e in spans]
    tokens = ["<s>"] + [record.text[s:e] for s, e in spans]
    eligible = [False] + [any(c.isalnum() for c in t) for t in tokens[1:]]
    scores = {role: rng.random(len(tokens)).round(3).tolist() for role in roles}
    contrast = None
    if {"large", "small"} <= set(roles):
        contrast = [a - b for a, b in zip(scores["large"], scores["small"], strict=True)]
    by = contrast or scores[roles[0]]
    order = sorted((i for i in range(len(tokens)) if eligible[i]), key=lambda i: -by[i])
    rank = [-1] * len(tokens)
    for r, i in enumerate(order):
        rank[i] = r
    offsets = [(0, 0), *spans]
    return TextScores(record.id, record.sha256, tokens, offsets, eligible, scores, contrast, rank)


def reference_drop(row, policy, alpha, beta, role="small"):
    """Slow reference for the ranked policies: a sort and a loop with math.exp."""
    n = len(row.tokens)
    values = {
        "contrast": lambda i: row.contrast[i],
        "attention": lambda i: row.scores[role][i],
        "position": lambda i: -i,
    }[policy]
    order = sorted((i for i in range(n) if row.eligible[i]), key=lambda i: (-values(i), i))
    p = [0.0] * n
    for r, i in enumerate(order):
        p[i] = alpha * (1 - math.exp(-beta * r))
    return p


@pytest.fixture(scope="module")
def bios():
    records, _ = generate_bios(BiosConfig(n=30, seed=3))
    return records


@pytest.fixture(scope="module")
def scores(bios):
    return [fake_scores(r, seed=i) for i, r in enumerate(bios)]


def write_fixture(tmp_path, records, rows, trained="small"):
    corpus = write_rows(tmp_path / "people.jsonl", (record_to_json(r) for r in records))
    manifest = {
        "models": {role: {"spec": f"tiny-{role}", "fingerprint": role} for role in rows[0].scores},
        "corpus": str(corpus),
        "prefix": "",
        "align": "tokens",
        "trained": trained,
    }
    return corpus, write_scores(tmp_path / "scores", manifest, rows)


# --------------------------------------------------------------------------- probabilities


@pytest.mark.parametrize("policy", ["contrast", "attention", "position"])
def test_drop_probabilities_match_reference(scores, policy):
    rows = copy.deepcopy(scores[:10])
    for row in rows:
        row.scores["small"][3] = row.scores["small"][5]  # a tie: broken by position
        row.contrast[4] = row.contrast[6]
    got = drop_probabilities(rows, AugmentConfig(policy=policy, alpha=0.65, beta=0.07))
    expected = [p for row in rows for p in reference_drop(row, policy, 0.65, 0.07)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_shuffled_is_a_seeded_permutation_of_the_same_probabilities(scores):
    a = drop_probabilities(scores[:5], AugmentConfig(policy="shuffled", seed=1))
    b = drop_probabilities(scores[:5], AugmentConfig(policy="shuffled", seed=2))
    contrast = drop_probabilities(scores[:5], AugmentConfig(policy="contrast"))
    start = 0
    for row in scores[:5]:
        part = a[start : start + len(row.tokens)]
        expected = sorted(0.7 * (1 - math.exp(-0.03 * r)) for r in range(sum(row.eligible)))
        np.testing.assert_allclose(np.sort(part[np.array(row.eligible)]), expected)
        start += len(row.tokens)
    assert not np.array_equal(a, b) and not np.array_equal(a, contrast)
    again = drop_probabilities(scores[:5][::-1], AugmentConfig(policy="shuffled", seed=1))
    np.testing.assert_array_equal(
        a[: len(scores[0].tokens)], again[-len(scores[0].tokens) :]
    )  # the permutation of a text does not depend on its neighbours


def keep_matrix(rows, source_id):
    return np.array([r["keep"] for r in rows if r["source_id"] == source_id and r["copy"] > 0])


@pytest.mark.parametrize("policy", ["contrast", "position"])
def test_empirical_drop_rate_per_rank_within_3_sigma(bios, scores, policy):
    copies, alpha, beta = 3000, 0.7, 0.1
    rows = augment(bios[:1], scores[:1], AugmentConfig(policy, alpha, beta, copies=copies))
    dropped = 1.0 - keep_matrix(rows, bios[0].id).mean(axis=0)  # [tokens]
    p = np.array(reference_drop(scores[0], policy, alpha, beta))
    sigma = np.sqrt(p * (1 - p) / copies)
    assert np.all(np.abs(dropped - p) <= 3 * sigma + 1e-12), np.abs(dropped - p) / (sigma + 1e-12)
    assert p.max() > 0.5  # the test covers high ranks, not only rank 0


def test_random_drops_each_eligible_token_with_alpha(bios, scores):
    copies, alpha = 2000, 0.6
    rows = augment(bios[:2], scores[:2], AugmentConfig("random", alpha, copies=copies))
    for record, row in zip(bios[:2], scores[:2], strict=True):
        dropped = 1.0 - keep_matrix(rows, record.id).mean(axis=0)
        eligible = np.array(row.eligible)
        sigma = math.sqrt(alpha * (1 - alpha) / copies)
        assert np.all(np.abs(dropped[eligible] - alpha) <= 3 * sigma)
        assert np.all(dropped[~eligible] == 0)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "plain"])  # plain: no copies
def test_protected_tokens_never_drop(bios, scores, policy):
    config = AugmentConfig(policy, alpha=1.0, beta=50.0, copies=20)
    rows = augment(bios[:5], scores[:5], config)
    for record, row in zip(bios[:5], scores[:5], strict=True):
        keep = keep_matrix(rows, record.id)
        assert keep[:, ~np.array(row.eligible)].all()
        punctuation = [
            t for t, e in zip(row.tokens, row.eligible, strict=True) if not e and t != "<s>"
        ]
        for out in (r for r in rows if r["source_id"] == record.id):
            assert "".join(c for c in out["text"] if c in ".,'") == "".join(punctuation)
        if policy in ("random", *RANKED):  # alpha 1: everything else goes, bar rank 0
            assert keep[:, np.array(row.eligible)].sum(axis=1).max() <= (policy != "random")


def protected_row(record, row, span):
    """`row` with the tokens that overlap `record.spans[span]` made ineligible, by a loop."""
    lo, hi = record.spans[span]
    eligible = [
        e and not (a < hi and b > lo) for e, (a, b) in zip(row.eligible, row.offsets, strict=True)
    ]
    return dataclasses.replace(row, eligible=eligible)


@pytest.mark.parametrize("policy", ["contrast", "attention", "position"])
def test_protected_spans_leave_the_ranking(bios, scores, policy):
    config = AugmentConfig(policy, alpha=0.65, beta=0.07, protect=("name",))
    got = drop_probabilities(scores[:10], config, bios[:10])
    rows = [protected_row(r, row, "name") for r, row in zip(bios[:10], scores[:10], strict=True)]
    expected = [p for row in rows for p in reference_drop(row, policy, 0.65, 0.07)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    plain = drop_probabilities(scores[:10], AugmentConfig(policy, alpha=0.65, beta=0.07))
    assert not np.allclose(got, plain)  # the name's tokens held ranks before
    with pytest.raises(AugmentError, match="protect needs the records"):
        drop_probabilities(scores[:10], config)


@pytest.mark.parametrize("policy", ["random", "contrast", "shuffled"])
def test_every_copy_keeps_the_protected_name(bios, scores, policy):
    config = AugmentConfig(policy, alpha=1.0, beta=50.0, copies=20, protect=("name",))
    rows = augment(bios[:5], scores[:5], config)
    for record in bios[:5]:
        name = record.text[slice(*record.spans["name"])]
        texts = [r["text"] for r in rows if r["source_id"] == record.id]
        assert all(t.startswith(name) for t in texts)
        assert len({t for t in texts[1:]}) <= 2  # alpha 1: the rest goes, bar rank 0
        assert all(len(t) < len(record.text) / 2 for t in texts[1:])


def test_protecting_a_span_a_record_lacks_is_one_error(bios, scores):
    bare = [dataclasses.replace(bios[0], spans={})]
    with pytest.raises(
        AugmentError, match=r"text 'p00' has no span 'name' to protect \(its spans: none\)"
    ):
        augment(bare, scores[:1], AugmentConfig(protect=("name",)))
    with pytest.raises(AugmentError, match="--protect names an empty span"):
        augment(bios[:1], scores[:1], AugmentConfig(protect=("name", "")))


def reference_text(text, offsets, keep, replacement, per_char=False):
    """Slow reference: walk the tokens; a dropped token takes the whitespace-only gap before
    it; a shared character belongs to the first token; a dropped token of at least one
    character becomes `replacement`, or with `per_char` a space for each of its characters."""
    out, pos = "", 0
    for (start, end), k in zip(offsets, keep, strict=True):
        start = max(start, pos)
        end = max(end, start)
        gap, piece = text[pos:start], text[start:end]
        if gap.isspace():
            gap, piece = "", gap + piece
        dropped = " " * len(piece) if per_char else replacement if piece else ""
        out += gap + (piece if k else dropped)
        pos = end
    return out + text[pos:]


@pytest.mark.parametrize("space_in_token", [True, False])
@pytest.mark.parametrize("spaces", [False, True])
def test_text_is_the_kept_tokens(bios, space_in_token, spaces):
    rows_in = [fake_scores(r, seed=7, space_in_token=space_in_token) for r in bios[:8]]
    config = AugmentConfig("random", 0.5, copies=6, drop_style="space" if spaces else "delete")
    rows = augment(bios[:8], rows_in, config)
    for out in rows:
        i = int(out["source_id"][1:])
        record, row = bios[i], rows_in[i]
        expected = reference_text(record.text, row.offsets, out["keep"], " " if spaces else "")
        assert out["text"] == expected
        if not spaces:
            assert "  " not in out["text"]
    assert rows[0]["text"] == bios[0].text


@pytest.mark.parametrize("spaces", [False, True])
def test_unicode_gaps_shared_characters_and_empty_token_lists(spaces):
    text = "Zoë 🙂 lives in 東京—really.\nNext  line"
    spans = [(0, 3), (3, 5), (4, 5), (5, 11), (11, 14), (15, 17), (18, 24), (24, 25), (26, 30)]
    spans += [(32, 35)]  # gaps: " " at 14, "—" at 17 (kept), "\n" at 25, "  " at 30; tail "e"
    assert [text[a:b] for a, b in spans][:3] == ["Zoë", " 🙂", "🙂"]
    records = [Record("u", text), Record("empty", "no tokens here")]
    eligible = [True] * len(spans)
    eligible[7] = False  # "."
    rows = [
        TextScores("u", records[0].sha256, [text[a:b] for a, b in spans], spans, eligible, {}),
        TextScores("empty", records[1].sha256, [], [], [], {}),
    ]
    config = AugmentConfig("random", 0.5, copies=200, drop_style="space" if spaces else "delete")
    out = augment(records, rows, config)
    assert len(out) == 2 * 201
    for r in out[:201]:
        assert r["text"] == reference_text(text, spans, r["keep"], " " if spaces else "")
        assert "—" in r["text"] and "." in r["text"]
    assert {r["text"] for r in out[201:]} == {"no tokens here"} and out[201]["keep"] == []
    assert len({r["text"] for r in out[:201]}) > 100  # 8 droppable non-empty tokens: 256 texts


# --------------------------------------------------------------------------- rows


def test_original_always_included_and_policies_give_equal_counts(bios, scores):
    counts = {}
    for policy in (p for p in POLICIES if p != "plain"):  # plain: the originals alone (below)
        rows = augment(bios, scores, AugmentConfig(policy, copies=4))
        counts[policy] = len(rows)
        assert [r["id"] for r in rows[:5]] == [f"{bios[0].id}#{c}" for c in range(5)]
        for r in rows:
            assert r["policy"] == policy and r["id"] == f"{r['source_id']}#{r['copy']}"
            if r["copy"] == 0 or policy == "none":
                original = next(b for b in bios if b.id == r["source_id"])
                assert r["text"] == original.text and all(r["keep"])
        if policy != "none":
            assert any(not all(r["keep"]) for r in rows)
    assert set(counts.values()) == {len(bios) * 5}


def test_deterministic_order_chunk_free_and_prefix_stable(bios, scores, monkeypatch):
    config = AugmentConfig("contrast", copies=6, seed=11)
    a = augment(bios, scores, config)
    b = augment(bios[::-1], scores, config)
    by_id = {r["id"]: r for r in b}
    assert all(by_id[r["id"]] == r for r in a)
    short = augment(bios, scores, AugmentConfig("contrast", copies=3, seed=11))
    assert all(r == by_id[r["id"]] for r in short)
    monkeypatch.setattr(augment_module, "CHUNK", 7)  # texts sampled 7 at a time
    assert augment(bios, scores, config) == a
    other = augment(bios, scores, AugmentConfig("contrast", copies=6, seed=12))
    assert [r["text"] for r in other] != [r["text"] for r in a]


def test_attention_role_defaults_to_small_or_the_only_role(bios):
    both = [fake_scores(r, seed=5) for r in bios[:3]]
    only = [fake_scores(r, roles=("model",), seed=5) for r in bios[:3]]
    small = drop_probabilities(both[:1], AugmentConfig("attention"))
    np.testing.assert_allclose(small, reference_drop(both[0], "attention", 0.7, 0.03, "small"))
    large = drop_probabilities(both[:1], AugmentConfig("attention", score_of="large"))
    np.testing.assert_allclose(large, reference_drop(both[0], "attention", 0.7, 0.03, "large"))
    model = drop_probabilities(only[:1], AugmentConfig("attention"))
    np.testing.assert_allclose(model, reference_drop(only[0], "attention", 0.7, 0.03, "model"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alpha": 1.5}, "--alpha must be in [0, 1], got 1.5"),
        ({"alpha": -0.1}, "--alpha must be in [0, 1], got -0.1"),
        ({"beta": -1.0}, "--beta must be a finite number >= 0, got -1.0"),
        ({"copies": -1}, "--copies must be >= 0, got -1"),
        ({"policy": "dropall"}, "--policy must be one of"),
    ],
)
def test_bad_options_raise(bios, scores, change, message):
    with pytest.raises(AugmentError, match=re.escape(message)):
        augment(bios, scores, AugmentConfig(**change))


def test_scores_of_another_corpus_or_missing_roles_raise(bios, scores):
    other, _ = generate_bios(BiosConfig(n=30, seed=4))  # same ids, different texts
    with pytest.raises(AugmentError, match="scores of text 'p00' belong to another text"):
        augment(other, scores, AugmentConfig())
    with pytest.raises(AugmentError, match="no scores for text 'p29'"):
        augment(bios, scores[:-1], AugmentConfig())
    only = [fake_scores(r, roles=("model",)) for r in bios]
    with pytest.raises(AugmentError, match="contrast needs scores of roles 'large' and 'small'"):
        augment(bios, only, AugmentConfig("contrast"))
    with pytest.raises(AugmentError, match="role 'large'; the scores hold model"):
        augment(bios, only, AugmentConfig("attention", score_of="large"))


# --------------------------------------------------------------------------- CLI


def test_cli_augment_end_to_end_same_seed_same_bytes(tmp_path, bios, scores):
    corpus, sdir = write_fixture(tmp_path, bios, scores)
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.jsonl"
        args = ["augment", "--scores", str(sdir), "--out", str(out), "--copies", "5"]
        result = runner.invoke(app, [*args, "--seed", seed, "--corpus", str(corpus)])
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    out = tmp_path / "kept.jsonl"
    args = ["augment", "--scores", str(sdir), "--out", str(out), "--alpha", "1", "--beta", "9"]
    result = runner.invoke(app, [*args, "--protect", "name,company"])
    assert result.exit_code == 0, result.output
    for row in map(json.loads, out.read_text().splitlines()):
        record = next(r for r in bios if r.id == row["source_id"])
        for span in ("name", "company"):
            assert record.text[slice(*record.spans[span])] in row["text"]
    rows = [json.loads(line) for line in outs[0].decode().splitlines()]
    assert len(rows) == 30 * 6 and rows[0]["text"] == bios[0].text
    assert set(rows[0]) == {"id", "source_id", "policy", "copy", "text", "keep"}
    again = read_corpus(tmp_path / "a.jsonl")  # train reads the output like any corpus
    assert again[7].id == rows[7]["id"] and again[7].meta["source_id"] == rows[7]["source_id"]
    # without --corpus, the manifest names it
    result = runner.invoke(
        app,
        [
            "augment",
            "--scores",
            str(sdir),
            "--out",
            str(tmp_path / "m.jsonl"),
            "--copies",
            "5",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.jsonl").read_bytes() == outs[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha", "1.2"], "--alpha must be in [0, 1], got 1.2"),
        (["--beta", "-0.5"], "--beta must be a finite number >= 0, got -0.5"),
        (["--policy", "bogus"], "--policy must be one of"),
        (["--corpus", "OTHER"], "scores of text 'p00' belong to another text"),
        (
            ["--policy", "attention", "--score-of", "huge"],
            "role 'huge'; the scores hold large, small",
        ),
    ],
)
def test_cli_bad_input_is_one_line_error_and_writes_nothing(tmp_path, bios, scores, args, message):
    corpus, sdir = write_fixture(tmp_path, bios, scores)
    other, _ = generate_bios(BiosConfig(n=30, seed=4))
    other_path = write_rows(tmp_path / "other.jsonl", (record_to_json(r) for r in other))
    args = [str(other_path) if a == "OTHER" else a for a in args]
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["augment", "--scores", str(sdir), "--out", str(out), *args])
    assert result.exit_code != 0
    assert message in result.output and result.output.strip().count("\n") == 0, result.output
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_cli_show_writes_html_and_png(tmp_path, bios, scores):
    corpus, sdir = write_fixture(tmp_path, bios, scores)
    prefix = tmp_path / "fig" / "p03"
    result = runner.invoke(app, ["show", "p03", "--scores", str(sdir), "--out", str(prefix)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "fig" / "p03.html").read_text()
    assert page.count('class="tok"') == sum(scores[3].eligible)
    assert "keep probability" in page and "never dropped" in page
    text = re.sub(r"<[^>]+>", "", page.split('<div class="text">')[1].split("</div>")[0])
    assert text == bios[3].text.replace("'", "&#x27;")
    assert (tmp_path / "fig" / "p03.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = ["show", "p03", "--scores", str(sdir), "--out", str(prefix), "--protect", "name"]
    assert runner.invoke(app, args).exit_code == 0  # the name's words are never dropped now
    kept = (tmp_path / "fig" / "p03.html").read_text()
    name_words = len(bios[3].text[slice(*bios[3].spans["name"])].split())
    assert kept.count('class="tok"') == sum(scores[3].eligible) - name_words
    assert "name never dropped" in kept
    missing = runner.invoke(app, ["show", "nobody", "--scores", str(sdir), "--out", str(prefix)])
    assert missing.exit_code != 0 and "text 'nobody' is not in the corpus" in missing.output


def test_cli_attention_policy_ranks_by_the_manifests_trained_role(tmp_path, bios, scores):
    def run(trained, *extra):
        _, sdir = write_fixture(tmp_path / trained, bios, scores, trained=trained)
        out = tmp_path / trained / f"out{len(extra)}.jsonl"
        args = ["augment", "--scores", str(sdir), "--out", str(out), "--policy", "attention"]
        result = runner.invoke(app, [*args, "--copies", "3", *extra])
        assert result.exit_code == 0, result.output
        return out.read_bytes()

    large = run("large")
    assert large == run("large", "--score-of", "large")
    assert large != run("small") == run("small", "--score-of", "small")


def test_the_policy_registry_keeps_the_paper_order_and_captions_every_policy():
    from elusive.augment.dropout import RANK_BY, UNRANKED, caption

    assert POLICIES == (
        "none", "plain", "random", "attention", "contrast", "authors", "shuffled", "position"
    )  # fmt: skip
    assert set(RANKED) == set(RANK_BY) and not set(UNRANKED) & set(RANK_BY)
    captions = {caption(AugmentConfig(policy=p, alpha=0.5)) for p in POLICIES}
    assert len(captions) == len(POLICIES)


def test_the_authors_policy_drops_by_their_argsort_of_an_authors_scores_folder(tmp_path, bios):
    rows = [fake_scores(r, seed=i) for i, r in enumerate(bios[:6])]
    for row in rows:  # their contrast: zero but where bf16 rounding differs
        row.contrast = [0.0] * len(row.tokens)
        row.contrast[3], row.contrast[7] = 1e-4, -1e-4
    corpus, folder = write_fixture(tmp_path, bios[:6], rows)
    config = AugmentConfig(policy="authors", alpha=0.7, beta=0.05)
    with pytest.raises(AugmentError, match="policy authors ranks by the authors' scorer.*--score"):
        augment_file(folder, tmp_path / "a.jsonl", config)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "score": "authors"}))
    records, got_rows, config = load_inputs(folder, None, config)
    got = drop_probabilities(got_rows, config)
    expected = []
    for row in rows:  # their order over every token, then Eq. 1 by rank among the eligible
        order = [int(k) for k in np.argsort(np.float32(row.contrast))[::-1] if row.eligible[k]]
        p = [0.0] * len(row.tokens)
        for r, k in enumerate(order):
            p[k] = 0.7 * (1 - math.exp(-0.05 * r))
        expected += p
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert augment_file(folder, tmp_path / "a.jsonl", config) == 6 * 11
    first = (tmp_path / "a.jsonl").read_bytes()
    augment_file(folder, tmp_path / "b.jsonl", config)
    assert (tmp_path / "b.jsonl").read_bytes() == first  # same seed, same bytes


def test_augment_refuses_an_out_that_is_one_of_its_inputs(tmp_path, bios, scores):
    """--out equal to the corpus (given, or the one the scores' manifest names) or to a file of
    the scores folder is refused in one line, and the input is left as it was."""
    from elusive.augment.dropout import augment_file
    from elusive.io import OutputError

    corpus, sdir = write_fixture(tmp_path, bios, scores)
    config = AugmentConfig(policy="random", alpha=0.5)
    for out, corpus_given in [
        (corpus, None),
        (tmp_path / "." / corpus.name, corpus),  # the same file, spelt another way
        (sdir / "scores.jsonl", None),
    ]:
        before = out.read_bytes()
        with pytest.raises(OutputError, match=r"is also the input --(corpus|scores)"):
            augment_file(sdir, out, config, corpus=corpus_given)
        assert out.read_bytes() == before
    result = runner.invoke(app, ["augment", "--scores", str(sdir), "--out", str(corpus)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {corpus}: is also the input --corpus")


def test_a_rerun_of_augment_removes_what_a_sigkilled_one_left(tmp_path, bios, scores):
    """SIGKILL right before the rename: the temp file stays (no cleanup runs). Rerun, the same
    command removes it, and only it: a user's look-alike and another output's temp stay."""
    import os
    import subprocess
    import sys

    from elusive.io import _new_file_beside

    _, sdir = write_fixture(tmp_path, bios, scores)
    out = tmp_path / "aug" / "random.jsonl"
    killed = (
        "import os, signal, sys\n"
        "from elusive.augment.dropout import AugmentConfig, augment_file\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "augment_file(sys.argv[1], sys.argv[2], AugmentConfig(policy='random', alpha=0.5))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", killed, str(sdir), str(out)], env=env)
    assert done.returncode == -9
    (left,) = out.parent.iterdir()
    assert left.name.startswith(".random.jsonl.") and left.stat().st_size > 0
    users = out.parent / ".random.jsonl.0123456789ab.tmp"
    users.write_text("mine")
    other = _new_file_beside(out.parent / "other.jsonl", ".tmp")  # another writer's, live
    args = ["augment", "--scores", str(sdir), "--out", str(out), "--policy", "random"]
    result = runner.invoke(app, [*args, "--alpha", "0.5"])
    assert result.exit_code == 0, result.output
    assert sorted(out.parent.iterdir()) == sorted([out, users, other])


def test_a_copy_that_loses_every_token_is_not_written_and_is_counted(tmp_path):
    """alpha 1 drops every eligible token: a text of words alone would be left empty (or, with
    drop_style space, blank); such copies are left out and warned about, the rest kept."""
    from elusive.io import DroppedDataWarning

    records = [Record("words", "Ava Mia Smith"), Record("sentence", "Ava was born.")]
    rows = [fake_scores(r) for r in records]
    for spaces in (False, True):
        config = AugmentConfig(
            "random", alpha=1.0, copies=3, drop_style="space" if spaces else "delete"
        )
        with pytest.warns(DroppedDataWarning, match=r"^3 of 6 augmented copies lost every token"):
            out = augment(records, rows, config)
        assert [r["id"] for r in out] == ["words#0", "sentence#0", "sentence#1", "sentence#2",
                                          "sentence#3"]  # fmt: skip
        assert all(r["text"].strip() for r in out)
        write_rows(tmp_path / "aug.jsonl", out)
        assert len(read_corpus(tmp_path / "aug.jsonl")) == 5  # what training reads


# --------------------------------------------------------------------------- exact numbers
#
# The drops' randomness, the rankings and the protected spans, pinned to their definitions.


PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=100)
MASK64 = (1 << 64) - 1


def splitmix64_uniform(seed, text_id, copy, token):
    """The module docstring's uniform, in Python integers: splitmix64 of key + (copy << 32 |
    token) * golden, key the first 8 bytes (little-endian) of sha256(seed NUL id)."""
    digest = hashlib.sha256(f"{seed}\x00{text_id}".encode()).digest()[:8]
    key = int.from_bytes(digest, "little")
    z = (key + ((copy << 32) | token) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return (z >> 11) / 2**53


@PROPERTY
@given(
    seed=st.integers(0, 2**40),
    ids=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3),
    draws=st.lists(st.integers(0, 20), min_size=1, max_size=3),
    tokens=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
)
def test_uniforms_are_splitmix64_of_the_text_key_and_counter(seed, ids, draws, tokens):
    text_of = np.arange(len(tokens)) % len(ids)
    keys = augment_module.text_keys(seed, ids)[text_of]
    u = augment_module.uniforms(keys, np.array(tokens), np.array(draws))
    expected = [
        [splitmix64_uniform(seed, ids[t], d, tokens[k]) for k, t in enumerate(text_of)]
        for d in draws
    ]
    assert u.dtype == np.float64 and u.tolist() == expected


def hand_row(record, cuts, eligible=None, contrast=None):
    """Scores of `record` cut into tokens at `cuts` (after a BOS), each token its own span."""
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    tokens = ["<s>", *(record.text[a:b] for a, b in spans)]
    eligible = eligible or [False] + [any(c.isalnum() for c in t) for t in tokens[1:]]
    contrast = contrast or [0.0] * len(tokens)
    return TextScores(
        record.id, record.sha256, tokens, [(0, 0), *spans], eligible, {}, contrast, []
    )


def test_a_ranking_by_scores_reads_every_score_and_refuses_non_finite_ones():
    # Built here, not taken from RANK_BY: the registry's entries are made at import.
    rank_by = augment_module._by_scores(augment_module._contrast_scores)
    a, b = Record("a", "x y"), Record("b", "z.")
    rows = [
        hand_row(a, [0, 1, 3], contrast=[0.0, 0.5, -0.25]),
        hand_row(b, [0, 1, 2], contrast=[0.0, 2.0, float("nan")]),  # "." is never ranked
    ]
    tok = augment_module._tokens(rows)
    config = AugmentConfig()
    assert rank_by(rows, tok, config)[:5].tolist() == [0.0, 0.5, -0.25, 0.0, 2.0]
    by_role = augment_module._by_scores(augment_module._attention_scores)
    rows[0].scores = {"large": [0.0, 1.0, 2.0], "model": [0.0, 3.0, 4.0]}
    assert by_role(
        rows[:1], augment_module._tokens(rows[:1]), AugmentConfig(score_of="model")
    ).tolist() == [0.0, 3.0, 4.0]
    rows[1].contrast[1] = float("inf")
    with pytest.raises(AugmentError, match="^text 'b': a score is not finite$"):
        rank_by(rows, tok, config)
    rows[1].contrast = [0.0, 1.0]
    with pytest.raises(AugmentError, match="^text 'b': 2 scores for 3 tokens$"):
        rank_by(rows, tok, config)


def test_a_token_that_only_touches_a_protected_span_stays_ranked():
    # " abc" ends where the span " def" begins, "xyz" before it: neither overlaps
    record = Record("r", "xyz abc def", spans={"x": (7, 11)})
    row = hand_row(record, [0, 3, 7, 11])
    config = AugmentConfig("position", alpha=0.5, beta=1.0, protect=("x",))
    assert drop_probabilities([row], config, [record]).tolist() == [
        0.0,
        0.0,
        0.5 * (1 - math.exp(-1.0)),
        0.0,
    ]


def test_token_views_give_each_token_its_rank_and_keep_probability():
    record = Record("r", "Ann Lee.")
    row = hand_row(record, [0, 3, 7, 8])
    views = augment_module.token_views(record, row, AugmentConfig("position", 0.5, 1.0))
    assert [(v.text, v.rank, v.eligible) for v in views] == [
        ("Ann", 0, True),
        (" Lee", 1, True),
        (".", -1, False),
    ]
    assert [v.keep for v in views] == [1.0, 1 - 0.5 * (1 - math.exp(-1.0)), 1.0]


def test_bad_scores_and_options_name_what_is_wrong():
    record = Record("r", "Ann Lee", spans={"name": (0, 7), "date": (0, 3)})
    row = hand_row(record, [0, 3, 7])
    with pytest.raises(AugmentError, match="the scores hold none$"):
        augment_module._contrast_scores(dataclasses.replace(row, contrast=None), AugmentConfig())
    with pytest.raises(AugmentError, match="the scores hold model, small$"):
        augment_module._contrast_scores(
            dataclasses.replace(
                row, contrast=None, scores={"small": [0.0] * 3, "model": [0.0] * 3}
            ),
            AugmentConfig(),
        )
    with pytest.raises(AugmentError, match="role 'large'; the scores hold none$"):
        augment_module._attention_scores(row, AugmentConfig("attention", score_of="large"))
    with pytest.raises(
        AugmentError,
        match="^--score-of is needed: the scores hold roles large, model, none 'small'$",
    ):
        augment_module.resolve_role(["model", "large"], None)
    with pytest.raises(AugmentError, match="^protect needs the records whose spans it names$"):
        drop_probabilities([row], AugmentConfig(protect=("name",)))
    with pytest.raises(
        AugmentError, match=r"^text 'r' has no span 'city' to protect \(its spans: name, date\)$"
    ):
        drop_probabilities([row], AugmentConfig(protect=("city",)), [record])
    short = dataclasses.replace(row, offsets=row.offsets[:-1])
    with pytest.raises(
        AugmentError, match="^text 'r': tokens, offsets and eligible differ in length$"
    ):
        drop_probabilities([short], AugmentConfig())


# --------------------------------------------------------------------------- written copies
#
# `augment`'s rows, end to end, against a plain-Python reference: the splitmix64 uniforms, the
# drop probabilities written out, and the text rebuilt token by token (`reference_text`).


def reference_augment(records, rows, config):
    """Slow reference of `augment`: per record and copy 1..K, token t is kept when its uniform
    is at least its drop probability; the copy's text is `reference_text` of the kept tokens
    (one space per dropped token with drop_style space); blank copies are left out. Returns
    (rows, blank copies)."""
    out, blank = [], 0
    for record, row in zip(records, rows, strict=True):
        n = len(row.tokens)
        if config.policy in ("none", "plain"):
            p = [0.0] * n
        elif config.policy == "random":
            rate = config.alpha if config.random_drop == "alpha" else 1 - config.alpha
            p = [rate if e else 0.0 for e in row.eligible]
        else:
            p = reference_drop(row, config.policy, config.alpha, config.beta)
        for k in range(1 if config.policy == "plain" else config.copies + 1):
            u = [splitmix64_uniform(config.seed, record.id, k, t) for t in range(n)]
            keep = [1 if k == 0 or u[t] >= p[t] else 0 for t in range(n)]
            text = reference_text(
                record.text,
                row.offsets,
                keep,
                " " * (config.drop_style == "space"),
                per_char=config.drop_style == "spaces-per-char",
            )
            if not text.strip():
                blank += 1
                continue
            out.append(
                {
                    "id": f"{record.id}#{k}",
                    "source_id": record.id,
                    "policy": config.policy,
                    "copy": k,
                    "text": text,
                    "keep": keep,
                }
            )
    return out, blank


@st.composite
def tokenized_texts(draw):
    """A text over letters, digits, punctuation and several kinds of whitespace, and tokens
    whose starts never go back: gaps, overlaps (shared characters), empty tokens."""
    text = draw(
        st.text(alphabet="ab9.,- \t\n\u3000é東🙂", min_size=1, max_size=14).filter(str.strip)
    )
    # distinct starts: drawn freely most would be 0, and no token would follow a gap
    starts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=7, unique=True)))
    n = len(starts)
    offsets = [(s, draw(st.integers(s, len(text)))) for s in starts]
    eligible = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    contrast = draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))
    return text, offsets, eligible, contrast


@PROPERTY
@example(  # gaps before a text's first token: whitespace (goes with it), other (stays)
    texts=[("  ab.", [(2, 4)], [True], [0.0]), ("x cd.", [(2, 4)], [True], [0.0])],
    policy="random",
    alpha=1.0,
    beta=0.0,
    copies=1,
    seed=0,
    style="delete",
    random_drop="alpha",
    chunk=3,
)
@given(
    texts=st.lists(tokenized_texts(), min_size=1, max_size=4),
    policy=st.sampled_from(["none", "plain", "random", "contrast", "position"]),
    alpha=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    beta=st.sampled_from([0.0, 0.5, 3.0]),
    copies=st.integers(0, 4),
    seed=st.integers(0, 2**33),
    style=st.sampled_from(["delete", "space", "spaces-per-char"]),
    random_drop=st.sampled_from(["alpha", "1-alpha"]),
    chunk=st.integers(1, 3),
)
def test_augmented_rows_are_the_plain_python_reference(
    texts, policy, alpha, beta, copies, seed, style, random_drop, chunk
):
    records, rows = [], []
    for n, (text, offsets, eligible, contrast) in enumerate(texts):
        record = Record(f"t{n}", text)
        tokens = [text[a:b] for a, b in offsets]
        records.append(record)
        rows.append(TextScores(record.id, record.sha256, tokens, offsets, eligible, {}, contrast))
    config = AugmentConfig(
        policy, alpha, beta, copies, seed, drop_style=style, random_drop=random_drop
    )
    expected, blank = reference_augment(records, rows, config)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(augment_module, "CHUNK", chunk)  # texts sampled `chunk` at a time
        got = augment(records, rows[::-1], config)  # scores are matched by id, not order
    assert json.dumps(got) == json.dumps(expected)  # the bytes written: keep as 0/1 integers
    messages = [str(w.message) for w in caught if issubclass(w.category, DroppedDataWarning)]
    total = len(records) * copies
    assert messages == (
        [
            f"{blank} of {total} augmented copies lost every token (policy {policy}, "
            f"alpha {alpha:g}) and are not written"
        ]
        if blank
        else []
    )


def test_spaces_per_char_keeps_every_copy_as_long_as_its_text(bios):
    rows_in = [fake_scores(r, seed=3) for r in bios[:6]]
    config = AugmentConfig("random", 0.5, copies=5, drop_style="spaces-per-char")
    rows = augment(bios[:6], rows_in, config)
    dropped = 0
    for out in rows:
        text = bios[int(out["source_id"][1:])].text
        assert len(out["text"]) == len(text)
        # every character is the text's own or a space where a token was dropped
        assert all(a == b or a == " " for a, b in zip(out["text"], text, strict=True))
        dropped += out["text"] != text
    assert dropped > len(rows) // 2


def test_random_drop_one_minus_alpha_is_the_authors_rate(bios):
    rows_in = [fake_scores(r, seed=4) for r in bios[:6]]
    paper = drop_probabilities(rows_in, AugmentConfig("random", 0.8))  # [tokens of all rows]
    authors = drop_probabilities(rows_in, AugmentConfig("random", 0.8, random_drop="1-alpha"))
    eligible = np.array([e for row in rows_in for e in row.eligible])
    assert eligible.any() and not eligible.all()
    assert (paper == np.where(eligible, 0.8, 0.0)).all()
    assert authors == pytest.approx(np.where(eligible, 0.2, 0.0))
    with pytest.raises(AugmentError, match="^--random-drop must be one of alpha, 1-alpha"):
        AugmentConfig(random_drop="half").validate()
    with pytest.raises(AugmentError, match="^--drop-style must be one of delete, space"):
        AugmentConfig(drop_style="blank").validate()


def test_plain_trains_each_original_once_whatever_the_copies(bios):
    rows_in = [fake_scores(r, seed=5) for r in bios[:6]]
    for copies in (0, 3, 10):
        rows = augment(bios[:6], rows_in, AugmentConfig("plain", copies=copies))
        assert [(r["source_id"], r["copy"]) for r in rows] == [(b.id, 0) for b in bios[:6]]
        assert [r["text"] for r in rows] == [b.text for b in bios[:6]]
    # `none`, step-matched, trains copies + 1 originals of each text
    assert len(augment(bios[:6], rows_in, AugmentConfig("none", copies=3))) == 4 * 6
