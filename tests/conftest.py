"""Shared fixtures: tiny random models built from configs (seconds, no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the fused attention kernel (elusive.kernels) runs under Triton's CPU interpreter,
# which must be chosen before triton compiles anything, i.e. before elusive is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model_dir(request, tmp_path_factory):
    """A saved tiny model folder of each architecture (llama adds BOS, qwen2 does not)."""
    from elusive.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), arch=request.param)
