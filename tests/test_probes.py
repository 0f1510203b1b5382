"""Knowledge probes: candidate log-probabilities against a slow reference, distractors, cloze
prompts against the biography spans, and the probes inside `evaluate_qa`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from elusive.corpus.bios import FIELDS, TEMPLATES, BiosConfig, generate_bios
from elusive.corpus.records import QAItem
from elusive.evaluation.evaluate import EvalConfig, evaluate_qa
from elusive.evaluation.probes import (
    CandidateScore,
    cache_argument,
    candidates,
    judge,
    left_pad,
    model_cache,
    pad_id,
    pick_distractors,
    probe,
    score_candidates,
)
from elusive.metrics import normalize_answer
from elusive.models import load_model


def _reference_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """Slow reference: one unpadded forward of prompt + " answer", sum of the answer tokens'
    log-probabilities read off the full log-softmax."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ids = torch.tensor([prompt_ids + answer_ids], device=model.device)
        logits = model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(logp[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(answer_ids))


def test_candidate_logprobs_equal_a_hand_computed_sum(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    prompts = [
        "Question: Where was Liam Thompson born?\nAnswer:",
        "Ann",
        "A much longer prompt, so that the batch is left-padded: Liam Thompson was born on",
    ]
    candidates = [["Melbourne", "New York, NY", "Paris"], ["Lee Smith"], ["January 5, 1990"]]
    got = score_candidates(model, tok, prompts, candidates, batch_size=2, progress=False)
    for prompt, cands, scores in zip(prompts, candidates, got, strict=True):
        assert len(scores) == len(cands)
        for cand, score in zip(cands, scores, strict=True):
            n = len(tok(" " + cand, add_special_tokens=False)["input_ids"])
            assert score.tokens == n
            ref = _reference_logprob(model, tok, prompt, cand)
            assert score.total == pytest.approx(ref, abs=1e-4)
            assert score.mean == pytest.approx(ref / n, abs=1e-4)
    # One prompt at a time gives the same numbers as left-padded batches.
    alone = score_candidates(model, tok, prompts, candidates, batch_size=1, progress=False)
    for a, b in zip(alone, got, strict=True):
        assert [x.total for x in a] == pytest.approx([x.total for x in b], abs=1e-4)


def test_a_model_overfit_on_a_fact_ranks_it_first(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    people = generate_bios(BiosConfig(n=12, seed=3))[1]
    dates = [q for q in people if q.field == "date"]
    item = QAItem("x", "liam", "?", (dates[0].answers[0],), "date", "Liam Thompson was born on")
    items = [item, *dates[1:]]
    wrong = pick_distractors(items, k=9, seed=0)[:1]

    def measure():
        return probe(model, tok, [item.cloze], [item], wrong, progress=False)[0]

    before = measure()
    fact = f"{item.cloze} {item.answers[0]}."
    ids = torch.tensor([tok(fact)["input_ids"]], device=model.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    after = measure()
    assert after["choice"] == 1.0
    assert after["logprob"] > before["logprob"] + 1.0
    assert after["logprob"] > -0.5  # near-certain, token by token


def test_distractors_same_field_never_gold_and_seeded():
    items = generate_bios(BiosConfig(n=30, seed=1))[1]
    items.append(QAItem("dup", "p-dup", "?", (items[1].answers[0],), items[1].field))
    draws = pick_distractors(items, k=9, seed=4)
    assert draws == pick_distractors(items, k=9, seed=4)
    assert draws != pick_distractors(items, k=9, seed=5)
    values = {f: {normalize_answer(q.answers[0]) for q in items if q.field == f} for f in FIELDS}
    for item, wrong in zip(items, draws, strict=True):
        golds = {normalize_answer(a) for a in item.answers}
        norm = [normalize_answer(w) for w in wrong]
        assert len(wrong) == 9 and len(set(norm)) == 9
        assert not golds & set(norm)  # a shared value (the duplicate) is never a distractor
        assert set(norm) <= values[item.field]
    # The draw of an item depends on its id, not on the other items' order.
    shuffled = items[::-1]
    again = dict(zip((q.id for q in shuffled), pick_distractors(shuffled, 9, 4), strict=True))
    assert all(again[q.id] == w for q, w in zip(items, draws, strict=True))
    # Fewer candidates than k: all of them.
    two = [QAItem("a", "a", "?", ("x",)), QAItem("b", "b", "?", ("y",))]
    assert pick_distractors(two, k=9) == [("y",), ("x",)]


@pytest.mark.parametrize(
    "config",
    [
        BiosConfig(n=40, seed=0),
        BiosConfig(n=40, seed=1, templates=len(TEMPLATES["date"])),
        BiosConfig(n=40, seed=2, templates=3, field_order=("company", *FIELDS[:-1])),
        BiosConfig(n=40, seed=3, templates=6, shuffle_sentences=True),
    ],
)
def test_cloze_prompts_start_with_the_name_and_stop_before_the_value(config):
    records, questions = generate_bios(config)
    by_person = {r.id: r for r in records}
    for q in questions:
        record = by_person[q.source_id]
        name, pronoun = record.meta["name"], {"male": "He", "female": "She"}[record.meta["gender"]]
        start = record.spans[q.field][0]
        # The sentence holding the value, from its first word up to the value (space dropped).
        before = record.text[:start]
        sentence = before[before.rfind(". ") + 2 if ". " in before else 0 :].rstrip()
        if sentence.startswith(name):
            want = sentence
        else:
            assert sentence.startswith(pronoun)
            want = name + sentence[len(pronoun) :]
        assert q.cloze == want and q.cloze.startswith(name)
        assert record.text[start:].startswith(q.answers[0])


def test_evaluate_qa_adds_every_probe_and_is_deterministic(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    items = generate_bios(BiosConfig(n=6, seed=7))[1]
    items.append(QAItem("no-cloze", "s", "Who?", ("a b",), "date"))
    config = EvalConfig(max_new_tokens=4, batch_size=4, choices=3)
    first = evaluate_qa(model, tok, items, config, progress=False)
    again = evaluate_qa(model, tok, items, config, progress=False)
    assert first.predictions == again.predictions
    for row in first.predictions:
        assert len(row["distractors"]) == 3 and row["choice"] in (0.0, 1.0)
        assert row["logprob"] < 0
        assert ("cloze_em" in row) == (row["id"] != "no-cloze")
    score = first.scores["date"]
    assert score.n == 7 and score.cloze_em is not None and score.cloze_logprob < 0
    rows = [r for r in first.predictions if r["field"] == "date"]
    assert score.choice == pytest.approx(sum(r["choice"] for r in rows) / 7)
    assert score.cloze_choice == pytest.approx(sum(r["cloze_choice"] for r in rows[:-1]) / 6)
    off = evaluate_qa(model, tok, items, EvalConfig(max_new_tokens=4, probes=False), progress=False)
    assert off.scores["date"].choice is None and off.scores["date"].em == score.em


def test_scores_on_the_generation_cache_equal_a_fresh_prompt_pass(tiny_model_dir):
    from elusive.evaluation.evaluate import answer_and_score, generate_continuations, prompt_parts

    model, tok = load_model(tiny_model_dir)
    items = generate_bios(BiosConfig(n=5, seed=9))[1]
    config = EvalConfig(max_new_tokens=5, batch_size=7, shots=2, mixed_precision="no")
    parts = prompt_parts(items, config)
    prompts = [examples + asked for examples, asked in parts]  # left padding in every batch
    cands = [[*q.answers, *w] for q, w in zip(items, pick_distractors(items, 4), strict=True)]
    texts, scores = answer_and_score(model, tok, prompts, config, False, cands)
    assert texts == generate_continuations(model, tok, prompts, config, progress=False)
    # the solved examples run once per group, each row continuing their cache through a hole
    prefixes = [examples for examples, _ in parts]
    _, shared = answer_and_score(model, tok, prompts, config, False, cands, prefixes=prefixes)
    fresh = score_candidates(model, tok, prompts, cands, batch_size=3, progress=False)
    for got, reused, want in zip(scores, shared, fresh, strict=True):
        assert [s.tokens for s in got] == [s.tokens for s in reused] == [s.tokens for s in want]
        assert [s.total for s in got] == pytest.approx([s.total for s in want], abs=1e-4)
        assert [s.total for s in reused] == pytest.approx([s.total for s in want], abs=1e-4)


def _canned_answers(model, tokenizer, prompts, config, progress, cands, shared, prefixes=None):
    """`answer_and_score` without a model: empty answers, every candidate scored alike."""
    from elusive.evaluation.probes import CandidateScore

    return [""] * len(prompts), [[CandidateScore(-1.0, 1)] * len(c) for c in cands]


def test_fewer_distractors_than_asked_are_warned_once_and_recorded(monkeypatch, tmp_path):
    """A field with too few other answers gives its questions fewer than `choices` distractors
    (chance above 1/(choices+1)): one warning counts them, metrics.json records where."""
    import json
    import warnings

    import elusive.evaluation.evaluate as ev
    from elusive.evaluation.evaluate import write_eval
    from elusive.evaluation.probes import distractor_shortage
    from elusive.io import DroppedDataWarning

    items = [QAItem(f"d{i}", f"p{i}", "When?", (f"day {i}",), "date") for i in range(12)]
    items += [QAItem(f"c{i}", f"p{i}", "Where?", (city,), "city") for i, city in enumerate("xyz")]
    items.append(QAItem("c3", "p3", "Where?", ("Z.",), "city"))  # the same city as z
    draws = pick_distractors(items, k=9)
    assert [len(d) for d in draws] == [9] * 12 + [2] * 4
    short = {"city": {"questions": 4, "fewest": 2}, "overall": {"questions": 4, "fewest": 2}}
    assert distractor_shortage(items, draws, 9) == short
    assert distractor_shortage(items, draws, 2) == {}
    draws[0] = draws[0][:1]  # one date question with a single distractor
    assert distractor_shortage(items, draws, 9) == {
        "date": {"questions": 1, "fewest": 1},
        "city": {"questions": 4, "fewest": 2},
        "overall": {"questions": 5, "fewest": 1},
    }

    monkeypatch.setattr(ev, "answer_and_score", _canned_answers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_qa(None, None, items, EvalConfig(choices=9), progress=False)
    lines = [str(w.message) for w in caught if issubclass(w.category, DroppedDataWarning)]
    assert lines == [
        "4 of 16 questions get fewer distractors than the 9 asked (as few as 2; city 4): "
        "their choice's chance is above 1/10"
    ]
    assert result.warnings == {"fewer_distractors": {"choices": 9, "fields": short}}
    metrics, _ = write_eval(tmp_path, result, {"model": "m"})
    saved = json.loads(metrics.read_text())
    assert saved["warnings"]["fewer_distractors"] == {"choices": 9, "fields": short}
    assert list(saved["scores"]) == ["date", "city", "overall"]  # the scores are as they were

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enough = evaluate_qa(None, None, items, EvalConfig(choices=2), progress=False)
    assert enough.warnings == {} and not caught
    assert json.loads(write_eval(tmp_path, enough, {})[0].read_text())["warnings"] == {}


# --------------------------------------------------------------------------- exact numbers
#
# `judge` and the helpers around the forward passes, pinned to their definitions.


PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150)
SCORE = st.builds(CandidateScore, st.integers(-40, 0).map(float), st.integers(1, 4))


@PROPERTY
@given(golds=st.lists(SCORE, min_size=1, max_size=3), others=st.lists(SCORE, max_size=4))
def test_judge_choice_is_a_strict_win_and_logprob_the_best_gold_mean(golds, others):
    item = QAItem("q", "s", "?", tuple(f"gold{k}" for k in range(len(golds))))
    wrong = tuple(f"wrong{k}" for k in range(len(others)))
    [row] = judge([item], [wrong], [[*golds, *others]])
    best = max(g.total for g in golds)
    if others:  # a tie is not a win: chance stays 1 / (k + 1) for a model that knows nothing
        assert row["choice"] == float(all(best > o.total for o in others))
    else:
        assert row["choice"] is None  # nothing to choose between
    assert row["logprob"] == max(g.total / g.tokens for g in golds)


def test_judge_and_candidates_refuse_lists_of_other_lengths():
    items = [QAItem("a", "a", "?", ("x",)), QAItem("b", "b", "?", ("y",))]
    assert candidates(items, [("y",), ("x", "z")]) == [["x", "y"], ["y", "x", "z"]]
    with pytest.raises(ValueError):
        candidates(items, [("y",)])
    with pytest.raises(ValueError):
        judge(items, [("y",), ("x",)], [[CandidateScore(-1.0, 1)] * 2])


def test_left_pad_right_aligns_integer_ids_and_mask():
    ids, mask = left_pad([[5, 6, 7], [8]], pad=0)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_pad_id_is_the_pad_token_else_eos():
    assert pad_id(SimpleNamespace(pad_token_id=3, eos_token_id=9)) == 3
    assert pad_id(SimpleNamespace(pad_token_id=0, eos_token_id=9)) == 0
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=9)) == 9


def test_the_cache_goes_by_the_name_each_transformers_version_uses():
    class Current:  # transformers 5.x
        def forward(self, input_ids, cache=None, **kwargs): ...

    class Older:  # transformers 4.x
        def forward(self, input_ids, past_key_values=None, **kwargs): ...

    assert cache_argument(Current(), "kv") == {"cache": "kv"}
    assert cache_argument(Older(), "kv") == {"past_key_values": "kv"}
    assert model_cache({"logits": 0, "cache": "kv"}) == "kv"
    assert model_cache({"logits": 0, "past_key_values": "old"}) == "old"


def test_candidates_scored_one_row_per_forward_equal_the_hand_computed_sum(
    tiny_model_dir, monkeypatch
):
    # One row per forward: every group reuses the prompts' cache, and some hold a two-token
    # candidate alone (its only forward is of token 0).
    import elusive.evaluation.probes as probes

    monkeypatch.setattr(probes, "ROWS_PER_FORWARD", 1)
    model, tok = load_model(tiny_model_dir)
    prompts = ["Liam Thompson was born in", "Question: Who?\nAnswer:"]
    cands = [["a", "Paris", "New York", "New York, NY"], ["January 5, 1990", "x y", "Lee"]]
    lengths = {len(tok(" " + c, add_special_tokens=False)["input_ids"]) for c in sum(cands, [])}
    assert {1, 2} <= lengths and max(lengths) > 2
    got = score_candidates(model, tok, prompts, cands, batch_size=2, progress=False)
    for prompt, row, scores in zip(prompts, cands, got, strict=True):
        for cand, score in zip(row, scores, strict=True):
            assert score.total == pytest.approx(
                _reference_logprob(model, tok, prompt, cand), abs=1e-4
            )
