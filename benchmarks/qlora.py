"""QLoRA against LoRA: peak memory and training tokens/s of `elusive.training.train` with the base
in fp32 and with ``quantize: 4bit`` (NF4 weights through bitsandbytes, computed in fp32).

Both train the same LoRA (r=16, every linear layer but the head) on the same biographies, one
epoch at the same batch size, without autocast, so the base's storage is the only difference.
Each runs in a process of its own, so that its peak resident memory (`ru_maxrss`: loading and
training together) is its own. Resident memory counts the pages of a memory-mapped weights file
too, which the kernel can drop and read again; a thread samples the anonymous part of it (the
process's own memory, /proc/self/status RssAnon) every 20 ms for its peak. Tokens are the
non-padding tokens of the corpus; the time is the training loop only (`log.json`'s epoch
seconds: model loading excluded).

    nice -n 19 python benchmarks/qlora.py            # the 0.5B pack, 8 biographies, 2 steps each
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# As the `elusive` command does (see elusive/cli.py): OpenMP waits passively. Set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODES = {"no": "LoRA, fp32 base", "4bit": "QLoRA, NF4 base"}


def measure(model: str, texts: int, batch_size: int, quantize: str) -> dict:
    """Train one epoch with `quantize` in this process; its numbers as a dict."""
    import torch

    import elusive.training.train as train_module
    from elusive.corpus.bios import BiosConfig, generate_bios
    from elusive.training.train import TrainConfig, train

    records = generate_bios(BiosConfig(n=texts, seed=0))[0]
    config = TrainConfig(
        model=model,
        epochs=1,
        lr=1e-3,
        batch_size=batch_size,
        warmup=0.0,
        mixed_precision="no",
        quantize=quantize,
    )
    footprint = {}
    build = train_module.build_model

    def measured_build(*args, **kwargs):
        built, tokenizer = build(*args, **kwargs)
        footprint["weights"] = sum(p.numel() * p.element_size() for p in built.parameters())
        footprint["loaded_rss"] = _peak_rss()
        # the tokens trained on: each text's ids and its EOS (biographies are far shorter than
        # max_length)
        ids = tokenizer([r.text for r in records])["input_ids"]
        footprint["tokens"] = sum(len(seq) + 1 for seq in ids)
        return built, tokenizer

    train_module.build_model = measured_build
    sampler = AnonymousPeak()
    with tempfile.TemporaryDirectory() as tmp, sampler:
        train(config, records, Path(tmp) / "run", progress=False)
        log = json.loads((Path(tmp) / "run" / "log.json").read_text())
    tokens = footprint["tokens"]
    seconds = log["epochs"][0]["seconds"]
    return {
        "quantize": quantize,
        "tokens": tokens,
        "steps": len(log["steps"]),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "loss": log["epochs"][0]["loss"],
        "weights_gib": footprint["weights"] / 2**30,
        "loaded_peak_rss_gib": footprint["loaded_rss"],
        "peak_rss_gib": _peak_rss(),
        "peak_anon_gib": sampler.peak / 2**20,
        "threads": torch.get_num_threads(),
    }


class AnonymousPeak:
    """While in its block, a thread samples this process's anonymous resident memory (KiB)."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self._done = every, 0, threading.Event()

    def _sample(self) -> None:
        while True:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]))
            if self._done.wait(self.every):
                return

    def __enter__(self) -> AnonymousPeak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def _peak_rss() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--texts", type=int, default=8, help="biographies")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a child's mode
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.model, args.texts, args.batch_size, args.one)))
        return

    results = {}
    for quantize in MODES:
        command = [sys.executable, __file__, "--model", args.model, "--texts", str(args.texts)]
        command += ["--batch-size", str(args.batch_size), "--one", quantize]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{MODES[quantize]} failed:\n{done.stderr[-3000:]}")
        results[quantize] = json.loads(done.stdout.strip().splitlines()[-1])
    lora, qlora = results["no"], results["4bit"]
    print(
        f"model {args.model}, {args.texts} biographies, {lora['tokens']} tokens, batch "
        f"{args.batch_size} ({lora['steps']} steps), LoRA r=16, no autocast, "
        f"{lora['threads']} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    for quantize, r in results.items():
        print(
            f"{MODES[quantize]:16s}: weights {r['weights_gib']:.2f} GiB; peak RSS after loading "
            f"{r['loaded_peak_rss_gib']:.2f} GiB, whole run {r['peak_rss_gib']:.2f} GiB, of it "
            f"anonymous {r['peak_anon_gib']:.2f} GiB; {r['tokens_per_s']:.1f} tokens/s "
            f"({r['seconds']:.1f} s), loss {r['loss']:.4f}"
        )
    print(
        f"ratio QLoRA / LoRA: weights x{qlora['weights_gib'] / lora['weights_gib']:.2f}, "
        f"peak RSS x{qlora['peak_rss_gib'] / lora['peak_rss_gib']:.2f}, "
        f"peak anonymous x{qlora['peak_anon_gib'] / lora['peak_anon_gib']:.2f}, "
        f"tokens/s x{qlora['tokens_per_s'] / lora['tokens_per_s']:.2f}"
    )


if __name__ == "__main__":
    main()
