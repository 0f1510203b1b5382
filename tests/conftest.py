"""Shared fixtures: tiny random models built from configs (seconds, no downloads)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model_dir(request, tmp_path_factory):
    """A saved tiny model folder of each architecture (llama adds BOS, qwen2 does not)."""
    from elusive.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), arch=request.param)
