import dataclasses
import json
import shutil

import pytest
import torch

from elusive.corpus.bios import BiosConfig, generate_bios
from elusive.corpus.records import QAItem
from elusive.evaluation import evaluate
from elusive.evaluation.evaluate import (
    EvalConfig,
    answer_and_score,
    build_prompts,
    cut_answer,
    evaluate_checkpoint,
    evaluate_qa,
    generate_continuations,
    load_for_eval,
    prompt_parts,
    write_eval,
)
from elusive.io import DroppedDataWarning
from elusive.metrics import aggregate, best_scores
from elusive.models import ModelSpecError
from elusive.tiny import make_tiny_model
from elusive.training.train import TrainConfig, train

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


@pytest.mark.parametrize(
    "text",
    [
        " January 5, 1990. He spent his early years in Roseville, CA.",
        " St. Louis, MO. He received",
        " Washington D.C.. He",
        " Caterpillar Inc. He had a role. Then",
        "\n\n Boston\nQuestion: x",
        " Is it Paris? No. Yes",
        " no sentence end at all",
    ],
)
def test_generation_stops_where_the_answer_is_decided(text):
    """Once `answer_complete` holds for a prefix it holds for every longer one, and every such
    prefix cuts to the full text's answer: stopping there changes no answer."""
    from elusive.evaluation.evaluate import answer_complete

    done = [n for n in range(len(text) + 1) if answer_complete(text[:n])]
    if text == " no sentence end at all":
        assert not done  # only the token limit or EOS stops it
        return
    assert done == list(range(done[0], len(text) + 1))  # once decided, it stays decided
    assert all(cut_answer(text[:n]) == cut_answer(text) for n in done)


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
    import elusive.evaluation.evaluate as ev

    golds = [q.answers[0] for q in bios_qa]
    canned = [
        f" {g}. He was" if i % 3 == 0 else f" {g.split()[0]} Smith\nQuestion:" if i % 3 == 1 else ""
        for i, g in enumerate(golds)
    ]
    monkeypatch.setattr(
        ev, "answer_and_score", lambda m, t, prompts, c, p, cands, shared, **kw: (canned, None)
    )
    result = evaluate_qa(None, None, bios_qa, EvalConfig(probes=False), progress=False)
    rows = [
        dict(
            zip(
                ("field", "em", "f1"),
                (q.field, *best_scores(cut_answer(o), q.answers)),
                strict=True,
            )
        )
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
        assert want.startswith(got) and cut_answer(want) == cut_answer(got)


def test_a_row_that_stops_leaves_the_batch_and_the_others_go_on_as_before(tiny_model_dir, bios_qa):
    """Greedy decoding feeds each row its tokens but the last and nothing more: a row that
    stops (here at a token made its EOS) leaves the batch, the others' tokens unchanged."""
    from types import SimpleNamespace

    from elusive.evaluation.probes import left_pad, model_cache, pad_id, prompt_pass
    from elusive.models import load_model

    model, tok = load_model(tiny_model_dir)
    prompts = build_prompts(bios_qa[::6][:5], EvalConfig(shots=1), pool=bios_qa[10:])
    ids, mask = left_pad(tok(prompts)["input_ids"], pad_id(tok))  # rows of unequal length
    fed = []  # rows of every decoding step's forward pass
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )

    def decode(tokenizer):
        out = prompt_pass(model, ids, mask)
        fed.clear()
        return evaluate.greedy_tokens(
            model, tokenizer, out.logits[:, -1], model_cache(out), mask, max_new_tokens=8
        )

    with torch.no_grad():
        before = decode(tok)
        assert sum(fed) == sum(len(t) - 1 for t in before)
        # a token only one row makes, not its last: made EOS, that row stops there
        row, at, token = next(
            (r, j, t)
            for r, tokens in enumerate(before)
            for j, t in enumerate(tokens[:-1])
            if all(t not in other for k, other in enumerate(before) if k != r)
        )
        after = decode(SimpleNamespace(eos_token_id=token, decode=tok.decode))
    hook.remove()
    assert after[row] == before[row][: at + 1]
    assert [t for k, t in enumerate(after) if k != row] == [
        t for k, t in enumerate(before) if k != row
    ]
    assert sum(fed) == sum(len(t) - 1 for t in after) < sum(len(t) - 1 for t in before)


