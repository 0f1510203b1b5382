"""Training throughput: `elusive.train` vs a plain `transformers.Trainer` + peft baseline, each
in fp32 and under bf16 autocast.

All four train the same LoRA (r=16, all linear layers) on the same tokenized biographies with
the same batch size, learning rate and schedule for one epoch; the time is the training loop
only (model loading excluded). Tokens are the non-padding tokens of the corpus.

    flock /tmp/cpu.lock python benchmarks/train.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

# As the `elusive` command does (see elusive/cli.py): OpenMP waits passively. Set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from elusive.bios import BiosConfig, generate_bios  # noqa: E402
from elusive.models import load_tokenizer  # noqa: E402
from elusive.train import TrainConfig, build_model, pad_batch, tokenize_texts, train  # noqa: E402

PRECISIONS = ("no", "bf16")


def run_ours(config: TrainConfig, records, out: Path) -> float:
    train(config, records, out, progress=False)
    return json.loads((out / "log.json").read_text())["epochs"][0]["seconds"]


def run_trainer(config: TrainConfig, seqs, pad_id: int, out: Path) -> float:
    from accelerate.state import AcceleratorState
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
    AcceleratorState._reset_state()  # the Trainer's accelerator refuses the last run's precision
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
    args = parser.parse_args()

    records = generate_bios(BiosConfig(n=args.texts, seed=0))[0]
    tokenizer = load_tokenizer(args.model)
    base = TrainConfig(model=args.model, epochs=1, lr=1e-3, batch_size=8)
    seqs = tokenize_texts([r.text for r in records], tokenizer, base.max_length)
    tokens = sum(len(s) for s in seqs)
    speed: dict[tuple[str, str], float] = {}  # (who, precision) -> tokens/s
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            config = TrainConfig(**{**vars(base), "mixed_precision": precision})
            out = Path(tmp) / precision
            seconds = run_trainer(config, seqs, tokenizer.pad_token_id, out / "trainer")
            speed["Trainer + peft", precision] = tokens / seconds
            speed["elusive.train", precision] = tokens / run_ours(config, records, out / "ours")
    policy = os.environ["OMP_WAIT_POLICY"]
    print(f"model {args.model}, {args.texts} texts, {tokens} tokens, batch 8, LoRA r=16, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}")  # fmt: skip
    for (who, precision), rate in speed.items():
        print(f"{who:15s} {'fp32' if precision == 'no' else precision:5s}: {rate:8.1f} tokens/s")
    ours = speed["elusive.train", "bf16"]
    trainer_best = max(speed["Trainer + peft", p] for p in PRECISIONS)
    print(f"ratio ours bf16 / ours fp32: {ours / speed['elusive.train', 'no']:.2f} (target >= 2.5)")
    print(f"ratio ours bf16 / Trainer best: {ours / trainer_best:.2f} (target >= 1.0)")


if __name__ == "__main__":
    main()
