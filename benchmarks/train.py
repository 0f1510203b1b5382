"""Training throughput: `elusive.train` vs a plain `transformers.Trainer` + peft baseline.

Both train the same LoRA (r=16, all linear layers) on the same tokenized biographies with the
same batch size, learning rate and schedule for one epoch; the time is the training loop only
(model loading excluded). Tokens are the non-padding tokens of the corpus.

    ELUSIVE_CACHE=/work/cache flock /work/heavy.lock python benchmarks/train.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from elusive.corpus import BiosConfig, generate_bios
from elusive.models import load_tokenizer
from elusive.train import TrainConfig, build_model, pad_batch, tokenize_texts, train


def run_ours(config: TrainConfig, records, out: Path) -> float:
    train(config, records, out, progress=False)
    return json.loads((out / "log.json").read_text())["epochs"][0]["seconds"]


def run_trainer(config: TrainConfig, seqs, pad_id: int, out: Path) -> float:
    from transformers import Trainer, TrainingArguments

    model, _ = build_model(config)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        lr_scheduler_type=config.schedule,
        warmup_steps=int(config.warmup * -(-len(seqs) // config.batch_size)),
        weight_decay=config.weight_decay,
        seed=config.seed,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=config.mixed_precision == "bf16",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=[{"input_ids": s} for s in seqs],
        data_collator=lambda rows: pad_batch([r["input_ids"] for r in rows], pad_id),
    )
    return trainer.train().metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--texts", type=int, default=48, help="biographies (batch size 8)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    args = parser.parse_args()

    records = generate_bios(BiosConfig(n=args.texts, seed=0))[0]
    config = TrainConfig(
        model=args.model, epochs=1, lr=1e-3, batch_size=8, mixed_precision=args.mixed_precision
    )
    tokenizer = load_tokenizer(args.model)
    seqs = tokenize_texts([r.text for r in records], tokenizer, config.max_length)
    tokens = sum(len(s) for s in seqs)
    with tempfile.TemporaryDirectory() as tmp:
        base_s = run_trainer(config, seqs, tokenizer.pad_token_id, Path(tmp) / "trainer")
        ours_s = run_ours(config, records, Path(tmp) / "ours")
    base, ours = tokens / base_s, tokens / ours_s
    print(f"model {args.model}, {args.texts} texts, {tokens} tokens, batch 8, LoRA r=16, "
          f"mixed precision {args.mixed_precision}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"Trainer + peft : {base:8.1f} tokens/s ({base_s:.1f} s)")
    print(f"elusive.train  : {ours:8.1f} tokens/s ({ours_s:.1f} s)")
    print(f"ratio ours / Trainer: {ours / base:.2f} (target >= 1.0)")


if __name__ == "__main__":
    main()
