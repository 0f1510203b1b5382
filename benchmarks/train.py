"""Training throughput against the machine's limit: `elusive.training.train` vs a plain
`transformers.Trainer` + peft baseline, in fp32 and, where the CPU computes bf16 natively
(AVX512-BF16, AMX), under bf16 autocast: never where bf16 is emulated, ~100x slower than fp32
there. With ``--batching``, the padded-token share and tokens/s of the three batch layouts of
`elusive.training.train` (default, ``group_by_length``, ``packing``).

Both train the same LoRA (r=16, all linear layers) on the same tokenized biographies with
the same batch size, learning rate and schedule for one epoch; the time is the training loop
only (model loading excluded). Tokens are the non-padding tokens of the corpus.

The same run measures the machine's matmul peak per precision (the best of a few
``[tokens, hidden] @ [hidden, out]`` products shaped like the model's layers) and prints the
model FLOP utilisation of each trainer: model work per token x tokens/s / peak, the work of
a LoRA step taken as 4 x the parameters of the linear layers (2 for the forward pass, 2 for
the input gradients of the backward pass; the frozen weights get no gradient, the adapters'
and the attention scores' FLOPs are left out), so 100% is the peak's matmuls and nothing else.

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
import time
from pathlib import Path

# As the `elusive` command does (see elusive/cli.py): OpenMP waits passively. Set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from elusive.corpus.bios import BiosConfig, generate_bios  # noqa: E402
from elusive.models import load_tokenizer, native_bf16  # noqa: E402
from elusive.tiny import make_tiny_model  # noqa: E402
from elusive.training.batches import padded_share  # noqa: E402
from elusive.training.train import (  # noqa: E402
    TrainConfig,
    build_model,
    make_batches,
    pad_batch,
    tokenize_texts,
    train,
)

DTYPE = {"no": torch.float32, "bf16": torch.bfloat16}


def precisions() -> list[str]:
    """fp32 always; bf16 only where the CPU computes it natively (`native_bf16`)."""
    return ["no", *(["bf16"] if native_bf16(torch.device("cpu")) else [])]


def matmul_peak(precision: str, shapes, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `shapes` ((m, k, n): an [m, k] @ [k, n] product, 2mkn FLOPs),
    best of `repeats` timings each, after a warm-up."""
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, dtype=DTYPE[precision])
        b = torch.randn(k, n, dtype=DTYPE[precision])
        a @ b  # warm-up: thread pool, packing buffers
        for _ in range(repeats):
            began = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - began))
    return best


def cpu_name() -> str:
    """The CPU's model name (Linux), or what `platform` knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def linear_parameters(model: torch.nn.Module) -> int:
    """Weights of the model's linear layers (the output head included, tied or not): what each
    token multiplies through."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def layer_shapes(model: torch.nn.Module, tokens: int) -> list[tuple[int, int, int]]:
    """(tokens, in, out) of the model's distinct linear layers but the head: the products a
    training step is made of."""
    head = model.get_output_embeddings()
    return sorted(
        {
            (tokens, m.in_features, m.out_features)
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not head
        }
    )


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
    from elusive.corpus.records import Record

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

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "tiny":
            model = str(make_tiny_model(Path(tmp) / "tiny", hidden_size=256, layers=4))
        records = generate_bios(BiosConfig(n=args.texts, seed=0))[0]
        tokenizer = load_tokenizer(model)
        base = TrainConfig(model=model, epochs=1, lr=1e-3, batch_size=8)
        seqs = tokenize_texts([r.text for r in records], tokenizer, base.max_length)
        tokens = sum(len(s) for s in seqs)
        model, _ = build_model(base)  # once, for its shapes; each trainer builds its own
        work = 4 * linear_parameters(model)  # FLOPs a token costs a LoRA step
        shapes = layer_shapes(model, base.batch_size * max(len(s) for s in seqs))
        del model
        peak = {p: matmul_peak(p, shapes) for p in precisions()}
        speed: dict[tuple[str, str], float] = {}  # (who, precision) -> tokens/s
        for precision in peak:
            config = TrainConfig(**{**vars(base), "mixed_precision": precision})
            out = Path(tmp) / precision
            seconds = run_trainer(config, seqs, tokenizer.pad_token_id, out / "trainer")
            speed["Trainer + peft", precision] = tokens / seconds
            speed["elusive.training.train", precision] = tokens / run_ours(
                config, records, out / "ours"
            )
    policy = os.environ["OMP_WAIT_POLICY"]
    print(f"model {args.model}, {args.texts} texts, {tokens} tokens, batch 8, LoRA r=16, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}; "
          f"{work / 1e9:.2f} GFLOP a token (4 x linear parameters)")  # fmt: skip
    # the timings are the machine's share left to this run: say how busy it was
    print(f"CPU {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
          "(1 min) at the end")  # fmt: skip
    if "bf16" not in peak:
        print("bf16: not native on this CPU (no AVX512-BF16 or AMX): not run")
    for precision, flops in peak.items():
        name = "fp32" if precision == "no" else precision
        print(f"matmul peak {name:5s}: {flops / 1e9:8.1f} GFLOP/s")
    for (who, precision), rate in speed.items():
        name = "fp32" if precision == "no" else precision
        print(f"{who:15s} {name:5s}: {rate:8.1f} tokens/s, utilisation "
              f"{work * rate / peak[precision]:6.1%} of the {name} peak")  # fmt: skip
    for precision in peak:
        name = "fp32" if precision == "no" else precision
        ratio = speed["elusive.training.train", precision] / speed["Trainer + peft", precision]
        print(f"ratio ours / Trainer, {name}: {ratio:.2f} (target > 1)")
    if "bf16" in peak:
        ours = speed["elusive.training.train", "bf16"] / speed["elusive.training.train", "no"]
        print(f"ratio ours bf16 / ours fp32: {ours:.2f}")


if __name__ == "__main__":
    main()
