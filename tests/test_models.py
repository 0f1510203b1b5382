import json
from pathlib import Path

import pytest
import torch

from elusive import models
from elusive.models import ModelSpecError, OfflinePack, load_model, model_fingerprint, resolve_model
from elusive.tiny import make_tiny_model


def test_tiny_model_loads_and_tokenizes_with_offsets(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    text = "Ava Mia Smith was born on May 2, 1970."
    enc = tok(text, return_offsets_mapping=True)
    assert len(enc["input_ids"]) < 0.6 * len(text)  # the BPE merges learnt real words
    with torch.no_grad():
        logits = model(torch.tensor([enc["input_ids"]], device=model.device)).logits
    assert logits.shape == (1, len(enc["input_ids"]), model.config.vocab_size)
    has_bos = enc["input_ids"][0] == tok.bos_token_id
    assert has_bos == (model.config.model_type == "llama")


# --------------------------------------------------------------------------- GGUF and packs

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(name: str) -> str:
    if name in _GGUF_NAMES:
        return _GGUF_NAMES[name]
    _, _, layer, rest = name.split(".", 3)  # model.layers.<i>.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_NAMES[module]}.{kind}"


def write_tiny_gguf(model_dir, path):
    """A float32 qwen2 GGUF file of a tiny model folder, as llama.cpp would write it."""
    from gguf import GGUFWriter, TokenType
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["id"] for t in tok["added_tokens"]}
    writer = GGUFWriter(str(path), "qwen2")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types(
        [TokenType.CONTROL if i in specials else TokenType.NORMAL for _, i in vocab]
    )
    writer.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        writer.add_tensor(_gguf_name(name), tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    folder = make_tiny_model(root / "folder", arch="qwen2")
    return folder, write_tiny_gguf(folder, root / "tiny.gguf")


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids], device=model.device)).logits.cpu()


def _count_conversions(monkeypatch):
    calls = []
    real = models.convert_gguf

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "convert_gguf", counting)
    return calls


def test_gguf_file_converts_once_into_a_verified_folder(tiny_gguf, tmp_path, monkeypatch):
    folder, gguf = tiny_gguf
    calls = _count_conversions(monkeypatch)
    model, tok = load_model(gguf, cache_dir=tmp_path)
    reference, ref_tok = load_model(folder)
    ids = ref_tok("Ava Mia Smith was born on May 2, 1970.")["input_ids"]
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=1e-5, rtol=0)
    assert tok.convert_ids_to_tokens(ids) == ref_tok.convert_ids_to_tokens(ids)
    converted = resolve_model(gguf, cache_dir=tmp_path)
    assert converted.parent == tmp_path / "models" and (converted / models.MARKER).is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    load_model(gguf, cache_dir=tmp_path)
    assert len(calls) == 1  # the second load came from the converted folder
    assert model_fingerprint(gguf, cache_dir=tmp_path) == model_fingerprint(converted)
    assert model_fingerprint(converted) != model_fingerprint(folder)


def test_a_damaged_conversion_is_redone(tiny_gguf, tmp_path, monkeypatch):
    _, gguf = tiny_gguf
    converted = resolve_model(gguf, cache_dir=tmp_path)
    (converted / "model.safetensors").write_bytes(b"truncated")
    calls = _count_conversions(monkeypatch)
    load_model(gguf, cache_dir=tmp_path)
    assert len(calls) == 1


def _fake_pack(root, gguf, n_chunks=3):
    """Chunk packages as published on PyPI: fakepack_partK/data/partNN.bin, importable."""
    data = gguf.read_bytes()
    size = -(-len(data) // n_chunks)
    for k in range(n_chunks):
        package = root / f"fakepack_part{k + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{k + 1:02d}.bin").write_bytes(data[k * size : (k + 1) * size])
    return OfflinePack(
        name="fake-pack",
        description="a tiny model in chunks",
        distributions=tuple(f"fakepack-part{k + 1}" for k in range(n_chunks)),
        chunk_modules=tuple(f"fakepack_part{k + 1}" for k in range(n_chunks)),
    )


