"""A fused GPU kernel for the attention each key receives (Triton).

The blocked scorer of `elusive.scoring.attention` builds every block of attention probabilities in
memory, softmaxes it, reduces it and multiplies it by the values: on a GPU those passes over
memory, not the matmuls, set its speed, and it ran slower than even the naive reference.
Here instead

1. the layer's output and each query row's logsumexp come from the flash-attention forward
   (the fused kernel a plain SDPA forward runs: no T x T tensor), and
2. one Triton kernel rebuilds each causal probability ``p_ij = exp(q_i . k_j * scale - lse_i)``
   on chip, one block of keys against every block of queries that can see it, and sums it down
   its key column: per key block the cost of one ``[block, head_dim] x [head_dim, block]``
   matmul per query block, half the flops of the attention forward, with no map in memory.

Triton comes with PyTorch's CUDA wheels. Without a GPU the kernel runs (slowly) under Triton's
interpreter (``TRITON_INTERPRET=1`` before this module is imported), which is how the tests
check it on the CPU.
"""

from __future__ import annotations

import functools
import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheels of torch come without triton
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton's CPU interpreter is on: fixed blocks (its autotuner needs a GPU) and the dot products
in float32 (its bfloat16 dot gives wrong numbers)."""


def available(device: torch.device) -> bool:
    """Whether the kernel can run on `device`: triton is installed, and the device is a GPU of
    the Ampere generation or newer (PyTorch's flash attention), or the CPU under the
    interpreter."""
    if triton is None:
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and INTERPRETED


def attention_with_lse(
    query: torch.Tensor,  # [batch, heads, T, head_dim]
    key: torch.Tensor,  # [batch, heads, T, head_dim]
    value: torch.Tensor,  # [batch, heads, T, head_dim]
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention output ``[batch, heads, T, head_dim]`` and the logsumexp of every
    query's scaled logits ``[batch, heads, T]`` (float32, natural log), from PyTorch's
    flash-attention forward. On a GPU it needs float16/bfloat16 and head_dim <= 256."""
    if query.device.type == "cuda":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, 0.0, True, False, scale=scale
        )[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, True, scale=scale
        )
    return out, lse[..., : query.shape[2]]  # some kernels pad the rows to a block multiple


def column_sums(
    query: torch.Tensor,  # [batch, heads, T, head_dim]
    key: torch.Tensor,  # [batch, heads, T, head_dim]
    lse: torch.Tensor,  # [batch, heads, T] float32, from `attention_with_lse`
    weights: torch.Tensor,  # [batch, T] 1 for the queries to count, 0 for the others
    scale: float,
) -> torch.Tensor:
    """``sum_{h, i >= j} weights[b, i] * p[b, h, i, j]`` for every key j: ``[batch, T]`` float32,
    with p the causal attention probabilities rebuilt from `lse`. Each (batch, head) sums into
    its own row and the heads are added afterwards, so the result is the same bytes every run
    (no atomic adds). Any float dtype; float32 is multiplied as float32, never as TF32."""
    batch, heads, length, head_dim = query.shape
    query = query if query.stride(-1) == 1 else query.contiguous()
    key = key if key.stride(-1) == 1 else key.contiguous()
    # log2 units, and +inf for the queries left out: exp2(x - inf) = 0 drops them in the kernel
    lse2 = torch.where(weights[:, None, :] > 0, lse.float() * math.log2(math.e), math.inf)
    sums = torch.empty(batch, heads, length, dtype=torch.float32, device=query.device)
    args = (query, key, lse2.contiguous(), sums, length, heads, scale * math.log2(math.e))
    args += (query.stride(0), query.stride(1), query.stride(2))
    args += (key.stride(0), key.stride(1), key.stride(2))
    # tl.dot wants every side >= 16; the padded dimensions load as zeros
    dims = {"D": head_dim, "D_PAD": max(16, triton.next_power_of_2(head_dim))}
    if INTERPRETED:
        grid = (triton.cdiv(length, 16), batch * heads)
        _column_sums[grid](*args, **dims, UPCAST=True, BLOCK_Q=16, BLOCK_K=16)
    else:
        # tuned once per head_dim and power-of-two length, not for every length of a corpus
        bucket = max(128, min(triton.next_power_of_2(length), 16384))
        upcast = query.dtype == torch.float32
        _tuned()[_grid(length, batch * heads)](*args, **dims, UPCAST=upcast, BUCKET=bucket)
    return sums.sum(dim=1)


def _grid(length: int, programs: int):
    return lambda meta: (triton.cdiv(length, meta["BLOCK_K"]), programs)


@functools.cache
def _tuned():
    """`_column_sums` autotuned on the GPU over a few tile shapes (the ones that do not fit the
    chip's shared memory are skipped by the tuner)."""
    shapes = [(64, 128, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 4, 3), (32, 128, 4, 4)]
    configs = [
        triton.Config({"BLOCK_Q": q, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for q, k, w, s in shapes
    ]
    return triton.autotune(configs, key=["D", "UPCAST", "BUCKET"])(_column_sums)


if triton is not None:

    @triton.jit
    def _column_sums(
        Q, K, LSE2, SUMS,  # [B, H, T, D], [B, H, T, D], [B, H, T] contiguous, [B, H, T] contiguous
        T, H, scale_log2,
        stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
        D: tl.constexpr, D_PAD: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BUCKET=0,
    ):  # fmt: skip
        """One program: one block of keys of one (batch, head), against every query block."""
        n0 = tl.program_id(0) * BLOCK_K
        bh = tl.program_id(1).to(tl.int64)  # batch * H + head; int64: offsets pass 2**31
        b, h = bh // H, bh % H
        keys = n0 + tl.arange(0, BLOCK_K)
        dims = tl.arange(0, D_PAD)
        key_t = tl.load(  # [D_PAD, BLOCK_K]: the keys, transposed
            K + b * stride_kb + h * stride_kh + keys[None, :] * stride_kt + dims[:, None],
            mask=(keys[None, :] < T) & (dims[:, None] < D),
            other=0.0,
        )
        total = tl.zeros([BLOCK_K], dtype=tl.float32)
        q_start = (n0 // BLOCK_Q) * BLOCK_Q  # queries before the first key cannot see it
        q_mid = tl.cdiv(n0 + BLOCK_K, BLOCK_Q) * BLOCK_Q  # from here on, every key is visible
        for q0 in range(q_start, T, BLOCK_Q):
            queries = q0 + tl.arange(0, BLOCK_Q)
            q = tl.load(  # [BLOCK_Q, D_PAD]
                Q + b * stride_qb + h * stride_qh + queries[:, None] * stride_qt + dims[None, :],
                mask=(queries[:, None] < T) & (dims[None, :] < D),
                other=0.0,
            )
            lse2 = tl.load(LSE2 + bh * T + queries, mask=queries < T, other=float("inf"))
            if UPCAST:  # a true float32 product (not TF32)
                logits = tl.dot(q.to(tl.float32), key_t.to(tl.float32), input_precision="ieee")
            else:  # half inputs, float32 accumulation: the tensor cores
                logits = tl.dot(q, key_t)  # [BLOCK_Q, BLOCK_K] float32
            p = tl.exp2(logits * scale_log2 - lse2[:, None])
            if q0 < q_mid:  # a block across the diagonal: mask the keys after each query
                p = tl.where(queries[:, None] >= keys[None, :], p, 0.0)
            total += tl.sum(p, axis=0)
        tl.store(SUMS + bh * T + keys, total, mask=keys < T)
