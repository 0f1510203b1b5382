"""The fused training step against the plain one: transformers' loss and peft's LoRA layers."""

from __future__ import annotations

import pytest
import torch

import elusive.training.train as train_module
import elusive.training.trainstep as trainstep
from elusive.models import load_model
from elusive.training.train import TrainConfig, build_model, pad_batch, tokenize_texts, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(model_dir, records, n=4):
    """A padded micro-batch of `n` texts of different lengths."""
    _, tok = load_model(model_dir)
    seqs = tokenize_texts([r.text for r in records[:n]], tok, None)
    seqs = [s[: 10 + 7 * k] for k, s in enumerate(seqs)]  # rows of 10, 17, 24, 31 tokens
    return pad_batch(seqs, tok.pad_token_id)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _lora_model(config):
    """A LoRA model of `config` with B made non-zero (seeded), as after training."""
    model, _ = build_model(config)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_and_head_loss_give_peft_and_transformers_loss_and_gradients(
    tiny_model_dir, records, dropout, monkeypatch
):
    """One forward and backward of a LoRA model (B made non-zero, as after training): the
    fused path (both parts, the loss in chunks of 3 rows) against the model's own forward, on
    the same dropout masks (the same seed)."""
    config = TrainConfig(model=str(tiny_model_dir), lora_dropout=dropout, lora_alpha=32)
    batch = _batch(tiny_model_dir, records)
    results = []
    for fused in (False, True):
        model = _lora_model(config)
        if fused:
            assert trainstep.fuse_lora(model) == 7 * 2  # q, k, v, o, gate, up, down a layer
            head = model.get_base_model().get_output_embeddings()
            monkeypatch.setattr(trainstep, "CHUNK_ELEMENTS", 3 * head.out_features)
        torch.manual_seed(2)
        loss = train_module._train_step(model, batch, fused)
        loss.backward()
        results.append((loss.item(), _grads(model)))
    (plain_loss, plain), (fused_loss, grads) = results
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain.keys() and len(grads) == 7 * 2 * 2
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_under_bf16_autocast_the_fused_step_gives_autocasts_loss_and_gradients(
    tiny_model_dir, records, dropout
):
    """bf16 autocast: the fused step (base weights stored in bf16 once) against the model's
    own forward under autocast, the same masks. bf16 keeps 8 bits of mantissa and the two
    add the adapter's product in different places, so they agree to bf16's noise, and both
    stay near the float32 result."""
    config = TrainConfig(model=str(tiny_model_dir), lora_dropout=dropout, lora_alpha=32)
    batch = _batch(tiny_model_dir, records)
    results = {}
    for path in ("plain", "fused", "float32"):
        model = _lora_model(config)
        if path == "fused":
            assert trainstep.fuse_lora(model, torch.bfloat16) == 7 * 2
            base = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
            assert base.weight.dtype == torch.bfloat16  # stored once, not cast at each step
        torch.manual_seed(2)
        if path == "plain":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch, use_cache=False).loss
        else:
            precision = "bf16" if path == "fused" else "no"
            loss = train_module._train_step(model, batch, path == "fused", precision)
        loss.backward()
        grads = _grads(model)
        assert all(g.dtype == torch.float32 for g in grads.values())  # the adapters' own dtype
        results[path] = (loss.item(), grads)
    (plain_loss, plain), (fused_loss, fused) = results["plain"], results["fused"]
    exact = results["float32"][1]
    assert fused_loss == pytest.approx(plain_loss, rel=2e-2)
    assert fused.keys() == plain.keys() and len(fused) == 7 * 2 * 2
    for name, grad in fused.items():
        scale = exact[name].norm()
        assert (grad - plain[name]).norm() < 0.1 * scale, name
        assert (grad - exact[name]).norm() < 0.1 * scale, name


def test_float32_attention_is_sdpa_on_float32_inputs_and_as_close_under_bf16(
    tiny_model_dir, records
):
    """Given float32 inputs, the float32 attention is sdpa's own computation (the same logits);
    under bf16 autocast the model's output stays as near the float32 one as with sdpa in bf16
    (the bf16 matmuls around it dominate the rounding: measured 0.197 against 0.193 and 0.208
    against 0.207 on the two tiny models), and its gradients flow."""
    model, _ = load_model(str(tiny_model_dir))
    batch = _batch(str(tiny_model_dir), records)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        reference = model(**inputs).logits  # [batch, seq, vocab]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(**inputs).logits.float()
        assert trainstep.float32_attention(model)
        assert model.config._attn_implementation == trainstep.FLOAT32_ATTENTION
        assert torch.equal(model(**inputs).logits, reference)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(**inputs).logits.float()
    real = batch["attention_mask"].bool()  # padding's logits are nobody's
    assert 0 < (ours - reference)[real].norm() < 1.1 * (plain - reference)[real].norm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch).loss.backward()
    grads = _grads(model)
    assert grads and all(g.isfinite().all() for g in grads.values())
    assert not trainstep.float32_attention(model)  # only over sdpa


