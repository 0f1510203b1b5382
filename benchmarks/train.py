"""Training throughput: `elusive.train` vs a plain `transformers.Trainer` + peft baseline, each
in fp32 and under bf16 autocast; with ``--batching``, the padded-token share and tokens/s of
the three batch layouts of `elusive.train` (default, ``group_by_length``, ``packing``).

All four train the same LoRA (r=16, all linear layers) on the same tokenized biographies with
the same batch size, learning rate and schedule for one epoch; the time is the training loop
only (model loading excluded). Tokens are the non-padding tokens of the corpus.

    flock /tmp/cpu.lock python benchmarks/train.py
    python benchmarks/train.py --batching --model tiny     # a tiny random model, seconds

``--batching`` trains one epoch of each layout on one mixed-length corpus (biographies alone,
a first sentence alone, or two to six biographies run together, seeded), max_length the longest
text (so the default cuts nothing) unless given; tokens/s counts the tokens trained on.
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

from elusive.batches import padded_share  # noqa: E402
from elusive.bios import BiosConfig, generate_bios  # noqa: E402
from elusive.models import load_tokenizer  # noqa: E402
from elusive.train import (  # noqa: E402
    TrainConfig,
    build_model,
    make_batches,
    pad_batch,
    tokenize_texts,
    train,
)

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


LAYOUTS = {
    "default": {},
    "group_by_length": {"group_by_length": True},
    "packing": {"packing": True},
}


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts of mixed length from biographies: a first sentence alone, one biography, or
    two to six run together (about 15 to 500 tokens each)."""
    import random

    rng = random.Random(seed)
    people = [r.text for r in generate_bios(BiosConfig(n=3 * n, seed=seed))[0]]
    texts = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            texts.append(rng.choice(people).split(". ")[0] + ".")
        else:
            texts.append(" ".join(rng.sample(people, 1 if kind == 1 else rng.randint(2, 6))))
    return texts


def run_batching(args) -> None:
    from elusive.corpus import Record
    from elusive.models import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "tiny":
            model = str(make_tiny_model(Path(tmp) / "tiny", hidden_size=256, layers=4))
        tokenizer = load_tokenizer(model)
        texts = mixed_texts(args.texts)
        records = [Record(id=f"t{k}", text=text) for k, text in enumerate(texts)]
        seqs = tokenize_texts(texts, tokenizer, None)
        max_length = args.max_length or max(len(s) for s in seqs)
        rows = {}
        for name, option in LAYOUTS.items():
            config = TrainConfig(
                model=model, epochs=1, batch_size=8, max_length=max_length, **option
            )
            loader, order = make_batches(
                seqs if config.packing else [s[:max_length] for s in seqs],
                config,
                tokenizer.pad_token_id,
            )
            order.set_epoch(1)  # the batches of the trained epoch
            batches = [
                [
                    ids[:n].tolist()
                    for ids, n in zip(
                        b["input_ids"], b["attention_mask"].sum(1).tolist(), strict=True
                    )
                ]
                for b in loader
            ]
            tokens = sum(len(row) for batch in batches for row in batch)
            seconds = run_ours(config, records, Path(tmp) / name)
            rows[name] = (len(batches), padded_share(batches), tokens, tokens / seconds)
    print(f"model {args.model}, {len(texts)} texts of {min(map(len, seqs))}-"
          f"{max(map(len, seqs))} tokens ({sum(map(len, seqs))} in all), batch 8, max_length "
          f"{max_length}, one epoch, {torch.get_num_threads()} threads")  # fmt: skip
    base = rows["default"][3]
    for name, (batches, share, tokens, rate) in rows.items():
        print(f"{name:15s}: {batches:3d} batches, padded share {share:6.1%}, {tokens} tokens, "
              f"{rate:8.1f} tokens/s, x{rate / base:.2f} the default")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="a spec, or tiny")
    parser.add_argument("--texts", type=int, default=48, help="biographies (batch size 8)")
    parser.add_argument("--batching", action="store_true", help="compare the batch layouts")
    parser.add_argument("--max-length", type=int, default=None, help="--batching's max_length")
    args = parser.parse_args()
    if args.batching:
        run_batching(args)
        return

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
