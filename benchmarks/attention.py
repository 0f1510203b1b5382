"""Speed and memory of the attention scorer against the naive reference, on a real model.

    flock /work/heavy.lock python benchmarks/attention.py [--model qwen2.5-coder-0.5b]

For each text length T, three variants each run in a fresh subprocess, so that their peak
memory is their own (peak RSS on the CPU, peak allocated GPU memory on a GPU): "forward" (a
plain SDPA forward pass of the decoder, no scores: the floor), "naive" (eager attention with
output_attentions=True: every layer's T x T maps stacked, then averaged, the slow reference)
and "ours" (`elusive.attention.attention_received`). Both scorers run the decoder stack
without the LM head. Printed per variant: tokens/s (median of the repeats), peak memory of the
process, and the extra peak over the loaded model (what scoring itself needs); then the ratios
ours/naive. Targets: ours at least as fast as naive, and at T=512 at most half of its extra
memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("forward", "naive", "ours")


def _status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class _Memory:
    """The process's memory on the model's device: RSS on the CPU, allocated memory on a GPU."""

    def __init__(self, device) -> None:
        import torch

        self.cuda = torch.cuda if device.type == "cuda" else None

    def now(self) -> int:
        return self.cuda.memory_allocated() if self.cuda else _status("VmRSS")

    def reset_peak(self) -> None:
        if self.cuda:
            self.cuda.reset_peak_memory_stats()
        else:  # VmHWM back to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        return self.cuda.max_memory_allocated() if self.cuda else _status("VmHWM")

    def sync(self) -> None:
        """Wait for queued GPU work, so that a timer sees it."""
        if self.cuda:
            self.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    import torch

    from elusive.attention import attention_received
    from elusive.bios import BiosConfig, generate_bios
    from elusive.models import DTYPES, load_model

    model, tok = load_model(args.model, DTYPES[args.dtype], cache_dir=args.cache_dir)
    text = " ".join(r.text for r in generate_bios(BiosConfig(n=400, seed=0))[0])
    ids = torch.tensor([tok(text)["input_ids"][: args.length]] * args.batch)  # [batch, T]
    assert ids.shape[1] == args.length, "not enough text for this length"
    ids = ids.to(model.device)
    memory = _Memory(model.device)

    def naive(x):
        model.set_attn_implementation("eager")
        out = model.base_model(input_ids=x, output_attentions=True, use_cache=False)
        maps = torch.stack(out.attentions).mean(dim=(0, 2))  # [batch, T, T]
        return maps.sum(dim=1) / (x.shape[1] - torch.arange(x.shape[1], device=x.device))

    def forward(x):
        model.set_attn_implementation("sdpa")
        return model.base_model(input_ids=x, use_cache=False).last_hidden_state

    run = {"forward": forward, "naive": naive, "ours": lambda x: attention_received(model, x)}
    fn = run[args.variant]
    with torch.inference_mode():
        fn(ids[:, :16])  # warm up kernels and lazy initialisation
        base = memory.now()
        memory.reset_peak()
        times = []
        while len(times) < args.repeats or (sum(times) < args.min_seconds and len(times) < 50):
            start = time.perf_counter()
            fn(ids)
            memory.sync()
            times.append(time.perf_counter() - start)
    peak = memory.peak()
    return {
        "variant": args.variant,
        "device": str(model.device),
        "length": args.length,
        "tokens_per_s": args.batch * args.length / statistics.median(times),
        "runs": len(times),
        "peak": peak,
        "extra_peak": peak - base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    gib = 1 << 30
    print(f"model {args.model}, dtype {args.dtype}, batch {args.batch}")
    print(f"{'T':>6} {'variant':>8} {'tokens/s':>10} {'peak mem':>10} {'extra':>10} device")
    results: dict[tuple[int, str], dict] = {}
    for length in args.lengths:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--worker", "--variant", variant]
            cmd += ["--length", str(length), "--model", args.model, "--dtype", args.dtype]
            cmd += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
            cmd += ["--min-seconds", str(args.min_seconds)]
            cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
                print(f"{length:>6} {variant:>8} failed: {tail[0]}")
                continue
            r = results[length, variant] = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{length:>6} {variant:>8} {r['tokens_per_s']:>10.1f} "
                f"{r['peak'] / gib:>8.2f}Gi {r['extra_peak'] / gib:>8.3f}Gi {r['device']}",
                flush=True,
            )
    print("\nratios (ours vs naive): speed = ours/naive tokens/s, memory = naive/ours extra peak")
    for length in args.lengths:
        ours, naive = results.get((length, "ours")), results.get((length, "naive"))
        if ours and naive:
            speed = ours["tokens_per_s"] / naive["tokens_per_s"]
            memory = naive["extra_peak"] / max(ours["extra_peak"], 1)
            print(f"T={length:<5} speed x{speed:.2f}   memory /{memory:.1f}")


if __name__ == "__main__":
    main()