def test_shared_examples_run_once_and_answer_as_the_whole_prompts(
    tiny_model_dir, bios_qa, monkeypatch
):
    """k-shot prompts grouped by their solved examples (three sets, groups split over batches,
    batches spanning two groups, rows of different lengths) give the greedy answers and probe
    scores of the prompts run whole, the examples running once per batch, not per question;
    0-shot prompts run as they did."""
    from elusive.evaluation.probes import candidates, pick_distractors
    from elusive.models import load_model

    model, tok = load_model(tiny_model_dir)
    items = bios_qa[:20]
    config = EvalConfig(max_new_tokens=5, shots=2, batch_size=3, mixed_precision="no")
    parts = prompt_parts(items, config)
    prompts = [examples + asked for examples, asked in parts]
    prefixes = [examples for examples, _ in parts]
    groups = {p: prefixes.count(p) for p in prefixes}
    assert len(groups) == 3 and max(groups.values()) > config.batch_size
    cands = candidates(items, pick_distractors(items, 3))
    own = max(len(tok(asked)["input_ids"]) for _, asked in parts) + 1  # +1: a merged boundary
    assert min(len(tok(p)["input_ids"]) for p in prefixes) > own

    fed = []  # [batch, tokens] of every forward pass
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    greedy, calls = evaluate.greedy_tokens, []
    monkeypatch.setattr(evaluate, "greedy_tokens", lambda *a: calls.append(1) or greedy(*a))
    whole = answer_and_score(model, tok, prompts, config, False, cands)
    whole_fed, whole_calls = list(fed), len(calls)
    fed.clear()
    calls.clear()
    got = answer_and_score(model, tok, prompts, config, False, cands, prefixes=prefixes)
    hook.remove()
    assert got[0] == whole[0]
    for shared_scores, whole_scores in zip(got[1], whole[1], strict=True):
        assert [s.tokens for s in shared_scores] == [s.tokens for s in whole_scores]
        totals = [s.total for s in whole_scores]
        assert [s.total for s in shared_scores] == pytest.approx(totals, abs=1e-5)
    # Only the examples run more tokens than a question has: each batch's distinct ones, in one
    # forward (the next batch reuses them when it holds the same), not once per question.
    prefix_runs = [rows for rows, n in fed if n > own]
    assert prefix_runs and len(prefix_runs) <= -(-len(items) // config.batch_size)
    assert max(prefix_runs) == 2 and sum(prefix_runs) < len(items) / 2
    assert sum(b * n for b, n in fed) < sum(b * n for b, n in whole_fed)
    assert len(calls) == whole_calls == -(-len(items) // config.batch_size)  # as many batches

    zero = EvalConfig(max_new_tokens=5, batch_size=3, mixed_precision="no")
    zero_parts = prompt_parts(items[:7], zero)
    assert {examples for examples, _ in zero_parts} == {""}
    asked = [question for _, question in zero_parts]
    assert answer_and_score(model, tok, asked, zero, False, cands[:7]) == answer_and_score(
        model, tok, asked, zero, False, cands[:7], prefixes=[""] * 7
    )


def test_shared_tokens_stop_where_the_examples_tokens_merge_with_the_question(tiny_model_dir):
    """A prefix's last token can merge with the text after it: only the tokens every prompt
    starts with are shared, and each prompt keeps at least one token of its own."""
    from transformers import AutoTokenizer

    from elusive.evaluation.evaluate import _shared_length

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prefix, prompts = "Liam Thom", ["Liam Thompson was", "Liam Thomas is"]
    head, members = tok(prefix)["input_ids"], [tok(p)["input_ids"] for p in prompts]

    def common(a, b):  # slow reference: the length of the longest common start
        return max(n for n in range(min(len(a), len(b)) + 1) if a[:n] == b[:n])

    want = min(common(head, ids) for ids in members)
    assert want < len(head)  # "Thom" merges with what follows
    assert _shared_length(tok, prefix, members) == want
    assert _shared_length(tok, prefix, [*members, head]) == len(head) - 1
    assert _shared_length(tok, "", members) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_new_tokens": 0}, "--max-new-tokens must be >= 1, got 0"),
        ({"batch_size": -2}, "--batch-size must be >= 1, got -2"),
        ({"shots": -1}, "--shots must be >= 0, got -1"),
        ({"choices": 0}, "--choices must be >= 1, got 0"),
    ],
)
def test_eval_config_names_the_bad_option(change, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**change).validate()


