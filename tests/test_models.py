import torch

from elusive.models import load_model


def test_tiny_model_loads_and_tokenizes_with_offsets(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    text = "Ava Mia Smith was born on May 2, 1970."
    enc = tok(text, return_offsets_mapping=True)
    assert len(enc["input_ids"]) < 0.6 * len(text)  # the BPE merges learnt real words
    with torch.no_grad():
        logits = model(torch.tensor([enc["input_ids"]])).logits
    assert logits.shape == (1, len(enc["input_ids"]), model.config.vocab_size)
    has_bos = enc["input_ids"][0] == tok.bos_token_id
    assert has_bos == (model.config.model_type == "llama")
