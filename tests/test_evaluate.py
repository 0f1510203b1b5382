import json

import pytest
import torch

from elusive.corpus import BiosConfig, QAItem, generate_bios
from elusive.evaluate import (
    EvalConfig,
    aggregate,
    best_scores,
    build_prompts,
    cut_answer,
    evaluate_qa,
    exact_match,
    f1_score,
    generate_continuations,
    normalize_answer,
    write_eval,
)


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("The Walt Disney Company", "walt disney company"),
        ("  New   York, NY. ", "new york ny"),
        ("an apple a day", "apple day"),
        ("theater", "theater"),  # an article only as a whole word
        ("Smith-Jones", "smithjones"),  # punctuation is deleted, as in SQuAD
        ("«José» — Müller!", "josé müller"),  # Unicode punctuation goes, accents stay
        ("Cafe\u0301", "café"),  # NFC: decomposed and composed forms agree
        ("", ""),
    ],
)
def test_normalize(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match_ignores_case_punctuation_articles():
    assert exact_match("the University of Chicago.", "University of Chicago") == 1.0
    assert exact_match("University of Chicago", "Chicago University") == 0.0


def test_f1_hand_worked():
    # pred: [january, 5, 1990], gold: [january, 15, 1990] -> 2 common, P = R = 2/3
    assert f1_score("January 5, 1990", "January 15, 1990") == pytest.approx(2 / 3)
    # pred 4 tokens, gold 2, both gold tokens present -> P = 1/2, R = 1, F1 = 2/3
    assert f1_score("Dairy Queen and Burger", "Dairy Queen") == pytest.approx(2 / 3)
    # repeated tokens count by multiplicity: pred [new, new], gold [new, york] -> 1 common
    assert f1_score("new new", "new york") == pytest.approx(0.5)
    assert f1_score("Microsoft", "Apple") == 0.0


def test_empty_answers():
    assert exact_match("", "") == 1.0
    assert f1_score("", "") == 1.0
    assert f1_score("", "Apple") == 0.0
    assert f1_score("the", "Apple") == 0.0  # normalises to empty
    assert exact_match("", "Apple") == 0.0


def test_best_over_several_golds():
    assert best_scores("Denver Broncos", ["Broncos", "Denver Broncos"]) == (1.0, 1.0)
    em, f1 = best_scores("the Broncos", ["Denver Broncos", "Carolina Panthers"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        best_scores("x", [])


def test_aggregate_per_field_and_overall():
    scores = aggregate([("date", 1.0, 1.0), ("date", 0.0, 0.5), ("company", 1.0, 1.0)])
    assert list(scores) == ["date", "company", "overall"]
    assert scores["date"].em == 0.5 and scores["date"].f1 == 0.75 and scores["date"].n == 2
    assert scores["overall"].em == pytest.approx(2 / 3) and scores["overall"].n == 3
    assert aggregate([]) == {}


# --------------------------------------------------------------------------- closed-book QA


@pytest.mark.parametrize(
    "raw, answer",
    [
        (" January 5, 1990. He spent his early years", "January 5, 1990"),
        (" January 5, 1990.", "January 5, 1990"),
        (" St. Louis, MO. He received", "St. Louis, MO"),
        (" Port St. Lucie, FL\nQuestion: x", "Port St. Lucie, FL"),
        (" Washington D.C.. He", "Washington D.C."),
        (" Washington D.C.", "Washington D.C."),
        (" Caterpillar Inc.. He", "Caterpillar Inc."),
        (" C.H. Robinson Worldwide.", "C.H. Robinson Worldwide"),
        (" Sorbonne University", "Sorbonne University"),  # cut by the token limit
        ("\n\nBoston", "Boston"),  # leading blank lines are skipped
        (" Is it Paris? No", "Is it Paris"),
        ("", ""),
    ],
)
def test_cut_answer(raw, answer):
    assert cut_answer(raw) == answer


@pytest.fixture(scope="module")
def bios_qa():
    return generate_bios(BiosConfig(n=8, seed=5))[1]


def test_prompts_zero_and_k_shot(bios_qa):
    item = bios_qa[0]
    assert build_prompts([item], EvalConfig())[0] == f"Question: {item.question}\nAnswer:"
    prompts = build_prompts(bios_qa, EvalConfig(shots=5))
    assert prompts == build_prompts(bios_qa, EvalConfig(shots=5))  # deterministic
    assert prompts != build_prompts(bios_qa, EvalConfig(shots=5, shot_seed=1))
    by_question = {q.question: q for q in bios_qa}
    for item, prompt in zip(bios_qa, prompts, strict=True):
        blocks = prompt.split("\n\n")
        assert len(blocks) == 6 and blocks[-1] == f"Question: {item.question}\nAnswer:"
        shots = [by_question[b.split("\n")[0].removeprefix("Question: ")] for b in blocks[:5]]
        assert all(s.source_id != item.source_id for s in shots)  # other people only
        assert sorted(s.field for s in shots) == sorted({s.field for s in shots})  # one per field
        assert all(
            b.endswith(f"Answer: {s.answers[0]}") for b, s in zip(blocks, shots, strict=False)
        )
    with pytest.raises(ValueError, match="other people"):
        build_prompts(bios_qa[:5], EvalConfig(shots=1))  # five questions about one person


def test_evaluator_scores_agree_with_the_metric(bios_qa, monkeypatch, tmp_path):
    import elusive.evaluate as ev

    golds = [q.answers[0] for q in bios_qa]
    canned = [
        f" {g}. He was" if i % 3 == 0 else f" {g.split()[0]} Smith\nQuestion:" if i % 3 == 1 else ""
        for i, g in enumerate(golds)
    ]
    monkeypatch.setattr(ev, "generate_continuations", lambda m, t, prompts, c, p: canned)
    result = evaluate_qa(None, None, bios_qa, progress=False)
    rows = [
        (q.field, *best_scores(cut_answer(o), q.answers))
        for q, o in zip(bios_qa, canned, strict=True)
    ]
    assert result.scores == aggregate(rows)
    assert result.scores["overall"].n == len(bios_qa)
    assert 0 < result.scores["overall"].em < result.scores["overall"].f1 < 1
    assert [p["prediction"] for p in result.predictions][:2] == [
        golds[0],
        golds[1].split()[0] + " Smith",
    ]

    metrics, preds = write_eval(tmp_path, result, {"model": "m"})
    saved = json.loads(metrics.read_text())
    assert saved["model"] == "m" and saved["scores"]["date"]["em"] == result.scores["date"].em
    assert [json.loads(line)["id"] for line in preds.read_text().splitlines()] == [
        q.id for q in bios_qa
    ]


def _reference_greedy(model, tokenizer, prompt, max_new):
    """Slow reference: one prompt, no padding, no cache, argmax of the full forward each step."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    for _ in range(max_new):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + new], device=model.device)).logits[0, -1]
        new.append(int(logits.argmax()))
        if new[-1] == tokenizer.eos_token_id:
            break
    return tokenizer.decode(new, skip_special_tokens=True)


def test_left_padded_batches_match_one_by_one_greedy(tiny_model_dir, bios_qa):
    from elusive.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(tiny_model_dir)
    items = [*bios_qa[:4], QAItem("x", "s", "Who?", ("a",), "date")]  # prompt lengths differ
    # fp32: the reference below is an fp32 loop, whatever the CPU.
    config = EvalConfig(max_new_tokens=6, shots=1, batch_size=5, mixed_precision="no")
    prompts = build_prompts(items, config, pool=bios_qa[10:])
    batched = generate_continuations(model, tok, prompts, config, progress=False)
    single = generate_continuations(
        model,
        tok,
        prompts,
        EvalConfig(max_new_tokens=6, batch_size=1, mixed_precision="no"),
        progress=False,
    )
    assert batched == single
    for prompt, got in zip(prompts, batched, strict=True):
        want = _reference_greedy(model, tok, prompt, 6)
        assert want.startswith(got) and want.split("\n")[0] == got.split("\n")[0]


@pytest.mark.parametrize("native", [False, True])
def test_generation_autocasts_to_bf16_only_where_native(
    tiny_model_dir, bios_qa, monkeypatch, native
):
    import elusive.train
    from elusive.models import load_model

    monkeypatch.setattr(elusive.train, "native_bf16", lambda device: native)
    model, tok = load_model(tiny_model_dir)
    forward, seen = model.forward, []

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    prompts = build_prompts(bios_qa[:2], EvalConfig())
    generate_continuations(model, tok, prompts, EvalConfig(max_new_tokens=2), progress=False)
    assert seen and set(seen) == {torch.bfloat16 if native else False}
    with pytest.raises(ValueError, match="mixed_precision must be auto or one of"):
        EvalConfig(mixed_precision="bf17").validate()
