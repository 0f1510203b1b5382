"""Shared fixtures: tiny random models built from configs (seconds, no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the fused attention kernel (elusive.scoring.kernels) runs under Triton's CPU
# interpreter, which must be chosen before triton compiles anything, i.e. before elusive is
# imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """Every test's caches (attention scores, converted models) go to a folder of the
    session's own, never the user's ~/.cache/elusive."""
    before = os.environ.get("ELUSIVE_CACHE")
    os.environ["ELUSIVE_CACHE"] = str(tmp_path_factory.mktemp("elusive-cache"))
    yield
    if before is None:
        os.environ.pop("ELUSIVE_CACHE")
    else:
        os.environ["ELUSIVE_CACHE"] = before


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model_dir(request, tmp_path_factory):
    """A saved tiny model folder of each architecture (llama adds BOS, qwen2 does not)."""
    from elusive.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), arch=request.param)


@pytest.fixture
def sliding_window_model():
    """A fresh tiny Qwen2 whose second layer attends through a 5-token sliding window."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=5,
        max_window_layers=1,
    )
    assert config.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and much faster when the cores are shared; a
    module that trains them asks for it (``pytestmark = pytest.mark.usefixtures(...)``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def records():
    """12 generated biographies (seed 3): the training corpus of the tiny-model tests."""
    from elusive.corpus.bios import BiosConfig, generate_bios

    return generate_bios(BiosConfig(n=12, seed=3))[0]