def test_adapter_on_another_base_model_is_refused(tmp_path, monkeypatch):
    base = make_tiny_model(tmp_path / "base", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)  # same shapes, other weights
    records = generate_bios(BiosConfig(n=4, seed=1))[0]
    config = TrainConfig(model=str(base), epochs=1, batch_size=4)
    last = train(config, records, tmp_path / "run", progress=False)
    recorded = json.loads((last / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(base.resolve())
    with pytest.raises(ModelSpecError, match="trained on base model") as err:
        load_for_eval(str(other), last)
    assert str(base) in str(err.value) and str(other) in str(err.value)
    shutil.copytree(base, tmp_path / "copy")
    load_for_eval(str(tmp_path / "copy"), last)  # the same files elsewhere: the same model
    monkeypatch.chdir(tmp_path)
    load_for_eval("base", last)  # a relative path to the recorded folder


@pytest.mark.parametrize("native", [False, True])
def test_generation_autocasts_to_bf16_only_where_native(
    tiny_model_dir, bios_qa, monkeypatch, native
):
    import elusive.models
    from elusive.models import load_model

    monkeypatch.setattr(elusive.models, "native_bf16", lambda device: native)
    model, tok = load_model(tiny_model_dir)
    forward, seen, device = model.forward, [], model.device.type  # the GPU where there is one

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    prompts = build_prompts(bios_qa[:2], EvalConfig())
    generate_continuations(model, tok, prompts, EvalConfig(max_new_tokens=2), progress=False)
    # k-shot: the shared examples' own forward pass too
    parts = prompt_parts(bios_qa[:2], EvalConfig(shots=1), pool=bios_qa[5:])
    k_shot = [examples + asked for examples, asked in parts]
    prefixes = [examples for examples, _ in parts]
    answer_and_score(model, tok, k_shot, EvalConfig(max_new_tokens=2), False, prefixes=prefixes)
    assert seen and set(seen) == {torch.bfloat16 if native else False}
    with pytest.raises(ValueError, match="--mixed-precision must be auto or one of"):
        EvalConfig(mixed_precision="bf17").validate()


def test_under_autocast_a_checkpoint_is_evaluated_on_linears_stored_once_to_the_same_bits(
    tiny_model_dir, bios_qa, tmp_path, monkeypatch
):
    """evaluate_checkpoint under bf16 stores the model's linear layers in bf16 before
    answering, and answers and probes to the bits autocast over float32 weights gives."""
    import elusive.models

    config = EvalConfig(mixed_precision="bf16", shots=1, choices=2, max_new_tokens=4)
    model, tok = load_for_eval(str(tiny_model_dir))
    expected = evaluate_qa(model, tok, bios_qa, config, progress=False)
    stored, store = [], elusive.models.store_for_autocast

    def recording(model, dtype):
        stored.append((dtype, store(model, dtype)))
        return stored[-1][1]

    monkeypatch.setattr(elusive.models, "store_for_autocast", recording)
    got = evaluate_checkpoint(tmp_path, str(tiny_model_dir), None, bios_qa, config, {})
    layers = 7 * 2 + 1  # q, k, v, o, gate, up, down in each of 2 layers, and the head
    assert stored == [(torch.bfloat16, layers)]
    assert got.predictions == expected.predictions


def test_store_for_autocast_keeps_a_tied_head_and_gives_autocasts_bits(tiny_model_dir):
    from elusive.models import load_model, store_for_autocast

    model, tok = load_model(tiny_model_dir)
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as some models are
    ids = tok(["Anna was born in"], return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
        assert store_for_autocast(model, torch.bfloat16) == 7 * 2  # not the head
        after = model(input_ids=ids).logits
    assert model.lm_head.weight.dtype == torch.float32
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert torch.equal(before, after)


def test_a_metric_no_question_has_is_named_not_dropped(tiny_model_dir, tmp_path, monkeypatch):
    """Answers that all normalise to empty leave no distractor, so no ``choice``: the CLI says
    which scores lack it and why, and metrics.json lists it, instead of dropping it quietly."""
    from typer.testing import CliRunner

    import elusive.evaluation.evaluate as ev
    from elusive.cli import app
    from elusive.evaluation.probes import CandidateScore
    from elusive.io import DroppedDataWarning

    qa = tmp_path / "qa.jsonl"
    lines = [
        {"id": f"q{i}", "source_id": f"p{i}", "field": "date", "question": "When?",
         "answer": answer, "cloze": f"Person {i} was born on"}
        for i, answer in enumerate(["—", "...", "?!"])
    ]  # fmt: skip
    qa.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["evaluate", "--model", str(tiny_model_dir), "--qa", str(qa), "--out"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "eval"), "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    why = "no question there has a distractor (no other distinct answer in its field)"
    for metric in ("choice", "cloze_choice"):
        assert f"warning: {metric} is left out of the scores of date, overall: {why}\n" in (
            result.output
        )
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    missing = {key: {"choice": why, "cloze_choice": why} for key in ("date", "overall")}
    assert saved["warnings"]["missing_metrics"] == missing
    assert "choice" not in saved["scores"]["overall"] and "logprob" in saved["scores"]["overall"]

    # One field without distractors: only its scores lack choice, overall has it.
    def canned(model, tokenizer, prompts, config, progress, cands, shared, prefixes=None):
        gold_first = [CandidateScore(-0.5, 1), *[CandidateScore(-1.0, 1)] * 9]
        return [""] * len(prompts), [gold_first[: len(c)] for c in cands]

    monkeypatch.setattr(ev, "answer_and_score", canned)
    items = [QAItem(f"c{i}", f"p{i}", "Where?", (city,), "city") for i, city in enumerate("xy")]
    items.append(QAItem("d", "p0", "When?", ("—",), "date"))
    with pytest.warns(DroppedDataWarning, match="choice is left out of the scores of date: no"):
        mixed = evaluate_qa(None, None, items, EvalConfig(choices=1), progress=False)
    assert mixed.warnings["missing_metrics"] == {"date": {"choice": why}}
    assert mixed.scores["overall"].choice == 1.0 and mixed.scores["date"].choice is None


def test_questions_longer_than_the_context_are_counted_and_recorded(
    tiny_model_dir, bios_qa, tmp_path
):
    """A prompt (shots included) that with its answer tokens needs more positions than the
    model has is still answered, but counted in a warning and in metrics.json."""
    from elusive.io import DroppedDataWarning
    from elusive.models import load_model

    model, tok = load_model(tiny_model_dir)
    long = QAItem("long", "p-long", "Who " + "really " * 40 + "was it?", ("Ann",), "date")
    items = [*bios_qa[:4], long]  # one person's questions: each is the other's only shot
    zero_shot = EvalConfig(max_new_tokens=3, choices=2, batch_size=8)

    def need(text):
        return len(tok(text)["input_ids"]) + zero_shot.max_new_tokens

    *short, longest = (need(p) for p in build_prompts(items, zero_shot))
    model.config.max_position_embeddings = limit = max(*short, *(need(q.cloze) for q in bios_qa))
    with pytest.warns(DroppedDataWarning) as caught:
        result = evaluate_qa(model, tok, items, zero_shot, progress=False)
    lines = [str(w.message) for w in caught if "positions" in str(w.message)]
    assert lines == [
        f"1 of 5 questions need more than the model's {limit} positions (prompt, shots "
        f"included, plus the answer's new tokens; the longest {longest}): their answers come "
        "from positions it never learnt"
    ]
    want = {"context": limit, "longest": longest, "fields": {"date": 1, "overall": 1}}
    assert result.warnings["over_context"] == want
    assert result.scores["overall"].n == 5  # answered all the same
    metrics, _ = write_eval(tmp_path, result, {})
    assert json.loads(metrics.read_text())["warnings"]["over_context"] == want

    # every prompt holds the long question; without probes, no warning about distractors
    one_shot = dataclasses.replace(zero_shot, shots=1, probes=False)
    with pytest.warns(DroppedDataWarning, match="5 of 5 questions need more than"):
        shot = evaluate_qa(model, tok, items, one_shot, progress=False)
    fields = {"date": 2, "city": 1, "university": 1, "major": 1, "overall": 5}
    assert shot.warnings["over_context"]["fields"] == fields
    model.config.max_position_embeddings = shot.warnings["over_context"]["longest"]
    assert "over_context" not in evaluate_qa(model, tok, items, one_shot, progress=False).warnings


def test_probes_without_questions_get_cloze_metrics_only(tiny_model_dir, tmp_path):
    """Span-cloze probes (no question) beside one QA question: the probes' fields hold the
    cloze metrics alone, with no QA metric and no warning that one is missing; each probe's
    cloze log-prob and choice are those `elusive.evaluation.probes.probe` gives it alone."""
    import warnings

    from elusive.corpus.cloze import build_probes
    from elusive.corpus.records import Record
    from elusive.evaluation.probes import pick_distractors, probe
    from elusive.models import load_model

    texts = {
        "Oslo": "Oslo was founded in 1048. It lies 12 metres above the sea.",
        "Bergen": "Bergen was founded in 1070. It gets 2,250 millimetres of rain.",
        "Turku": "Turku was founded in 1229. Its harbour is 9 metres deep.",
    }
    records = [Record(title, text, meta={"title": title}) for title, text in texts.items()]
    probes = build_probes(records).items
    # a question whose distractors are the other towns' dates
    question = QAItem("q", "Oslo", "When was Oslo founded?", ("1048",), "all", kind="date")
    items = [question, *probes]
    model, tok = load_model(tiny_model_dir)
    # float32: the batched path and `probe` alone agree to 1e-4 there, not under bf16 autocast
    config = EvalConfig(max_new_tokens=3, choices=2, batch_size=4, mixed_precision="no")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_qa(model, tok, items, config, progress=False)
    assert not [w for w in caught if "left out" in str(w.message)]
    assert "missing_metrics" not in result.warnings
    cloze = {"cloze_em", "cloze_f1", "cloze_choice", "cloze_logprob"}
    for kind in ("date", "number"):
        assert set(result.scores[kind].present()) == cloze and result.scores[kind].n == 3
        assert result.scores[kind].em is None and result.scores[kind].choice is None
    assert {"em", "f1", "choice", "logprob"} <= set(result.scores["all"].present())
    assert result.scores["overall"].n == 7
    rows = {row["id"]: row for row in result.predictions}
    assert rows["q"]["question"] == question.question and "em" in rows["q"]
    distractors = pick_distractors(items, config.choices, config.probe_seed)
    alone = probe(model, tok, [p.cloze for p in probes], probes, distractors[1:], progress=False)
    for item, want in zip(probes, alone, strict=True):
        row = rows[item.id]
        assert "em" not in row and "question" not in row and "logprob" not in row
        assert row["cloze"] == item.cloze and row["distractors"] == list(
            distractors[items.index(item)]
        )
        assert row["cloze_logprob"] == pytest.approx(want["logprob"], abs=1e-4)
        assert row["cloze_choice"] == want["choice"]
    metrics, _ = write_eval(tmp_path, result, {})
    saved = json.loads(metrics.read_text())["scores"]
    assert set(saved["date"]) == cloze | {"n"}

    with pytest.warns(DroppedDataWarning, match="6 probes without a question are left out"):
        off = evaluate_qa(
            model, tok, items, dataclasses.replace(config, probes=False), progress=False
        )
    assert off.warnings["probe_only"] == 6 and [r["id"] for r in off.predictions] == ["q"]


def test_a_baseline_is_the_base_model_evaluated_untrained_beside(tmp_path):
    """`evaluate_model(..., baseline=base)`: OUT holds the adapter's evaluation as without a
    baseline, OUT/untrained what the base model alone gives, and both folders are checked
    before any work."""
    from elusive.evaluation.evaluate import evaluate_model
    from elusive.io import OutputError

    base = make_tiny_model(tmp_path / "base", seed=0)
    records, questions = generate_bios(BiosConfig(n=4, seed=1))
    config = TrainConfig(model=str(base), epochs=1, batch_size=4, lr=1e-2)
    last = train(config, records, tmp_path / "run", progress=False)
    options = EvalConfig(max_new_tokens=4)
    both = evaluate_model(
        str(base), questions, tmp_path / "both", last, options, progress=False, baseline=str(base)
    )
    alone = evaluate_model(str(base), questions, tmp_path / "alone", last, options, progress=False)
    untrained = evaluate_model(str(base), questions, tmp_path / "base-only", None, options)
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tmp_path / "both" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
    got = json.loads((tmp_path / "both" / "untrained" / "metrics.json").read_text())
    want = json.loads((tmp_path / "base-only" / "metrics.json").read_text())
    assert got == want and got["adapter"] is None
    assert (tmp_path / "both" / "untrained" / "predictions.jsonl").read_bytes() == (
        tmp_path / "base-only" / "predictions.jsonl"
    ).read_bytes()
    assert both.scores == alone.scores and both.baseline.scores == untrained.scores
    assert alone.baseline is None
    # trained on the corpus, the adapter's answers are not the base model's
    assert both.predictions != both.baseline.predictions

    (tmp_path / "refused" / "untrained" / "metrics.json").mkdir(parents=True)
    with pytest.raises(OutputError, match="untrained/metrics.json: is a folder"):
        evaluate_model(str(base), questions, tmp_path / "refused", last, baseline=str(base))
    assert not (tmp_path / "refused" / "metrics.json").exists()  # nothing evaluated first


def test_warnings_count_probes_as_probes(tiny_model_dir):
    """A shortage of distractors among probes without questions is counted in probes."""
    from elusive.corpus.cloze import build_probes
    from elusive.corpus.records import Record
    from elusive.models import load_model

    texts = {
        "Oslo": "Oslo was founded in 1048. It lies 12 metres above the sea.",
        "Bergen": "Bergen was founded in 1070. It gets 2,250 millimetres of rain.",
    }
    records = [Record(title, text, meta={"title": title}) for title, text in texts.items()]
    probes = build_probes(records).items
    model, tok = load_model(tiny_model_dir)
    config = EvalConfig(max_new_tokens=2, choices=3, batch_size=4)
    n = len(probes)
    with pytest.warns(DroppedDataWarning, match=rf"^{n} of {n} probes get fewer distractors"):
        evaluate_qa(model, tok, probes, config, progress=False)


def test_read_eval_gives_back_what_write_eval_wrote(tmp_path):
    """A folder's result read back (`run_table1` returns it): scores with QA metrics and with
    probes alone (EM and F1 None), the predictions and the warnings."""
    from elusive.evaluation.evaluate import EvalResult, read_eval, write_eval
    from elusive.metrics import FieldScore

    scores = {
        "date": FieldScore(em=0.5, f1=0.75, n=2, choice=1.0),
        "overall": FieldScore(em=None, f1=None, n=3, cloze_em=0.25, cloze_logprob=-1.5),
    }
    predictions = [{"id": "q0", "field": "date", "em": 1.0}, {"id": "q1", "field": "date"}]
    written = EvalResult(scores, predictions, {"choice": {"fewer distractors": 1}})
    write_eval(tmp_path, written, {"model": "m"})
    assert read_eval(tmp_path) == written