def test_head_loss_on_a_full_model_gives_the_embeddings_gradient(tiny_model_dir, records):
    """Full finetuning: the head (tied to the embeddings in the tiny Qwen2) gets its gradient
    from `head_loss` as from transformers' loss; padding's positions give none."""
    results = []
    batch = _batch(tiny_model_dir, records)
    for fused in (False, True):
        model, _ = build_model(TrainConfig(model=str(tiny_model_dir), full=True))
        loss = train_module._train_step(model, batch, fused)
        loss.backward()
        results.append((loss.item(), _grads(model)))
    (plain_loss, plain), (fused_loss, grads) = results
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_head_loss_is_the_mean_cross_entropy_of_the_target_positions():
    """The slow reference: every position's logits, the cross-entropy of those with a target."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(3, 6, 8, requires_grad=True)
    labels = torch.randint(0, 50, (3, 6))
    labels[1, 4:] = labels[2, 1:] = -100
    picked = [(b, i) for b in range(3) for i in range(5) if labels[b, i + 1] != -100]
    want = torch.stack(
        [torch.nn.functional.cross_entropy(head(hidden[b, i]), labels[b, i + 1]) for b, i in picked]
    ).mean()
    got = trainstep.head_loss(hidden, head, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    (want_grad,) = torch.autograd.grad(want, hidden)
    got.backward()
    torch.testing.assert_close(hidden.grad, want_grad)
    assert not hidden.grad[2, 1:].any()  # positions with no target: no gradient


def _train_both(config, records, tmp_path, monkeypatch, paths=(True, False)):
    """{fused: (step losses, final adapter)} of two epochs trained on each path."""
    import json

    from safetensors.torch import load_file

    out = {}
    for fused in paths:
        with monkeypatch.context() as patch:
            if not fused:
                patch.setattr(train_module, "_fused_step", lambda *args: False)
            folder = tmp_path / f"{config.mixed_precision}-{fused}"
            train(config, records, folder, progress=False)
        log = json.loads((folder / "log.json").read_text())
        adapter = load_file(folder / "epoch-2" / "adapter_model.safetensors")
        out[fused] = ([s["loss"] for s in log["steps"]], adapter)
    return out


def _config(model_dir, precision):
    return TrainConfig(
        model=str(model_dir),
        epochs=2,
        lr=1e-2,
        batch_size=4,
        lora_dropout=0.1,
        mixed_precision=precision,
    )


def test_the_fused_path_trains_as_the_plain_one(tiny_model_dir, records, tmp_path, monkeypatch):
    """Two epochs with dropout in float32, both paths: losses within float noise, adapters
    close."""
    runs = _train_both(_config(tiny_model_dir, "no"), records, tmp_path, monkeypatch)
    (fused_losses, a), (plain_losses, b) = runs[True], runs[False]
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_under_bf16_the_fused_path_trains_as_close_to_float32_as_autocast(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    """Two epochs under bf16 autocast on each path and one in float32: the fused path's
    losses within bf16's noise of autocast's, and its adapters no farther from float32's
    than autocast's are (bf16 rounding compounds over the steps: ~5% here on either path)."""
    bf16 = _train_both(_config(tiny_model_dir, "bf16"), records, tmp_path, monkeypatch)
    exact = _train_both(_config(tiny_model_dir, "no"), records, tmp_path, monkeypatch, (True,))
    (fused_losses, fused), (plain_losses, plain) = bf16[True], bf16[False]
    assert fused_losses == pytest.approx(plain_losses, rel=2e-2)
    reference = exact[True][1]

    def distance(adapter):
        return sum((adapter[k] - reference[k]).norm() ** 2 for k in reference).sqrt().item()

    assert 0 < distance(fused) < 1.5 * distance(plain)


def test_the_fused_path_is_taken_only_where_it_computes_the_same(tiny_model_dir):
    """One process: fused in float32 and for LoRA under bf16 autocast; bf16 weights, full
    finetuning under bf16 autocast, several processes: the model's forward."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="no")
    model, _ = build_model(TrainConfig(model=str(tiny_model_dir)))
    fp32 = TrainConfig(model=str(tiny_model_dir), mixed_precision="no")
    assert train_module._fused_step(accelerator, model, fp32)
    bf16 = TrainConfig(model=str(tiny_model_dir), mixed_precision="bf16")
    assert train_module._fused_step(accelerator, model, bf16)
    full = TrainConfig(model=str(tiny_model_dir), mixed_precision="bf16", full=True)
    assert not train_module._fused_step(accelerator, model, full)
    weights = TrainConfig(model=str(tiny_model_dir), mixed_precision="no", dtype="bfloat16")
    assert not train_module._fused_step(accelerator, model, weights)

    class Launched:  # several processes: DDP or FSDP wraps the model, hiding its head
        from accelerate.utils import DistributedType

        distributed_type = DistributedType.MULTI_CPU

    wrapped = torch.nn.Module()  # what DDP gives: no get_output_embeddings, no base model
    assert not train_module._fused_step(Launched(), wrapped, fp32)
