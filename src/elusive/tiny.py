"""Tiny random causal LMs built from configs, for tests and benchmarks: a few layers, a small
byte-level BPE vocabulary trained on synthetic biographies, saved as a model folder that every
command loads like a real one."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from elusive.specs import ModelSpecError

TINY_ARCHS = ("llama", "qwen2")


def make_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    texts: list[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Build a tiny random causal LM with a byte-level BPE tokenizer and save it to `out_dir`.

    The tokenizer is trained on `texts` (default: 200 synthetic biographies) so that names and
    field values split into a few tokens, as with a real tokenizer. ``llama`` prepends a BOS
    token; ``qwen2`` adds none (like Qwen2.5), so both code paths get tested.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    from elusive.corpus.bios import BiosConfig, generate_bios

    if arch not in TINY_ARCHS:
        raise ModelSpecError(f"tiny arch must be one of {TINY_ARCHS}, got {arch!r}")
    if texts is None:
        texts = [r.text for r in generate_bios(BiosConfig(n=200, seed=12345))[0]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<eos>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    pad_id, bos_id, eos_id = (bpe.token_to_id(t) for t in specials)
    if arch == "llama":
        bpe.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos_id)]
        )
    else:
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(out)

    common = dict(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    return out
