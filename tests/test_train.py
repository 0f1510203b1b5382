"""Training on tiny random models: loss goes down, checkpoints round-trip, resume is exact."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus.bios import BiosConfig, generate_bios, write_bios
from elusive.evaluation.evaluate import load_for_eval
from elusive.models import (
    ModelSpecError,
    load_model,
    native_bf16,
    quiet_peft,
    resolve_mixed_precision,
)
from elusive.tiny import make_tiny_model
from elusive.training.train import (
    STATE_FILE,
    EpochShuffle,
    TrainConfig,
    TrainError,
    _check_run_dir,
    _run_record,
    last_epoch,
    make_batches,
    make_scheduler,
    pad_batch,
    tokenize_texts,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(model_dir, **overrides) -> TrainConfig:
    # fp32 unless a test says otherwise: logits are compared closely, on any CPU or GPU.
    defaults = dict(
        model=str(model_dir), epochs=3, lr=1e-2, batch_size=4, warmup=0.0, mixed_precision="no"
    )
    return TrainConfig(**{**defaults, **overrides})


def _adapter(run_dir, epoch):
    from safetensors.torch import load_file

    return load_file(run_dir / f"epoch-{epoch}" / "adapter_model.safetensors")


def interrupt_at(call, config, records, folder) -> None:
    """Train `config` into `folder`, stopped as Ctrl-C stops it: a KeyboardInterrupt at
    micro-batch `call` (from 1); the training step is restored afterwards."""
    import elusive.training.train as train_module

    step, calls = train_module._train_step, []

    def interrupted(model, batch, *fused):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return step(model, batch, *fused)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "_train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(config, records, folder, progress=False)


def assert_same_adapters(a_dir, b_dir, epoch) -> None:
    """The adapters two runs saved at `epoch` are equal, key for key, up to float noise."""
    a, b = _adapter(a_dir, epoch), _adapter(b_dir, epoch)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_tokenize_appends_eos_keeps_bos_and_cuts(tiny_model_dir):
    _, tok = load_model(tiny_model_dir)
    seqs = tokenize_texts(["Ava was born.", "Bo"], tok, max_length=512)
    for seq in seqs:
        assert seq[-1] == tok.eos_token_id
        assert (seq[0] == tok.bos_token_id) == (tok("x")["input_ids"][0] == tok.bos_token_id)
    assert tokenize_texts(["Ava was born on May 2, 1970."], tok, max_length=3)[0] == seqs[0][:3]


def test_pad_batch_masks_padding_out_of_the_loss():
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_epoch_shuffle_is_seeded_per_epoch():
    a, b = EpochShuffle(20, seed=1), EpochShuffle(20, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(20))
    b.set_epoch(3)
    assert list(a) != list(b)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays(schedule):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, TrainConfig(model="x", warmup=0.2, schedule=schedule), 10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 3) and lrs[1] == pytest.approx(2 / 3)  # 2 warmup steps
    assert lrs[2] == pytest.approx(1.0)
    if schedule == "constant":
        assert lrs[-1] == pytest.approx(1.0)
    else:
        assert lrs[-1] < 0.2 and all(x >= y for x, y in zip(lrs[2:], lrs[3:], strict=False))


def test_bad_options_are_refused(tmp_path, records):
    with pytest.raises(TrainError, match="schedule"):
        train(TrainConfig(model="m", schedule="step"), records, tmp_path)
    with pytest.raises(TrainError, match="model spec"):
        train(TrainConfig(), records, tmp_path)


@pytest.mark.parametrize("avx512_bf16, amx", [(False, False), (True, False), (False, True)])
def test_auto_precision_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) == (avx512_bf16 or amx)
    assert resolve_mixed_precision("auto", cpu) == ("bf16" if avx512_bf16 or amx else "no")
    for value in ("no", "bf16", "fp16"):  # an explicit choice is kept
        assert resolve_mixed_precision(value, cpu) == value


@pytest.mark.parametrize("supported", [False, True])
def test_auto_precision_on_a_gpu_asks_cuda_without_emulation(monkeypatch, supported):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    got = resolve_mixed_precision("auto", torch.device("cuda"))
    assert got == ("bf16" if supported else "no") and asked == [False]


@pytest.fixture
def accelerator_precisions(monkeypatch):
    """The `mixed_precision` of every Accelerator that `train` builds."""
    import accelerate

    seen = []

    class Recording(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("mixed_precision"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", Recording)
    return seen


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_reaches_accelerator_and_run_record(
    tiny_model_dir, records, tmp_path, monkeypatch, accelerator_precisions, native
):
    import elusive.models

    monkeypatch.setattr(elusive.models, "native_bf16", lambda device: native)
    want = "bf16" if native else "no"
    train(_config(tiny_model_dir, epochs=1, mixed_precision="auto"), records, tmp_path, False)
    assert accelerator_precisions == [want]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["mixed_precision"] == want


def test_auto_resumes_a_run_in_its_recorded_precision(
    tiny_model_dir, records, tmp_path, monkeypatch, accelerator_precisions
):
    """A run folder from before "auto" (run.json says "no") resumes in fp32 on a bf16 CPU."""
    import elusive.models

    monkeypatch.setattr(elusive.models, "native_bf16", lambda device: True)
    # the first micro-batch of epoch 2 (3 per epoch)
    interrupt_at(4, _config(tiny_model_dir, epochs=2, mixed_precision="no"), records, tmp_path)
    train(_config(tiny_model_dir, epochs=2, mixed_precision="auto"), records, tmp_path, False)
    assert accelerator_precisions == ["no", "no"] and last_epoch(tmp_path) == 2
    assert json.loads((tmp_path / "run.json").read_text())["config"]["mixed_precision"] == "no"
    with pytest.raises(TrainError, match=r"mixed_precision \('no' there, 'bf16' now\)"):
        train(_config(tiny_model_dir, epochs=2, mixed_precision="bf16"), records, tmp_path)


def test_lora_lowers_loss_and_saved_adapter_reproduces_logits(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    from peft import PeftModel

    import elusive.training.train as train_module

    seen = []
    step = train_module._train_step
    monkeypatch.setattr(
        train_module,
        "_train_step",
        lambda model, batch, *fused: seen.append(model) or step(model, batch, *fused),
    )
    last = train(_config(tiny_model_dir, epochs=4), records, tmp_path / "run", progress=False)

    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [s["step"] for s in log["steps"]] == list(range(1, 13))  # 3 steps x 4 epochs
    losses = [e["loss"] for e in log["epochs"]]
    assert losses[-1] < losses[0] - 0.1
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch-*")) == [
        "epoch-1",
        "epoch-2",
        "epoch-3",
        "epoch-4",
    ]
    assert [last_epoch(tmp_path / "run")] == [4] and (last / STATE_FILE).is_file()
    assert not (tmp_path / "run" / "epoch-3" / STATE_FILE).exists()  # only the last keeps it

    trained = seen[-1].eval()
    ids = torch.tensor([[3, 17, 42, 99, 5, 250]], device=trained.device)
    with torch.no_grad(), quiet_peft():
        want = trained(input_ids=ids).logits
        base, _ = load_model(tiny_model_dir)
        base_logits = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, last)(input_ids=ids).logits
        merged, _ = load_for_eval(str(tiny_model_dir), last)
        merged_logits = merged(input_ids=ids).logits
    assert not torch.allclose(want, base_logits, atol=1e-3)  # training changed the model
    torch.testing.assert_close(reloaded, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged_logits, want, rtol=1e-4, atol=1e-4)

    # A finished run recomputes nothing; a different config is refused.
    seen.clear()
    assert train(_config(tiny_model_dir, epochs=4), records, tmp_path / "run") == last
    assert not seen
    with pytest.raises(TrainError, match="lr"):
        train(_config(tiny_model_dir, epochs=4, lr=1e-3), records, tmp_path / "run")
    with pytest.raises(TrainError, match="corpus"):
        train(_config(tiny_model_dir, epochs=4), records[:5], tmp_path / "run")


def test_resume_after_interrupt_equals_uninterrupted(tiny_model_dir, records, tmp_path):

    config = _config(tiny_model_dir, batch_size=2, grad_accum=2, lora_dropout=0.1, warmup=0.3)
    whole = train(config, records, tmp_path / "whole", progress=False)

    # the 3rd micro-batch of epoch 2 (6 per epoch)
    interrupt_at(9, config, records, tmp_path / "cut")
    assert last_epoch(tmp_path / "cut") == 1
    resumed = train(config, records, tmp_path / "cut", progress=False)

    assert_same_adapters(tmp_path / "whole", tmp_path / "cut", 3)
    steps = [json.loads((d.parent / "log.json").read_text())["steps"] for d in (whole, resumed)]
    assert [s["step"] for s in steps[1]] == list(range(1, 10))  # 3 optimizer steps x 3 epochs
    for x, y in zip(*steps, strict=True):
        assert x["lr"] == pytest.approx(y["lr"]) and x["loss"] == pytest.approx(y["loss"], 1e-6)


def test_full_finetune_saves_a_loadable_model(tiny_model_dir, records, tmp_path):
    last = train(_config(tiny_model_dir, full=True, epochs=2, lr=1e-3), records, tmp_path / "f")
    model, tok = load_model(last)  # config, weights and tokenizer are all there
    log = json.loads((tmp_path / "f" / "log.json").read_text())
    assert log["epochs"][1]["loss"] < log["epochs"][0]["loss"]
    assert tok.eos_token_id == model.config.eos_token_id


def test_cli_train_then_evaluate(tiny_model_dir, tmp_path):
    people, qa = write_bios(BiosConfig(n=4, seed=1), tmp_path / "data")
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "--model", str(tiny_model_dir), "--corpus", str(people), "--out", str(run),
         "--epochs", "1", "--batch-size", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(tiny_model_dir), "--adapter", str(run / "epoch-1"),
         "--qa", str(qa), "--out", str(tmp_path / "eval"), "--max-new-tokens", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "company" in result.output and "EM" in result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["scores"]["overall"]["n"] == 20 and metrics["adapter"].endswith("epoch-1")
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 20

    bad = runner.invoke(
        app,
        ["train", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "none.jsonl"),
         "--out", str(tmp_path / "r2")],
    )  # fmt: skip
    assert bad.exit_code == 2 and "none.jsonl: no such file" in bad.output
    bad = runner.invoke(
        app,
        ["evaluate", "--model", str(tiny_model_dir), "--adapter", str(run),
         "--qa", str(qa), "--out", str(tmp_path / "e2")],
    )  # fmt: skip
    assert bad.exit_code == 2 and "adapter_config.json" in bad.output


def test_run_json_waits_for_the_model_and_compares_resolved_paths(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    with pytest.raises(ModelSpecError):
        train(_config(tmp_path / "no-such-model", epochs=1), records, run, progress=False)
    assert not (run / "run.json").exists()  # nothing that refuses the corrected command
    train(_config(tiny_model_dir, epochs=1), records, run, progress=False)
    recorded = json.loads((run / "run.json").read_text())["config"]["model"]
    assert recorded == str(tiny_model_dir.resolve())
    # the same folder by a relative path is the same model: the finished run is found
    monkeypatch.chdir(tiny_model_dir.parent)
    last = train(_config(tiny_model_dir.name, epochs=1), records, run, progress=False)
    assert last == run / "epoch-1"
    with pytest.raises(TrainError, match="different model"):
        train(_config("qwen2.5-coder-0.5b", epochs=1), records, run, progress=False)


def test_a_text_longer_than_max_length_is_refused_not_cut(tiny_model_dir, records, tmp_path):
    tokenizer = load_model(tiny_model_dir)[1]
    lengths = [len(s) for s in tokenize_texts([r.text for r in records], tokenizer, None)]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the texts are longer
    first = next(n for n, length in enumerate(lengths) if length > limit)
    config = _config(tiny_model_dir, epochs=1, max_length=limit)
    with pytest.raises(TrainError) as caught:
        train(config, records, tmp_path / "run", progress=False)
    assert str(caught.value) == (
        f"text {records[first].id!r} is {lengths[first]} tokens long (BOS and EOS included), "
        f"more than max_length {limit}: cut the corpus into passages (corpus.chunk in a run "
        "config) or raise --max-length (train.max_length)"
    )
    assert not (tmp_path / "run").exists()  # nothing written
    config = _config(tiny_model_dir, epochs=1, max_length=max(lengths))  # every text fits
    assert train(config, records, tmp_path / "run", progress=False).is_dir()


def test_train_and_evaluate_raise_no_peft_deprecation_warning(tiny_model_dir, records, tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "error", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        last = train(_config(tiny_model_dir, epochs=1), records, tmp_path / "run", progress=False)
        load_for_eval(str(tiny_model_dir), last)


def test_a_crash_between_the_epoch_rename_and_the_log_loses_no_log(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    """The epoch folder carries its log: a crash after epoch-1 is renamed into place but before
    RUN_DIR/log.json is written resumes with epoch 1's log lines, as an uninterrupted run."""
    import elusive.training.train as train_module

    config = _config(tiny_model_dir, epochs=2, batch_size=6)
    whole = train(config, records, tmp_path / "whole", progress=False)
    write = train_module.atomic_write_text

    def crash_at_the_first_run_log(path, text):
        if Path(path) == tmp_path / "cut" / "log.json":
            raise KeyboardInterrupt
        return write(path, text)

    monkeypatch.setattr(train_module, "atomic_write_text", crash_at_the_first_run_log)
    with pytest.raises(KeyboardInterrupt):
        train(config, records, tmp_path / "cut", progress=False)
    assert last_epoch(tmp_path / "cut") == 1 and not (tmp_path / "cut" / "log.json").exists()
    monkeypatch.setattr(train_module, "atomic_write_text", write)
    resumed = train(config, records, tmp_path / "cut", progress=False)
    logs = [json.loads((d.parent / "log.json").read_text()) for d in (whole, resumed)]
    assert [e["epoch"] for e in logs[1]["epochs"]] == [1, 2]
    assert [s["loss"] for s in logs[1]["steps"]] == pytest.approx(
        [s["loss"] for s in logs[0]["steps"]], rel=1e-6
    )


