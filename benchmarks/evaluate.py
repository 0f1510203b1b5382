"""Evaluation cost: QA generation with its prompts' shared examples run once, and the knowledge
probes against the QA generation they accompany.

On the same biography questions, times `elusive.evaluation.evaluate.evaluate_qa` (1) without probes:
greedy QA generation, the paper's measure, and (2) with every probe: choice and logprob after
the QA prompt, greedy cloze answers, and choice and logprob after the cloze prompt. Target:
what the probes add costs no more than the generation itself. And (3) the same QA generation
with every k-shot prompt run whole (`answer_and_score` without prefixes), the cost before the
solved examples that prompts share ran once per group; its answers must be the same.

    flock /tmp/cpu.lock python benchmarks/evaluate.py [--model qwen2.5-coder-0.5b] [--people 20]
"""

from __future__ import annotations

import argparse
import os
import time

# As the `elusive` command does (see elusive/cli.py): OpenMP waits passively. Set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from elusive.corpus.bios import BiosConfig, generate_bios  # noqa: E402
from elusive.evaluation.evaluate import (  # noqa: E402
    EvalConfig,
    answer_and_score,
    evaluate_qa,
    prompt_parts,
    store_for_precision,
)
from elusive.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--people", type=int, default=20, help="5 questions each")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mixed-precision", default="auto", help="no, bf16, fp16 or auto")
    args = parser.parse_args()

    items = generate_bios(BiosConfig(n=args.people, seed=0))[1]
    model, tokenizer = load_model(args.model)
    model.eval()
    # the weights stored as an evaluation stores them (evaluate_checkpoint)
    precision = store_for_precision(model, EvalConfig(mixed_precision=args.mixed_precision))
    seconds, results = {}, {}
    for probes in (False, True):
        config = EvalConfig(
            shots=args.shots,
            batch_size=args.batch_size,
            probes=probes,
            mixed_precision=args.mixed_precision,
        )
        began = time.perf_counter()
        results[probes] = evaluate_qa(model, tokenizer, items, config, progress=False)
        seconds[probes] = time.perf_counter() - began
    generation, extra = seconds[False], seconds[True] - seconds[False]

    parts = prompt_parts(items, config)
    prompts = [examples + asked for examples, asked in parts]
    began = time.perf_counter()
    whole, _ = answer_and_score(model, tokenizer, prompts, config, progress=False)
    unshared = time.perf_counter() - began
    same = sum(
        row["output"] == text for row, text in zip(results[False].predictions, whole, strict=True)
    )

    tokens = tokenizer(prompts)["input_ids"]
    print(
        f"model {args.model}, {len(items)} questions, {args.shots}-shot QA prompts "
        f"({len(set(e for e, _ in parts))} sets of examples, "
        f"{sum(map(len, tokens)) / len(tokens):.0f} tokens on average), "
        f"{config.choices} distractors, batch {args.batch_size}, mixed precision {precision}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    print(f"QA generation, prompts whole : {unshared:7.1f} s")
    print(f"QA generation, examples once : {generation:7.1f} s (x{unshared / generation:.2f})")
    print(f"  the same answers           : {same} of {len(items)}")
    print(f"with every probe             : {seconds[True]:7.1f} s (the probes add {extra:.1f} s)")
    print(f"ratio probes / generation: {extra / generation:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
