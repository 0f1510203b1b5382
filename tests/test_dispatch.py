"""Models larger than one device: a tiny model dispatched by a device map (split by max_memory
across the CPU and the disk) scores, answers and probes exactly as the whole model does."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus.bios import BiosConfig, generate_bios, write_bios
from elusive.evaluation.evaluate import EvalConfig, evaluate_qa, load_for_eval
from elusive.evaluation.probes import score_candidates
from elusive.experiment.config import ConfigError, load_config
from elusive.models import (
    ModelSpecError,
    check_placement,
    input_device,
    load_model,
    offloaded,
    quiet_peft,
)
from elusive.scoring.attention import attention_received, attention_row, score_corpus
from elusive.scoring.scores import read_scores
from elusive.tiny import make_tiny_model

TEXTS = [
    "Ava Mia Smith was born on May 2, 1970. She spent her early years in Boston, MA.",
    "He worked for Google.",
]


@pytest.fixture(autouse=True, scope="module")
def on_the_cpu():
    """Whole and split models both on the CPU, also on a GPU host: the tests compare splitting,
    not devices (the GPU test at the end splits across devices itself). One thread: tiny
    models run faster on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELUSIVE_DEVICE", "cpu")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """A tiny llama with 4 layers: enough for accelerate to split its layers by max_memory."""
    return make_tiny_model(tmp_path_factory.mktemp("deep"), layers=4)


def _budget(model_dir, share: float) -> dict[str, int]:
    """max_memory giving the CPU `share` of the model's bytes (the rest goes to the disk)."""
    model, _ = load_model(model_dir)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"cpu": int(total * share)}


@pytest.fixture(scope="module")
def whole(deep_dir):
    return load_model(deep_dir)


@pytest.fixture(scope="module", params=[0.8, 0.1])
def split(deep_dir, request):
    """The same model dispatched by max_memory: its first layers on the CPU and the others read
    from the disk (0.8), or all of it read from the disk (0.1: its first parameter is on the
    meta device, so inputs must go to `input_device`)."""
    model, tok = load_model(
        deep_dir, device_map="auto", max_memory=_budget(deep_dir, request.param)
    )
    assert "disk" in model.hf_device_map.values()
    return model, tok


def test_max_memory_splits_the_layers_across_cpu_and_disk(deep_dir):
    model, _ = load_model(deep_dir, device_map="auto", max_memory=_budget(deep_dir, 0.8))
    layers = {k: v for k, v in model.hf_device_map.items() if k.startswith("model.layers.")}
    assert set(layers.values()) == {"cpu", "disk"}, model.hf_device_map
    assert offloaded(model)
    assert input_device(model) == torch.device("cpu")


def _batch(tok):
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def test_dispatched_attention_scores_equal_the_whole_model(split, whole):
    model, tok = split
    ids, mask = _batch(tok)
    expected = attention_received(whole[0], ids, mask)
    torch.testing.assert_close(attention_received(model, ids, mask), expected, atol=1e-5, rtol=0)
    query = torch.tensor([5, 3])
    torch.testing.assert_close(
        attention_row(model, ids, query, mask),
        attention_row(whole[0], ids, query, mask),
        atol=1e-5,
        rtol=0,
    )


@pytest.fixture(scope="module")
def questions():
    return generate_bios(BiosConfig(n=4, seed=2))[1][:8]


def test_dispatched_answers_and_probes_equal_the_whole_model(split, whole, questions):
    config = EvalConfig(batch_size=3, choices=3, max_new_tokens=6, mixed_precision="no")
    got = evaluate_qa(*split, questions, config, progress=False).predictions
    expected = evaluate_qa(*whole, questions, config, progress=False).predictions
    assert [r["output"] for r in got] == [r["output"] for r in expected]
    assert [r["cloze_output"] for r in got] == [r["cloze_output"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        for key in ("choice", "cloze_choice"):
            assert a[key] == b[key]
        for key in ("logprob", "cloze_logprob"):
            assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])
    # the probes' own prompt pass (no generation cache) too
    prompts, cands = ["Ava was born in", "He worked for"], [["Boston", "Paris"], ["Google", "x"]]
    for a, b in zip(
        score_candidates(*split, prompts, cands, progress=False),
        score_candidates(*whole, prompts, cands, progress=False),
        strict=True,
    ):
        assert [c.tokens for c in a] == [c.tokens for c in b]
        assert max(abs(x.total - y.total) for x, y in zip(a, b, strict=True)) <= 1e-5


def test_cli_scores_a_dispatched_model_as_the_whole(tmp_path, deep_dir):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": str(n), "text": t}) + "\n" for n, t in enumerate(TEXTS))
    )
    score_corpus({"model": str(deep_dir)}, corpus, tmp_path / "whole", progress=False)
    budget = json.dumps(_budget(deep_dir, 0.8))  # JSON is YAML
    result = CliRunner().invoke(
        app,
        ["attention", "--model", str(deep_dir), "--corpus", str(corpus), "--out",
         str(tmp_path / "split"), "--cache-dir", str(tmp_path / "cache"),
         "--device-map", "auto", "--max-memory", budget],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for a, b in zip(read_scores(tmp_path / "split"), read_scores(tmp_path / "whole"), strict=True):
        assert a.tokens == b.tokens
        assert (
            max(abs(x - y) for x, y in zip(a.scores["model"], b.scores["model"], strict=True))
            <= 1e-5
        )


def _adapter(model_dir, out):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(model_dir)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    with quiet_peft():
        get_peft_model(model, lora).save_pretrained(out)
    return out


def test_adapter_merges_into_a_mapped_model_but_not_into_offloaded_weights(tmp_path, deep_dir):
    adapter = _adapter(deep_dir, tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 33, 44]])
    expected, _ = load_for_eval(str(deep_dir), adapter)
    on_cpu = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu"}
    on_cpu |= {"model.rotary_emb": "cpu", "lm_head": "cpu"}
    mapped, _ = load_for_eval(str(deep_dir), adapter, device_map=on_cpu)
    with torch.no_grad():
        torch.testing.assert_close(mapped(ids).logits, expected(ids).logits, atol=1e-5, rtol=0)
    with pytest.raises(ModelSpecError, match="cannot be merged into weights offloaded") as err:
        load_for_eval(str(deep_dir), adapter, device_map="auto", max_memory=_budget(deep_dir, 0.8))
    assert "\n" not in str(err.value)