def test_a_run_folder_from_before_an_option_resumes(tiny_model_dir, records, tmp_path):
    """run.json of an older version lacks the newer options (quantize): they count as their
    defaults, the behaviour that run had, so the folder resumes instead of being refused."""
    train(_config(tiny_model_dir, epochs=1), records, tmp_path, progress=False)
    path = tmp_path / "run.json"
    recorded = json.loads(path.read_text())
    del recorded["config"]["quantize"]
    path.write_text(json.dumps(recorded))
    assert train(_config(tiny_model_dir, epochs=1), records, tmp_path, False).name == "epoch-1"
    with pytest.raises(TrainError, match=r"quantize \('no' there, '4bit' now\)"):
        _check_run_dir(tmp_path, _run_record(_config(tiny_model_dir, quantize="4bit"), "x"))


NO_BNB = "--quantize 4bit needs bitsandbytes, which is not installed"


def test_qlora_without_bitsandbytes_fails_in_one_line(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    """As where bitsandbytes is not installed: a None in sys.modules makes `find_spec` find
    nothing and an import fail, whether or not it is installed here."""
    from elusive.experiment.config import ConfigError, load_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    assert importlib.util.find_spec("bitsandbytes") is None
    with pytest.raises(TrainError, match="^" + NO_BNB + r" \(pip install \"elusive\[qlora\]\""):
        train(_config(tiny_model_dir, quantize="4bit"), records, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(
        app,
        ["train", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "c.jsonl"),
         "--out", str(tmp_path / "cli"), "--quantize", "4bit"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output.startswith("error: " + NO_BNB) and result.output.count("\n") == 1
    result = CliRunner().invoke(
        app,
        ["evaluate", "--model", str(tiny_model_dir), "--qa", str(tmp_path / "qa.jsonl"),
         "--out", str(tmp_path / "eval"), "--quantize", "4bit"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and NO_BNB in result.output
    config = tmp_path / "c.yaml"
    models = {"large": str(tiny_model_dir), "small": str(tiny_model_dir)}
    config.write_text(json.dumps({"models": models, "train": {"quantize": "4bit"}}))
    with pytest.raises(ConfigError, match="c.yaml: train.quantize: 4bit needs bitsandbytes"):
        load_config(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_qlora_trains_resumes_exactly_and_evaluates(tiny_model_dir, records, tmp_path, monkeypatch):
    """``quantize: 4bit`` on the CPU (bitsandbytes 0.50): LoRA trains over NF4 `Linear4bit`
    layers, an interrupted run resumes to the uninterrupted one's adapter and losses, and the
    adapter evaluates over the 4-bit base (what training computed) and merged into the
    unquantized base (what `elusive run` evaluates and `elusive export` writes)."""
    from bitsandbytes.nn import Linear4bit, Params4bit
    from peft import PeftModel

    import elusive.training.train as train_module

    config = _config(
        tiny_model_dir, quantize="4bit", batch_size=2, grad_accum=2, lora_dropout=0.1, warmup=0.3
    )
    step, seen = train_module._train_step, []
    monkeypatch.setattr(
        train_module,
        "_train_step",
        lambda model, batch, *fused: seen.append(model) or step(model, batch, *fused),
    )
    whole = train(config, records, tmp_path / "whole", progress=False)
    trained = seen[-1].eval()
    quantized = [m for m in trained.modules() if isinstance(m, Linear4bit)]
    assert len(quantized) == 7 * 2  # q, k, v, o, gate, up, down of each layer
    assert all(isinstance(m.weight, Params4bit) and not m.weight.requires_grad for m in quantized)
    assert {n.split(".")[-2] for n, p in trained.named_parameters() if p.requires_grad} == {
        "default"
    }  # lora_A.default, lora_B.default: only the adapter trains
    log = json.loads((tmp_path / "whole" / "log.json").read_text())
    assert log["epochs"][-1]["loss"] < log["epochs"][0]["loss"]

    # the 3rd micro-batch of epoch 2 (6 per epoch)
    interrupt_at(9, config, records, tmp_path / "cut")
    assert last_epoch(tmp_path / "cut") == 1
    resumed = train(config, records, tmp_path / "cut", progress=False)
    assert_same_adapters(tmp_path / "whole", tmp_path / "cut", 3)
    steps = [json.loads((d.parent / "log.json").read_text())["steps"] for d in (whole, resumed)]
    for x, y in zip(*steps, strict=True):
        assert x["lr"] == pytest.approx(y["lr"]) and x["loss"] == pytest.approx(y["loss"], 1e-6)

    ids = torch.tensor([[3, 17, 42, 99, 5, 250]])
    with torch.no_grad(), quiet_peft():
        want = trained(input_ids=ids).logits
        over_4bit, _ = load_for_eval(str(tiny_model_dir), whole, quantize="4bit")
        assert isinstance(over_4bit, PeftModel)  # not merged: that would round to 4 bits again
        got_4bit = over_4bit(input_ids=ids).logits
        base, _ = load_model(tiny_model_dir)
        unmerged = PeftModel.from_pretrained(base, whole)(input_ids=ids).logits
        merged, _ = load_for_eval(str(tiny_model_dir), whole)
        got_merged = merged(input_ids=ids).logits
    torch.testing.assert_close(got_4bit, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_merged, unmerged, rtol=1e-4, atol=1e-4)
    # the two differ by the base's rounding to 4 bits, which is what QLoRA saves memory by
    assert not torch.allclose(got_merged, got_4bit, atol=1e-3)

    people, qa = write_bios(BiosConfig(n=2, seed=3), tmp_path / "data")
    result = CliRunner().invoke(
        app,
        ["evaluate", "--model", str(tiny_model_dir), "--adapter", str(whole), "--qa", str(qa),
         "--out", str(tmp_path / "eval"), "--max-new-tokens", "3", "--quantize", "4bit"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["quantize"] == "4bit" and metrics["scores"]["overall"]["n"] == 10


def test_qlora_is_lora_only(tiny_model_dir):
    with pytest.raises(TrainError, match="^--quantize 4bit trains a LoRA adapter .*--full$"):
        _config(tiny_model_dir, quantize="4bit", full=True).validate()
    with pytest.raises(TrainError, match=r"--quantize must be one of \('no', '4bit'\)"):
        _config(tiny_model_dir, quantize="8bit").validate()


FSDP_CONFIG = Path(__file__).parents[1] / "configs" / "accelerate-fsdp.yaml"


def test_fsdp_config_parses_to_full_shard_lora_settings():
    """configs/accelerate-fsdp.yaml through accelerate's own config loader, and the settings
    `accelerate launch` hands each process from it."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(FSDP_CONFIG))
    assert config.distributed_type == DistributedType.FSDP and not config.use_cpu
    assert config.mixed_precision == "no"  # elusive's --mixed-precision decides
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2  # per-parameter: frozen and LoRA weights in one unit
    assert fsdp["fsdp_reshard_after_forward"] is True  # full shard
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # whole adapters in epoch folders
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # the model's own layer class


@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate builds FSDP on GPUs only")
def test_fsdp_config_builds_accelerates_fsdp_plugin(monkeypatch):
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(FSDP_CONFIG), "-m", "elusive.cli", "train"])
    for key, value in prepare_multi_gpu_env(_validate_launch_command(args)[0]).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy is not None and not plugin.cpu_ram_efficient_loading


FSDP2_ON_CPU = """
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from peft import LoraConfig, get_peft_model
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from elusive.training.train import _load_optimizer_state, _optimizer_state

dist.init_process_group("gloo")
rank = dist.get_rank()
accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP)


def build():  # what accelerate's FSDP2 makes of a LoRA model: one unit a decoder layer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    return model, SimpleNamespace(optimizer=torch.optim.AdamW(trained, lr=1e-2))


ids = torch.tensor([[1, 5, 9, 33, 44, 2], [3, 4, 5, 6, 7, 8]])[rank : rank + 1]


def step(model, optimizer):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.optimizer.step()
    optimizer.optimizer.zero_grad()
    return loss.item()


model, optimizer = build()
step(model, optimizer)
options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
weights = get_model_state_dict(model, options=options)  # accelerate's FSDP2 get_state_dict
state = _optimizer_state(accelerator, model, optimizer)  # every process, as train() does
if rank == 0:  # whole on the main process, frozen root weights included
    assert "base_model.model.model.embed_tokens.weight" in weights
    assert len(state["state"]) == sum(p.requires_grad for p in model.parameters())
shared = [state]
dist.broadcast_object_list(shared)  # stands in for trainer_state.pt, read by every process
restored, restored_optimizer = build()
full = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
set_weights = torch.distributed.checkpoint.state_dict.set_model_state_dict
set_weights(restored, weights if rank == 0 else {}, options=full)
_load_optimizer_state(accelerator, restored, restored_optimizer, shared[0])
assert step(model, optimizer) == step(restored, restored_optimizer)
print(f"rank {rank} resumed exactly")
dist.destroy_process_group()
"""


def test_fsdp2_state_gathers_and_restores_across_two_cpu_processes(tmp_path):
    """accelerate builds FSDP on GPUs only, but torch's FSDP2 runs on CPUs with gloo: shard a
    tiny LoRA model over 2 processes as accelerate's FSDP2 does, take one training step, and
    check that the optimizer state train() gathers into trainer_state.pt restores exactly."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "fsdp2.py"
    script.write_text(FSDP2_ON_CPU)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    model_dir = make_tiny_model(tmp_path / "tiny")  # one architecture is enough here
    command += ["--master_port", str(port), str(script), str(model_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(f"rank {rank} resumed exactly" in done.stdout for rank in (0, 1)), done.stdout


FSDP_LAUNCHER = """
import accelerate
from accelerate.utils import DistributedType

prepare = accelerate.Accelerator.prepare


def checked(self, *args):  # the run must really be sharded by FSDP
    assert self.distributed_type == DistributedType.FSDP, self.distributed_type
    return prepare(self, *args)


accelerate.Accelerator.prepare = checked
from elusive.cli import app

app()
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate builds FSDP on GPUs only")
def test_fsdp_training_equals_one_gpu_and_resumes_exactly(tmp_path):
    """`accelerate launch --config_file configs/accelerate-fsdp.yaml` (one process: one GPU
    here) trains as the plain run does, saves whole adapters, and resumes from its gathered
    optimizer state as if never interrupted."""
    import os
    import subprocess
    import sys

    people, _ = write_bios(BiosConfig(n=6, seed=1), tmp_path / "data")
    tiny_model_dir = make_tiny_model(tmp_path / "tiny")
    launcher = tmp_path / "launcher.py"
    launcher.write_text(FSDP_LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, epochs, fsdp=True):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(FSDP_CONFIG), "--num_processes", "1", str(launcher)] if fsdp else [
                   sys.executable, "-m", "elusive.cli"]  # fmt: skip
        command += ["train", "--model", str(tiny_model_dir), "--corpus", str(people),
                    "--out", str(out), "--epochs", str(epochs), "--batch-size", "2",
                    "--lr", "1e-2", "--warmup", "0", "--schedule", "constant",
                    "--mixed-precision", "no"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        errors = [line for line in done.stderr.splitlines() if "Error" in line]
        assert done.returncode == 0, "\n".join(errors)[-3000:] or done.stderr[-3000:]
        return json.loads((out / "log.json").read_text())["steps"]

    plain = run(tmp_path / "plain", 2, fsdp=False)
    sharded = run(tmp_path / "fsdp", 2)
    run(tmp_path / "resumed", 1)
    # let the folder go on to 2 epochs (the same steps: the learning rate is constant)
    (tmp_path / "resumed" / "run.json").unlink()
    resumed = run(tmp_path / "resumed", 2)
    assert [s["loss"] for s in sharded] == pytest.approx([s["loss"] for s in plain], abs=1e-4)
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in sharded], abs=1e-6)
    adapters = {name: _adapter(tmp_path / name, 2) for name in ("plain", "fsdp", "resumed")}
    assert adapters["fsdp"].keys() == adapters["plain"].keys()
    for key, value in adapters["plain"].items():
        torch.testing.assert_close(adapters["fsdp"][key], value, atol=1e-4, rtol=0)
        torch.testing.assert_close(adapters["resumed"][key], adapters["fsdp"][key])


class _PlantedCode:
    """Unpickled by a full unpickler, it calls Path.touch(marker): code run from a run folder."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_crafted_trainer_state_without_running_it(
    tiny_model_dir, records, tmp_path
):
    import shutil

    run_dir = tmp_path / "run"
    train(_config(tiny_model_dir, epochs=2), records, run_dir, progress=False)
    shutil.rmtree(run_dir / "epoch-2")  # as if stopped after epoch 1, whose state is planted
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _PlantedCode(marker)}, run_dir / "epoch-1" / STATE_FILE)
    write_bios(BiosConfig(n=12, seed=3), tmp_path / "bios")
    corpus = tmp_path / "bios" / "people.jsonl"
    args = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--out", str(run_dir)]
    args += ["--epochs", "2", "--lr", "1e-2", "--batch-size", "4", "--warmup", "0"]
    result = CliRunner().invoke(app, [*args, "--mixed-precision", "no"])
    assert not marker.exists()
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and STATE_FILE in errors[0] and "Traceback" not in result.output
    assert last_epoch(run_dir) == 1 and not (run_dir / "epoch-2").exists()


def test_a_nan_loss_stops_training_naming_the_step_and_saves_no_epoch(
    tiny_model_dir, records, tmp_path
):
    """A learning rate far too high sends the weights to infinity after one step: training
    stops there, in one line, and no epoch is saved from the broken weights."""
    config = _config(tiny_model_dir, epochs=2, lr=1e30)
    with pytest.raises(TrainError) as err:
        train(config, records, tmp_path / "run", progress=False)
    assert str(err.value) == (
        f"{tmp_path / 'run'}: loss is nan at step 2 (epoch 1): lower the learning rate "
        "(--lr, now 1e+30); epochs saved before are kept"
    )
    assert last_epoch(tmp_path / "run") == 0
    assert not list((tmp_path / "run").glob("*epoch-*"))


# --------------------------------------------------------------------------- batching options

REFERENCE = Path(__file__).parent / "data" / "train_default_reference.json"
"""Losses, learning rates and adapter sums of a default run (`_reference_config`), made by the
code before `packing` and `group_by_length` existed, with the epochs' text orders."""


def _reference_config(model_dir, **overrides) -> TrainConfig:
    return _config(model_dir, epochs=2, lora_dropout=0.1, **overrides)


def test_the_default_path_trains_as_the_saved_reference(tiny_model_dir, records, tmp_path):
    """Both options off (explicitly, as the defaults): the same shuffles, losses and adapter as
    before they existed (those bytes were compared equal when the reference was made; numbers
    are compared here within float noise, so that another CPU or a GPU passes)."""
    want = json.loads(REFERENCE.read_text())
    for epoch, order in want["epoch_orders_n12_seed0"].items():
        sampler = EpochShuffle(12, seed=0)
        sampler.set_epoch(int(epoch))
        assert list(sampler) == order
    arch = load_model(tiny_model_dir)[0].config.model_type
    config = _reference_config(tiny_model_dir, packing=False, group_by_length=False)
    last = train(config, records, tmp_path / "run", progress=False)
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [s["loss"] for s in log["steps"]] == pytest.approx(want[arch]["losses"], rel=1e-5)
    assert [s["lr"] for s in log["steps"]] == pytest.approx(want[arch]["lrs"], rel=1e-12)
    adapter = _adapter(last.parent, 2)
    assert sorted(adapter) == sorted(want[arch]["adapter"])
    for key, (total, size) in want[arch]["adapter"].items():
        value = adapter[key].double()
        assert value.sum().item() == pytest.approx(total, rel=1e-4, abs=1e-4), key
        assert value.abs().sum().item() == pytest.approx(size, rel=1e-5), key


def _epoch_rows(loader, order, epoch) -> list[list[int]]:
    """The unpadded rows of one epoch's micro-batches, as lists of token ids."""
    order.set_epoch(epoch)
    rows = []
    for batch in loader:
        for ids, mask, labels in zip(
            batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
        ):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()  # padded on the right only
            assert labels[:n].tolist() == ids[:n].tolist()  # every real token is a target
            assert (labels[n:] == -100).all()
            rows.append(ids[:n].tolist())
    return rows


def test_packing_blocks_are_max_length_and_hold_every_token_once(tiny_model_dir, records):
    _, tok = load_model(tiny_model_dir)
    texts = [r.text for r in records]
    config = _config(tiny_model_dir, packing=True, max_length=40, batch_size=3)
    seqs = tokenize_texts(texts, tok, None)
    assert max(len(s) for s in seqs) > 40  # some texts run on into the next block
    loader, order = make_batches(seqs, config, tok.pad_token_id)
    epochs = []
    for epoch in (1, 2):
        blocks = _epoch_rows(loader, order, epoch)
        assert all(len(b) == 40 for b in blocks[:-1]) and 1 <= len(blocks[-1]) <= 40
        # the slow reference: each text of the epoch's shuffle tokenized alone, then EOS
        perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(epoch))
        stream = []
        for index in perm.tolist():
            stream += tok(texts[index])["input_ids"] + [tok.eos_token_id]
        assert [t for b in blocks for t in b] == stream
        assert stream.count(tok.eos_token_id) == len(texts)  # one EOS after every text
        epochs.append(blocks)
    assert epochs[0] != epochs[1]


def test_length_grouped_batches_hold_the_epochs_texts_with_less_padding(tiny_model_dir):
    from elusive.training.batches import padded_share

    _, tok = load_model(tiny_model_dir)
    people = generate_bios(BiosConfig(n=48, seed=5))[0]
    # a mixed-length corpus: a first sentence alone, or one to four biographies run together
    texts = [
        p.text.split(". ")[0] + "." if k % 2 else " ".join(q.text for q in people[k : k + k % 5])
        for k, p in enumerate(people)
    ]
    seqs = tokenize_texts(texts, tok, 512)
    plain_loader, plain_order = make_batches(seqs, _config(tiny_model_dir), tok.pad_token_id)
    config = _config(tiny_model_dir, group_by_length=True)
    loader, order = make_batches(seqs, config, tok.pad_token_id)
    assert len(loader) == len(plain_loader) == 12
    shares = {}
    for name, (lo, od) in {
        "plain": (plain_loader, plain_order),
        "grouped": (loader, order),
    }.items():
        rows, batches = [], []
        for epoch in (1, 2):
            od.set_epoch(epoch)
            for batch in lo:
                n = batch["attention_mask"].sum(1).tolist()
                batches.append(
                    [ids[:k].tolist() for ids, k in zip(batch["input_ids"], n, strict=True)]
                )
                rows += batches[-1]
        assert sorted(rows) == sorted(seqs + seqs)  # each text once an epoch
        shares[name] = padded_share(batches)
    assert shares["grouped"] < shares["plain"] / 2


@pytest.mark.parametrize(
    "options", [{"packing": True, "max_length": 40}, {"group_by_length": True}], ids=str
)
def test_resume_with_a_batching_option_equals_uninterrupted(
    tiny_model_dir, records, tmp_path, options
):

    config = _config(tiny_model_dir, batch_size=2, grad_accum=2, lora_dropout=0.1, **options)
    _, tok = load_model(tiny_model_dir)
    loader, _ = make_batches(tokenize_texts([r.text for r in records], tok, None), config, 0)
    per_epoch = len(loader)
    whole = train(config, records, tmp_path / "whole", progress=False)

    # the 2nd micro-batch of epoch 2
    interrupt_at(per_epoch + 2, config, records, tmp_path / "cut")
    assert last_epoch(tmp_path / "cut") == 1
    resumed = train(config, records, tmp_path / "cut", progress=False)

    assert_same_adapters(tmp_path / "whole", tmp_path / "cut", 3)
    logs = [json.loads((d.parent / "log.json").read_text()) for d in (whole, resumed)]
    steps = -(-per_epoch // 2)
    assert [s["step"] for s in logs[1]["steps"]] == list(range(1, 3 * steps + 1))
    for x, y in zip(logs[0]["steps"], logs[1]["steps"], strict=True):
        assert x["lr"] == pytest.approx(y["lr"]) and x["loss"] == pytest.approx(y["loss"], 1e-6)


def test_the_loss_log_has_a_line_per_step_and_their_epoch_means(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    """With packing, 3 micro-batches of blocks per optimizer step: one log line per step, and
    each epoch's loss is the mean of its steps'; each step's is its micro-batches' mean."""
    import elusive.training.train as train_module

    config = _config(tiny_model_dir, packing=True, max_length=32, batch_size=2, grad_accum=3)
    _, tok = load_model(tiny_model_dir)
    loader, _ = make_batches(tokenize_texts([r.text for r in records], tok, None), config, 0)
    per_epoch = -(-len(loader) // 3)
    losses, step = [], train_module._train_step

    def recorded(model, batch, *fused):
        loss = step(model, batch, *fused)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(train_module, "_train_step", recorded)
    train(config, records, tmp_path / "run", progress=False)
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [s["step"] for s in log["steps"]] == list(range(1, 3 * per_epoch + 1))
    groups = [losses[e * len(loader) : (e + 1) * len(loader)] for e in range(3)]
    want = [
        sum(g[k : k + 3]) / len(g[k : k + 3]) for g in groups for k in range(0, len(g), 3)
    ]  # the micro-batches of an optimizer step, by epoch (an epoch's last step may hold fewer)
    assert [s["loss"] for s in log["steps"]] == pytest.approx(want, rel=1e-6)
    for entry in log["epochs"]:
        mine = [s["loss"] for s in log["steps"] if s["epoch"] == entry["epoch"]]
        assert len(mine) == per_epoch
        assert entry["loss"] == pytest.approx(sum(mine) / len(mine), rel=1e-12)


def test_packing_and_length_grouping_are_one_or_the_other(tiny_model_dir):
    with pytest.raises(TrainError, match="^--packing makes every block .* --group-by-length"):
        _config(tiny_model_dir, packing=True, group_by_length=True).validate()
    with pytest.raises(TrainError, match=r"--report-to must be one of \('none', 'tensorboard'\)"):
        _config(tiny_model_dir, report_to="wandb").validate()


NO_TENSORBOARD = "--report-to tensorboard needs tensorboard, which is not installed"


def test_tensorboard_asked_for_without_it_fails_in_one_line(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    import importlib.util as util

    find_spec = util.find_spec
    missing = {"tensorboard", "tensorboardX"}
    monkeypatch.setattr(
        util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a)
    )
    with pytest.raises(TrainError, match="^" + NO_TENSORBOARD):
        train(_config(tiny_model_dir, report_to="tensorboard"), records, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    write_bios(BiosConfig(n=4, seed=1), tmp_path / "bios")
    result = CliRunner().invoke(
        app,
        ["train", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "bios"),
         "--out", str(tmp_path / "cli"), "--report-to", "tensorboard"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output.startswith("error: " + NO_TENSORBOARD) and result.output.count("\n") == 1


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every TensorBoard event file under `folder`, read as the
    TFRecord files they are (length, CRC, an Event message, CRC) with the installed writer's
    own Event message."""
    import struct

    try:
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:
        from tensorboardX.proto.event_pb2 import Event
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_tracker_logs_the_losses_of_log_json(tiny_model_dir, records, tmp_path):
    """Through accelerate's tracker, into RUN_DIR/tensorboard: the loss and learning rate of
    every step, and the epoch means. The tracker is no input of the weights: a run begun
    without it resumes with it."""

    if importlib.util.find_spec("tensorboard") is None:
        pytest.importorskip("tensorboardX", reason="report_to tensorboard needs a writer")
    run = tmp_path / "run"
    # the first micro-batch of epoch 2 (3 per epoch)
    interrupt_at(4, _config(tiny_model_dir, epochs=2), records, run)
    train(_config(tiny_model_dir, epochs=2, report_to="tensorboard"), records, run, False)
    log = json.loads((run / "log.json").read_text())
    scalars = _tensorboard_scalars(run / "tensorboard")
    later = [s for s in log["steps"] if s["epoch"] == 2]  # epoch 1 ran before the tracker
    assert [step for step, _ in scalars["train/loss"]] == [s["step"] for s in later]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([s["loss"] for s in later])
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([s["lr"] for s in later])
    assert scalars["train/epoch_loss"] == [
        (later[-1]["step"], pytest.approx(log["epochs"][1]["loss"]))
    ]


def test_a_saved_epoch_is_readable_like_any_other_output(tiny_model_dir, records, tmp_path):
    """safetensors writes the adapter mode 0600; the epoch folder's files get a plain open's."""
    import stat

    from test_io import _plain_mode

    final = train(_config(tiny_model_dir, epochs=1), records, tmp_path / "run", progress=False)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in final.iterdir()}
    assert "adapter_model.safetensors" in modes
    assert set(modes.values()) == {_plain_mode(tmp_path)}