def test_offline_pack_is_assembled_from_its_chunk_packages(tiny_gguf, tmp_path, monkeypatch):
    folder, gguf = tiny_gguf
    pack = _fake_pack(tmp_path / "site", gguf)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(models.PACKS, pack.name, pack)
    assert [p.name for p in models.pack_chunks(pack)] == ["part01.bin", "part02.bin", "part03.bin"]
    model, tok = load_model("fake-pack", cache_dir=tmp_path / "cache")
    reference, _ = load_model(folder)
    ids = tok("He worked for Google.")["input_ids"]
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=1e-5, rtol=0)
    marker = json.loads((tmp_path / "cache/models/fake-pack" / models.MARKER).read_text())
    assert marker["source"]["pack"] == "fake-pack"
    assert not any((tmp_path / "cache/gguf").iterdir())  # the assembled GGUF is not kept


def test_missing_pack_names_the_pip_command(monkeypatch, tmp_path):
    pack = OfflinePack("nope", "absent", ("nope-part1", "nope-part2"), ("nope_part1", "nope_part2"))
    monkeypatch.setitem(models.PACKS, "nope", pack)
    with pytest.raises(ModelSpecError) as info:
        load_model("nope", cache_dir=tmp_path)
    assert "pip install nope-part1 nope-part2" in str(info.value)
    assert 'pip install -e ".[offline-models]"' in str(info.value)


def test_real_packs_are_declared_in_the_offline_extra():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    extra = pyproject.split("offline-models = [", 1)[1].split("]", 1)[0]
    for pack in models.PACKS.values():
        assert all(f'"{dist}"' in extra for dist in pack.distributions), pack.name


def test_bad_specs_fail_with_one_clear_line(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    cases = {
        str(tmp_path / "empty"): "no config.json",
        str(tmp_path / "weights.bin"): "must be a .gguf file",
        str(tmp_path / "missing.gguf"): "no such .gguf file",
        "not a spec": "is not a model folder, a .gguf file, a pack name",
        str(tmp_path / "broken.gguf"): "cannot load this GGUF file",
    }
    for spec, message in cases.items():
        with pytest.raises(ModelSpecError, match=message):
            load_model(spec, cache_dir=tmp_path / "cache")

    def offline(repo_id):
        raise OSError("no network")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelSpecError, match="'Qwen/Qwen2.5-0.5B': could not get it from the hub"):
        load_model("Qwen/Qwen2.5-0.5B")


def test_device_comes_from_env_or_argument(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ELUSIVE_DEVICE", "cpu")
    assert models.default_device() == torch.device("cpu")
    model, _ = load_model(tiny_model_dir)
    assert model.device.type == "cpu"
    monkeypatch.setenv("ELUSIVE_DEVICE", "gpu0")
    with pytest.raises(ModelSpecError, match="ELUSIVE_DEVICE='gpu0'"):
        models.default_device()
    monkeypatch.delenv("ELUSIVE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.default_device().type == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # process 1 of torchrun / accelerate launch
    assert models.default_device() == torch.device("cuda", 1)


@pytest.mark.parametrize(
    "marker",
    ["{}", '{"files": []}', '{"files": {"config.json": {}}}', "[1]", '{"files": {'],
)
def test_a_damaged_conversion_marker_means_not_converted(tmp_path, marker):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / models.MARKER).write_text(marker)
    assert not models._is_converted(tmp_path)
    size = (tmp_path / "config.json").stat().st_size
    (tmp_path / models.MARKER).write_text(json.dumps({"files": {"config.json": {"size": size}}}))
    assert models._is_converted(tmp_path)


def test_a_damaged_marker_triggers_a_reconversion(tiny_gguf, tmp_path, monkeypatch):
    _, gguf = tiny_gguf
    converted = resolve_model(gguf, cache_dir=tmp_path)
    (converted / models.MARKER).write_text('{"source": {}}')  # no "files": was a KeyError
    calls = _count_conversions(monkeypatch)
    load_model(gguf, cache_dir=tmp_path)
    assert len(calls) == 1 and "files" in json.loads((converted / models.MARKER).read_text())
