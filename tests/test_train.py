"""Training on tiny random models: loss goes down, checkpoints round-trip, resume is exact."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from elusive.bios import BiosConfig, generate_bios, write_bios
from elusive.cli import app
from elusive.evaluate import load_for_eval
from elusive.io import DroppedDataWarning
from elusive.models import (
    ModelSpecError,
    load_model,
    native_bf16,
    quiet_peft,
    resolve_mixed_precision,
)
from elusive.train import (
    STATE_FILE,
    EpochShuffle,
    TrainConfig,
    TrainError,
    last_epoch,
    make_scheduler,
    pad_batch,
    tokenize_texts,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and much faster when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def records():
    return generate_bios(BiosConfig(n=12, seed=3))[0]


def _config(model_dir, **overrides) -> TrainConfig:
    # fp32 unless a test says otherwise: logits are compared closely, on any CPU or GPU.
    defaults = dict(
        model=str(model_dir), epochs=3, lr=1e-2, batch_size=4, warmup=0.0, mixed_precision="no"
    )
    return TrainConfig(**{**defaults, **overrides})


def _adapter(run_dir, epoch):
    from safetensors.torch import load_file

    return load_file(run_dir / f"epoch-{epoch}" / "adapter_model.safetensors")


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
    import elusive.train as train_module

    monkeypatch.setattr(elusive.models, "native_bf16", lambda device: True)
    step, calls = train_module._train_step, []

    def interrupted(model, batch):
        calls.append(1)
        if len(calls) == 4:  # the first micro-batch of epoch 2 (3 per epoch)
            raise KeyboardInterrupt
        return step(model, batch)

    monkeypatch.setattr(train_module, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_model_dir, epochs=2, mixed_precision="no"), records, tmp_path, False)
    monkeypatch.setattr(train_module, "_train_step", step)
    train(_config(tiny_model_dir, epochs=2, mixed_precision="auto"), records, tmp_path, False)
    assert accelerator_precisions == ["no", "no"] and last_epoch(tmp_path) == 2
    assert json.loads((tmp_path / "run.json").read_text())["config"]["mixed_precision"] == "no"
    with pytest.raises(TrainError, match=r"mixed_precision \('no' there, 'bf16' now\)"):
        train(_config(tiny_model_dir, epochs=2, mixed_precision="bf16"), records, tmp_path)


def test_lora_lowers_loss_and_saved_adapter_reproduces_logits(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    from peft import PeftModel

    import elusive.train as train_module

    seen = []
    step = train_module._train_step
    monkeypatch.setattr(
        train_module, "_train_step", lambda model, batch: seen.append(model) or step(model, batch)
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


def test_resume_after_interrupt_equals_uninterrupted(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    import elusive.train as train_module

    config = _config(tiny_model_dir, batch_size=2, grad_accum=2, lora_dropout=0.1, warmup=0.3)
    whole = train(config, records, tmp_path / "whole", progress=False)

    step, calls = train_module._train_step, []

    def interrupted(model, batch):
        calls.append(1)
        if len(calls) == 9:  # the 3rd micro-batch of epoch 2 (6 per epoch)
            raise KeyboardInterrupt
        return step(model, batch)

    monkeypatch.setattr(train_module, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, records, tmp_path / "cut", progress=False)
    assert last_epoch(tmp_path / "cut") == 1
    monkeypatch.setattr(train_module, "_train_step", step)
    resumed = train(config, records, tmp_path / "cut", progress=False)

    a, b = _adapter(tmp_path / "whole", 3), _adapter(tmp_path / "cut", 3)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
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


def test_cli_table1_writes_table_metrics_and_figure(tiny_model_dir, tmp_path):
    args = ["table1", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--n", "4"]
    result = CliRunner().invoke(app, [*args, "--epochs", "2", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "Table 1" in result.output and "university" in result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["scores"]) == ["date", "city", "university", "major", "company", "overall"]
    assert metrics["adapter"].endswith("epoch-2") and (tmp_path / "figure1.png").stat().st_size
    assert last_epoch(tmp_path / "run") == 2


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


def test_truncation_is_warned_and_logged(tiny_model_dir, records, tmp_path):
    tokenizer = load_model(tiny_model_dir)[1]
    lengths = [len(s) for s in tokenize_texts([r.text for r in records], tokenizer, None)]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the texts are longer
    longer = [n - limit for n in lengths if n > limit]
    assert longer
    config = _config(tiny_model_dir, epochs=1, max_length=limit)
    with pytest.warns(DroppedDataWarning, match=f"{len(longer)} of {len(records)} texts"):
        train(config, records, tmp_path / "run", progress=False)
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log["truncation"] == {
        "max_length": limit,
        "texts_cut": len(longer),
        "texts": len(records),
        "tokens_cut": sum(longer),
        "tokens": sum(lengths),
    }


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
    import elusive.train as train_module

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
