"""The training step's arithmetic, fused: the model's matmuls and as little else as possible.

A LoRA step of a small model on a CPU spends a fifth of its time outside the model's matmuls
when written the plain way (`benchmarks/train.py` measures it; docs/benchmarks.md): the
output head's [tokens, vocabulary] logits, their log-softmax and its gradient (the vocabulary
is 150k for Qwen, so each of these passes moves hundreds of MB), and, for each of the 168
adapters of a 24-layer model, peft's ``result + lora_B(lora_A(x)) * scaling``, two more
elementwise passes over the layer's output forward and two backward. Both are the same
mathematics here, in fewer passes over memory:

- `head_loss`: the mean next-token cross-entropy over the target positions only (padding and
  the last position predict nothing, so their logits are never made), computed in chunks of
  rows: each chunk's logits become their softmax in place, minus one at the target, and go at
  once through the head's backward matmul; only the [tokens, hidden] gradient is kept for the
  backward pass. No [tokens, vocabulary] tensor lives longer than its chunk.
- `float32_attention`: under bf16 autocast on a CPU, the attention itself (PyTorch's fused
  scaled-dot-product attention) runs on float32 copies of its bf16 queries, keys and values:
  its bf16 backward is about twice as slow as its float32 one there.
- `fuse_lora`: each plain LoRA linear layer computes ``x W^T + b + scaling (x A^T) B^T`` as one
  matmul plus one accumulating matmul (``addmm_``) into the same output, and its backward in
  matmuls that accumulate into the input gradient, with no elementwise pass.

Under bf16 autocast the same step computes what autocast would, in bf16 where autocast runs
bf16 (the layers' and the head's matmuls), float32 elsewhere (the softmax of the loss, the
adapters' gradients), without autocast's copies: `fuse_lora` stores each frozen base weight
in bf16 once, where autocast casts every float32 weight again at every forward (15% of a bf16
step of the 0.5B pack on an AMX Xeon), and the head's weight is cast once a step.

Rounding (float32): the hidden states are bitwise the plain path's; the loss differs in the order of
its float additions and in its sum over tokens, taken in float64 here (transformers' float32
reduction is off by ~1e-5 relative on a batch of 8 biographies of the 0.5B pack, against 2e-8
here, both measured against a float64 computation of the same loss). `tests/test_trainstep.py`
compares losses and gradients with the plain path in both precisions. In bf16 the adapter's
product is accumulated into the base's output inside one matmul, where peft adds two bf16
results: close, not bitwise.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

CHUNK_ELEMENTS = 1 << 26
"""Logits computed at once by `head_loss` (256 MB in float32): ``CHUNK_ELEMENTS // vocabulary``
rows a chunk, 441 for a 152k vocabulary. Each chunk's matmuls read the whole head weight
(544 MB for Qwen2.5-0.5B), so fewer, larger chunks read it less often: on 2 cores of an
AVX512-BF16 EPYC (MKL's float32 matmuls take their AVX2 path there) 220 rows ran the head's
forward matmul at 88 GFLOP/s against 112 for 441, and a float32 step of 8 biographies of the
0.5B pack took 5% less time (the same loss); bf16 steps did not change. The bound keeps a
chunk's memory small beside the model's."""


class _HeadCrossEntropy(torch.autograd.Function):
    """Sum over rows of cross-entropy(hidden @ weight^T, targets); its gradients are computed
    in the forward pass, chunk by chunk (see the module doc), and scaled in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows, compute):
        # hidden [n, h], weight [v, h], targets [n]; the logits' matmuls run in `compute`, their
        # softmax in float32. A weight with a gradient (full finetuning) comes in float32 only.
        total = hidden.new_zeros((), dtype=torch.float64)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        w = weight.to(compute)  # [v, h]: one cast a step, where autocast casts at each use
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start : start + rows].to(compute)  # [m, h]
            t = targets[start : start + rows, None]  # [m, 1]
            logits = (h @ w.t()).float()  # [m, v]
            target = logits.gather(1, t)  # [m, 1]
            top = logits.amax(1, keepdim=True)  # [m, 1]
            probs = logits.sub_(top).exp_()  # [m, v], unnormalised
            norm = probs.sum(1, keepdim=True)  # [m, 1]
            total += (norm.log() + top - target).sum(dtype=torch.float64)
            if grad_hidden is None and grad_weight is None:
                continue
            probs.div_(norm).scatter_add_(1, t, torch.full_like(target, -1.0))  # dloss/dlogits
            if grad_hidden is not None and compute == grad_hidden.dtype:
                torch.mm(probs, w, out=grad_hidden[start : start + rows])
            elif grad_hidden is not None:
                grad_hidden[start : start + rows] = probs.to(compute) @ w
            if grad_weight is not None:
                grad_weight.addmm_(probs.t(), h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_total.to(torch.float32)
        return (
            None if grad_hidden is None else grad_hidden * scale,
            None if grad_weight is None else grad_weight * scale,
            None,
            None,
            None,
        )


def head_loss(hidden: torch.Tensor, head: nn.Linear, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `head` on the decoder's `hidden` states [batch, seq,
    hidden] against `labels` [batch, seq] (-100: no target), as a causal LM's loss: position i
    predicts label i + 1. The same value as transformers' loss for these labels."""
    targets = labels[:, 1:]  # [batch, seq - 1]
    keep = targets != -100
    picked = hidden[:, :-1][keep]  # [n, hidden]: only positions with a target
    rows = max(1, CHUNK_ELEMENTS // head.out_features)
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    if compute is not None and head.weight.requires_grad:
        raise ValueError("head_loss under autocast takes a frozen head (LoRA), not full finetuning")
    with torch.autocast(device, enabled=False):  # the casts are the function's own
        total = _HeadCrossEntropy.apply(
            picked, head.weight, targets[keep], rows, compute or head.weight.dtype
        )
    return total / keep.sum()


class _LoraLinear(torch.autograd.Function):
    """``x W^T + b + scaling (x_lora A^T) B^T`` with W, b frozen; x_lora is x, or x after the
    adapter's dropout (None: x). Computed in W's dtype (x and the adapter cast to it, as
    autocast would); each gradient comes back in its input's dtype."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scaling):
        dtype = weight.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # [tokens, in]
        xl = x2 if x_lora is None else x_lora.reshape(-1, x.shape[-1]).to(dtype)
        a, b = lora_a.to(dtype), lora_b.to(dtype)  # [r, in], [out, r]
        down = xl @ a.t()  # [tokens, r]
        out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        out.addmm_(down, b.t(), alpha=scaling)  # [tokens, out]
        ctx.save_for_backward(xl, weight, a, b, down)
        ctx.scaling, ctx.shape, ctx.dropped = scaling, x.shape, x_lora is not None
        ctx.dtypes = x.dtype, lora_a.dtype, lora_b.dtype
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        xl, weight, lora_a, lora_b, down = ctx.saved_tensors
        s = ctx.scaling
        x_dtype, a_dtype, b_dtype = ctx.dtypes
        g = grad.reshape(-1, weight.shape[0]).to(weight.dtype)  # [tokens, out]
        up = g @ lora_b  # [tokens, r]
        grad_b = torch.mm(g.t(), down).mul_(s).to(b_dtype)  # [out, r]
        grad_a = torch.mm(up.t(), xl).mul_(s).to(a_dtype)  # [r, in]
        grad_x = grad_xl = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight  # [tokens, in]
            if not ctx.dropped:
                grad_x.addmm_(up, lora_a, alpha=s)
            grad_x = grad_x.view(ctx.shape).to(x_dtype)
        if ctx.dropped and ctx.needs_input_grad[1]:
            grad_xl = torch.mm(up, lora_a).mul_(s).view(ctx.shape).to(x_dtype)
        return grad_x, grad_xl, None, None, grad_a, grad_b, None


def _lora_forward(layer, plain, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`layer`'s forward through `_LoraLinear` where it is plain LoRA with frozen base weights
    of x's dtype, or of the autocast dtype under autocast, else peft's own forward (`plain`):
    adapters disabled or merged, several active, extra arguments, other dtypes."""
    (name,) = layer.active_adapters if len(layer.active_adapters) == 1 else (None,)
    base = layer.base_layer
    device = x.device.type
    autocast = torch.is_autocast_enabled(device)
    wanted = torch.get_autocast_dtype(device) if autocast else x.dtype
    if (
        args
        or kwargs
        or name not in layer.lora_A
        or layer.disable_adapters
        or layer.merged
        or name in layer.lora_variant
        or base.weight.requires_grad
        or (base.bias is not None and base.bias.requires_grad)
        or base.weight.dtype != wanted
        or (not autocast and layer.lora_A[name].weight.dtype != wanted)
    ):
        return plain(x, *args, **kwargs)
    dropout = layer.lora_dropout[name]
    x_lora = None if isinstance(dropout, nn.Identity) else dropout(x)
    with torch.autocast(device, enabled=False):  # the casts are `_LoraLinear`'s own
        return _LoraLinear.apply(
            x,
            x_lora,
            base.weight,
            base.bias,
            layer.lora_A[name].weight,
            layer.lora_B[name].weight,
            layer.scaling[name],
        )


def fuse_lora(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Route the forward of `model`'s peft LoRA linear layers over a plain `nn.Linear` through
    `_LoraLinear` (the adapters, and so what is saved, stay peft's); returns how many.
    `dtype`: the autocast dtype the model will train under; each frozen base layer is stored
    in it, once, so that no step casts it again."""
    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is nn.Linear:
            base = module.base_layer
            if dtype is not None and not any(p.requires_grad for p in base.parameters()):
                base.to(dtype)
            plain = type(module).forward.__get__(module)
            module.forward = functools.partial(_lora_forward, module, plain)
            count += 1
    return count


# --------------------------------------------------------------------------- attention

FLOAT32_ATTENTION = "elusive_sdpa_float32"
"""The attention implementation `float32_attention` gives a model: transformers' sdpa on
float32 copies of the queries, keys and values, outside autocast."""


def _sdpa_float32(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """sdpa with float32 inputs, its output cast back to the queries' dtype. On 2 cores of an
    AMX Xeon, sdpa's forward and backward on [8, 14, 160, 64] bf16 inputs (causal) took 71 ms
    against 32 ms in float32 and 38 ms for float32 copies of bf16 inputs (CPU autocast runs
    sdpa in bf16, so autocast is off inside)."""
    dtype = query.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(dtype), weights


AttentionInterface.register(FLOAT32_ATTENTION, _sdpa_float32)
ALL_MASK_ATTENTION_FUNCTIONS.register(FLOAT32_ATTENTION, sdpa_mask)


def float32_attention(model: nn.Module) -> bool:
    """Route `model`'s attention through `_sdpa_float32` where it uses transformers' sdpa;
    returns whether it did. For bf16 autocast on a CPU: the whole training run, and the model
    it saves (adapters only) does not record it."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if causal.config._attn_implementation != "sdpa":
        return False
    causal.set_attn_implementation(FLOAT32_ATTENTION)
    return True