def test_input_device_is_the_first_gpu_of_the_map():
    gpu_map = {"model.embed_tokens": "cpu", "model.layers.0": 1, "lm_head": "cuda:0"}
    assert input_device(SimpleNamespace(hf_device_map=gpu_map)) == torch.device("cuda", 1)
    cpu_map = {"model.embed_tokens": "cpu", "lm_head": "disk"}
    assert input_device(SimpleNamespace(hf_device_map=cpu_map)) == torch.device("cpu")
    plain = SimpleNamespace(hf_device_map=None, device=torch.device("cpu"))
    assert input_device(plain) == torch.device("cpu")


@pytest.mark.parametrize(
    "device_map, max_memory, message",
    [
        ("everywhere", None, "--device-map must be one of auto, balanced"),
        ({"model.layers": "gpu"}, None, "--device-map maps 'model.layers' to 'gpu'"),
        ("auto", {"cpu": "lots"}, "--max-memory 'lots' (of 'cpu') is not a size"),
        ("auto", {"gpu0": "1GiB"}, "--max-memory 'gpu0' is not a device"),
        (None, {"cpu": "1GiB"}, "--max-memory needs --device-map"),
    ],
)
def test_bad_placement_is_one_line_naming_the_option(device_map, max_memory, message):
    with pytest.raises(ModelSpecError, match="^" + re.escape(message)):
        check_placement(device_map, max_memory)
    check_placement("auto", {0: "70GiB", "cpu": 2**30})
    check_placement({"model.layers.0": 0, "lm_head": "disk"}, None)


def test_run_config_takes_device_map_and_max_memory(tmp_path, tiny_model_dir):
    path = tmp_path / "c.yaml"
    models = {"large": str(tiny_model_dir), "small": str(tiny_model_dir)}
    path.write_text(json.dumps({"models": {**models, "device_map": "auto"}}))
    assert load_config(path, ["models.max_memory={0: 70GiB, cpu: 200GiB}"]).models.max_memory == {
        0: "70GiB",
        "cpu": "200GiB",
    }
    with pytest.raises(
        ConfigError, match=r"c\.yaml: models\.max_memory: 'x' \(of 'cpu'\) is not a size"
    ):
        load_config(path, ["models.max_memory={cpu: x}"])


@pytest.mark.parametrize(
    "option, message",
    [
        (["--max-memory", "{cpu: [1]}"], "--max-memory [1] (of 'cpu') is not a size"),
        (["--device-map", "{a: [1"], "--device-map '{a: [1': not valid YAML"),
    ],
)
def test_cli_bad_placement_is_one_line(tmp_path, option, message):
    people, qa = write_bios(BiosConfig(n=2), tmp_path / "bios")
    result = CliRunner().invoke(
        app,
        ["evaluate", "--model", "m", "--qa", str(qa), "--out", str(tmp_path / "e"),
         "--device-map", "auto", *option],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output.startswith("error: " + message) and result.output.count("\n") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_layers_running_on_two_devices_score_and_answer_as_one(deep_dir, questions):
    """Half the layers run on the GPU, half on the CPU (not offloaded: accelerate's main device
    is the CPU), so each layer's attention is reduced on its own device."""
    from accelerate import dispatch_model

    whole, tok = load_model(deep_dir, device="cpu")
    model, _ = load_model(deep_dir, device="cpu")
    on_gpu = ("model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1")
    on_cpu = ("model.layers.2", "model.layers.3", "model.norm", "lm_head")
    device_map = {**dict.fromkeys(on_gpu, 0), **dict.fromkeys(on_cpu, "cpu")}
    model = dispatch_model(model, device_map, main_device="cpu")
    assert input_device(model) == torch.device("cuda", 0)
    assert model.model.layers[0].self_attn.q_proj.weight.device.type == "cuda"
    assert model.model.layers[3].self_attn.q_proj.weight.device.type == "cpu"
    ids, mask = _batch(tok)
    torch.testing.assert_close(
        attention_received(model, ids, mask),
        attention_received(whole, ids, mask),
        atol=1e-5,
        rtol=0,
    )
    query = torch.tensor([5, 3])
    torch.testing.assert_close(
        attention_row(model, ids, query, mask),
        attention_row(whole, ids, query, mask),
        atol=1e-5,
        rtol=0,
    )
    config = EvalConfig(batch_size=3, choices=3, max_new_tokens=6, mixed_precision="no")
    got = evaluate_qa(model, tok, questions, config, progress=False).predictions
    expected = evaluate_qa(whole, tok, questions, config, progress=False).predictions
    assert [r["output"] for r in got] == [r["output"] for r in expected]
    for a, b in zip(got, expected, strict=True):  # GPU and CPU float32 differ in the last bits
        assert abs(a["logprob"] - b["logprob"]) <= 1e-4 and a["choice"] == b["choice"]
