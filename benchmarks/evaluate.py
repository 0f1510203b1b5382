"""Evaluation cost: the knowledge probes against the QA generation they accompany.

On the same biography questions, times `elusive.evaluate.evaluate_qa` (1) without probes:
greedy QA generation, the paper's measure, and (2) with every probe: choice and logprob after
the QA prompt, greedy cloze answers, and choice and logprob after the cloze prompt. Target:
what the probes add costs no more than the generation itself.

    flock /tmp/cpu.lock python benchmarks/evaluate.py [--model qwen2.5-coder-0.5b] [--people 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from elusive.bios import BiosConfig, generate_bios
from elusive.evaluate import EvalConfig, evaluate_qa
from elusive.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--people", type=int, default=20, help="5 questions each")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    items = generate_bios(BiosConfig(n=args.people, seed=0))[1]
    model, tokenizer = load_model(args.model)
    model.eval()
    seconds = {}
    for probes in (False, True):
        config = EvalConfig(shots=args.shots, batch_size=args.batch_size, probes=probes)
        began = time.perf_counter()
        evaluate_qa(model, tokenizer, items, config, progress=False)
        seconds[probes] = time.perf_counter() - began
    generation, extra = seconds[False], seconds[True] - seconds[False]

    print(
        f"model {args.model}, {len(items)} questions, {args.shots}-shot QA prompts, "
        f"{config.choices} distractors, batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"QA generation alone : {generation:7.1f} s")
    print(f"with every probe    : {seconds[True]:7.1f} s (the probes add {extra:.1f} s)")
    print(f"ratio probes / generation: {extra / generation:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
