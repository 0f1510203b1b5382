"""Speed and memory of the attention scorer against the naive reference, on a real model.

    flock /work/heavy.lock python benchmarks/attention.py [--model qwen2.5-coder-0.5b]
    python benchmarks/attention.py --config benchmarks/configs/qwen2.5-coder-1.5b.json \
        --dtype bfloat16 --lengths 512 2048 8192    # a GPU: random weights, no pack needed

For each text length T, each variant runs in a fresh subprocess, so that its peak memory is
its own (peak RSS on the CPU, peak allocated GPU memory on a GPU): "forward" (a plain SDPA
forward pass of the decoder, no scores: the floor), "naive" (eager attention with
output_attentions=True: every layer's T x T maps stacked, then averaged, the slow reference),
"ours" (`elusive.scoring.attention.attention_received`: the fused kernel where it runs, i.e. on a
GPU) and "blocked" (the same with the fused kernel turned off: the scorer on the CPU, the GPU
scorer before the kernel). Forward and naive run the decoder stack; ours runs the whole model
with the LM head on the last position only (one row of logits). Printed per variant:
tokens/s (median of the repeats), peak memory of the process, and the extra peak over the
loaded model (what scoring itself needs); then the ratios against naive and forward.
Targets: ours at least as fast as naive at every length, within 1.3x of forward at T >= 512
on a GPU, and at T=512 at most half of naive's extra memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("forward", "naive", "ours", "blocked")


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

    from elusive.models import DTYPES
    from elusive.scoring import attention

    if args.config:
        model = _random_model(args.config, DTYPES[args.dtype])
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(model.config.vocab_size, (args.batch, args.length), generator=generator)
    else:
        model, ids = _pack_model(args)
    ids = ids.to(model.device)  # [batch, T]
    memory = _Memory(model.device)

    def naive(x):
        model.set_attn_implementation("eager")
        out = model.base_model(input_ids=x, output_attentions=True, use_cache=False)
        maps = torch.stack(out.attentions).mean(dim=(0, 2))  # [batch, T, T]
        return maps.sum(dim=1) / (x.shape[1] - torch.arange(x.shape[1], device=x.device))

    def forward(x):
        model.set_attn_implementation("sdpa")
        return model.base_model(input_ids=x, use_cache=False).last_hidden_state

    if args.variant == "blocked":
        attention.KERNEL_DEVICES = ()
    ours = lambda x: attention.attention_received(model, x)  # noqa: E731
    fn = {"forward": forward, "naive": naive, "ours": ours, "blocked": ours}[args.variant]
    with torch.inference_mode():
        # warm up lazy initialisation; on a GPU at full length, so that the kernel's tuning for
        # this length is not timed (the CPU's RSS would keep the warm-up's peak: a short one)
        fn(ids if memory.cuda else ids[:, :16])
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


def _random_model(config_path: str, dtype):
    """A model of the config's shape with random weights (seed 0), built on the default device:
    speed and memory do not depend on the weights, and no pack needs to travel."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from elusive.models import default_device

    torch.manual_seed(0)
    with torch.device(default_device()):
        config = AutoConfig.from_pretrained(config_path)
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def _pack_model(args: argparse.Namespace):
    """The model named by --model and token ids of biographies, ``[batch, T]``."""
    import torch

    from elusive.corpus.bios import BiosConfig, generate_bios
    from elusive.models import DTYPES, load_model

    model, tok = load_model(args.model, DTYPES[args.dtype], cache_dir=args.cache_dir)
    text = " ".join(r.text for r in generate_bios(BiosConfig(n=400, seed=0))[0])
    ids = torch.tensor([tok(text)["input_ids"][: args.length]] * args.batch)
    assert ids.shape[1] == args.length, "not enough text for this length"
    return model, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--config", help="a config.json: random weights of its shape instead")
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
    model = f"random weights of {args.config}" if args.config else args.model
    print(f"model {model}, dtype {args.dtype}, batch {args.batch}")
    print(f"{'T':>6} {'variant':>8} {'tokens/s':>10} {'peak mem':>10} {'extra':>10} device")
    results: dict[tuple[int, str], dict] = {}
    for length in args.lengths:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--worker", "--variant", variant]
            cmd += ["--length", str(length), "--model", args.model, "--dtype", args.dtype]
            cmd += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
            cmd += ["--min-seconds", str(args.min_seconds)]
            cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
            cmd += ["--config", args.config] if args.config else []
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
    print(
        "\nratios: speed = tokens/s over naive's, memory = naive's extra peak over ours, "
        "forward = forward's tokens/s over ours (the slowdown against a plain forward)"
    )
    for length in args.lengths:
        naive, forward = results.get((length, "naive")), results.get((length, "forward"))
        for variant in ("ours", "blocked"):
            r = results.get((length, variant))
            if not r:
                continue
            line = f"T={length:<5} {variant:>8}"
            if naive:
                line += f"  speed x{r['tokens_per_s'] / naive['tokens_per_s']:.2f}"
                line += f"  memory /{naive['extra_peak'] / max(r['extra_peak'], 1):.1f}"
            if forward:
                line += f"  forward x{forward['tokens_per_s'] / r['tokens_per_s']:.2f}"
            print(line)


if __name__ == "__main__":
    main()
