"""The fused attention kernel against plain PyTorch, and the scorer through it against the
blocked scorer. Without a GPU the kernel runs under Triton's interpreter (see conftest.py)."""

import pytest
import torch

from elusive.models import load_model
from elusive.scoring import attention, kernels
from elusive.scoring.attention import attention_received

triton = pytest.importorskip("triton", reason="triton: pip install -e '.[dev]'")

DEVICES = (["cpu"] if kernels.INTERPRETED else []) + (["cuda"] if torch.cuda.is_available() else [])


def reference(query, key, weights, scale):
    """The causal probabilities in float32, then their weighted column sums: ([b, T], lse)."""
    logits = query.float() @ key.float().transpose(2, 3) * scale  # [b, h, T, T]
    length = query.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
    logits = logits.masked_fill(~causal, float("-inf"))
    sums = (logits.softmax(-1) * weights[:, None, :, None]).sum(dim=(1, 2))
    return sums, torch.logsumexp(logits, -1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length,head_dim", [(37, 8), (50, 24), (16, 16)])
def test_column_sums_match_softmax_reference(device, dtype, length, head_dim):
    """Lengths off the block size, head sizes padded to a power of two, queries left out."""
    torch.manual_seed(0)
    q, k = (torch.randn(2, 3, length, head_dim, device=device).to(dtype) for _ in range(2))
    weights = torch.ones(2, length, device=device)
    weights[1, length - 5 :] = 0
    expected, lse = reference(q, k, weights, head_dim**-0.5)
    got = kernels.column_sums(q, k, lse, weights, head_dim**-0.5)
    assert got.shape == (2, length) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)
    again = kernels.column_sums(q, k, lse, weights, head_dim**-0.5)
    assert torch.equal(got, again)  # no atomics: the same bytes every run


@pytest.mark.parametrize("device", DEVICES)
def test_attention_with_lse_is_causal_sdpa_and_its_logsumexp(device):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # flash wants half on a GPU
    q, k, v = (torch.randn(2, 4, 33, 16, device=device).to(dtype) for _ in range(3))
    out, lse = kernels.attention_with_lse(q, k, v, 0.3)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    tol = {"atol": 2e-2, "rtol": 0} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 0}
    torch.testing.assert_close(out, sdpa, **tol)
    torch.testing.assert_close(lse, reference(q, k, torch.ones(2, 33, device=device), 0.3)[1])


@pytest.mark.parametrize("capability,expected", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_the_kernel_runs_on_ampere_or_newer(monkeypatch, capability, expected):
    """Older GPUs have no flash attention in PyTorch: their layers take the blocked path."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert kernels.available(torch.device("cuda", 0)) is expected


def _spy(monkeypatch, device):
    """Route `device` through the kernel; the list records each layer that went through it."""
    calls = []
    column_sums = kernels.column_sums
    monkeypatch.setattr(attention, "KERNEL_DEVICES", (device,))
    monkeypatch.setattr(kernels, "column_sums", lambda *a: calls.append(1) or column_sums(*a))
    return calls


def _batch(model, lengths, side="right"):
    torch.manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids, mask if side == "right" else mask.flip(-1)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_scores_equal_blocked_scores_on_a_padded_batch(tiny_model_dir, device, monkeypatch):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, _ = load_model(tiny_model_dir, dtype, device=device)
    ids, mask = _batch(model, [40, 31, 7])
    blocked = attention_received(model, ids, mask)
    calls = _spy(monkeypatch, device)
    fused = attention_received(model, ids, mask)
    assert len(calls) == model.config.num_hidden_layers
    tol = 2e-3 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(fused, blocked, atol=tol, rtol=0)
    assert torch.all(fused[mask == 0] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_left_padding_and_sliding_windows_take_the_blocked_path(
    device, monkeypatch, sliding_window_model
):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = sliding_window_model.to(device, dtype)
    right, left = _batch(model, [17, 12]), _batch(model, [17, 12], side="left")
    blocked = [attention_received(model, *batch) for batch in (right, left)]
    calls = _spy(monkeypatch, device)
    fused = attention_received(model, *right)
    assert len(calls) == 1  # the full-attention layer; the sliding one is blocked
    assert torch.allclose(fused, blocked[0], atol=2e-3 if device == "cuda" else 1e-6)
    assert torch.equal(attention_received(model, *left), blocked[1])
    assert len(calls) == 1  # left padding: the causal mask would not hide it


COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from elusive.scoring.kernels import _column_sums, _tuned

ints = ["T", "H", "BUCKET"] + [f"stride_{t}{d}" for t in "qk" for d in "bht"]
signature = {"Q": "*bf16", "K": "*bf16", "LSE2": "*fp32", "SUMS": "*fp32", "scale_log2": "fp32"}
signature |= {name: "i32" for name in ints}
for config in _tuned().configs:
    for capability in (80, 90):
        constexprs = {"D": 128, "D_PAD": 128, "UPCAST": False, **config.kwargs}
        kinds = signature | dict.fromkeys(constexprs, "constexpr")
        source = ASTSource(_column_sums, kinds, constexprs)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
        assert kernel.asm["cubin"], (capability, config)
print("compiled")
"""


def test_the_kernel_compiles_for_ampere_and_hopper_gpus(tmp_path):
    """Without a GPU, compile the kernel to machine code for sm_80 and sm_90 (triton brings its
    own ptxas): what the interpreter cannot check, e.g. that every tile shape lowers."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile afresh, leave nothing behind
    done = subprocess.run(
        [sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-2000:]
