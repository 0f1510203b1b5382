"""Work shared among launched processes: the plan, and scoring, evaluation and the report's
attention analysis under a 2-process torchrun (gloo, CPU) giving a single process's bytes.

Run as a script (``torchrun ... tests/test_parallel.py FOLDER``), this file is the launched
program: see `_score_evaluate_analyse`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from elusive.parallel import share


def test_share_is_a_balanced_deterministic_partition():
    costs = [5, 1, 8, 3, 3, 7, 2, 2, 6]
    plan = share(costs, 3)
    assert sorted(i for part in plan for i in part) == list(range(len(costs)))
    assert all(part == sorted(part) for part in plan)
    # by hand, longest first to the least loaded (ties: lower rank): 8 7 6 | 5 to rank 2, 3 to
    # rank 1, 3 to rank 0, 2 to rank 1, 2 to rank 0 (11 = 11), 1 to rank 2
    assert plan == [[2, 4, 7], [3, 5, 6], [0, 1, 8]]
    assert [sum(costs[i] for i in part) for part in plan] == [13, 12, 12]
    assert share(costs, 1) == [list(range(len(costs)))]
    assert share([1, 1], 4) == [[0], [1], [], []]  # more processes than work: some idle
    assert share([], 2) == [[], []]


def _score_evaluate_analyse(folder: Path) -> None:
    """Score folder/people.jsonl with both models, evaluate the small one on folder/qa.jsonl
    (2-shot: each process runs the solved examples its batches share) and run the Figure 2-3
    analysis, into folder/out-WORLD (own cache); each process also writes how many prompts it
    generated for."""
    from elusive import evaluate
    from elusive.analysis import company_query_rows
    from elusive.attention import AttentionConfig, score_corpus
    from elusive.corpus import read_corpus
    from elusive.evaluate import EvalConfig, evaluate_model
    from elusive.io import atomic_write_text
    from elusive.parallel import process_state

    state = process_state()
    out = folder / f"out-{state.num_processes}"
    specs = {"large": str(folder / "large"), "small": str(folder / "small")}
    config = AttentionConfig(cache_dir=out / "cache", batch_size=2, chunk_size=3)
    score_corpus(specs, folder / "people.jsonl", out / "scores", config, progress=False)
    rows = company_query_rows(read_corpus(folder / "people.jsonl"), specs, config)
    if state.is_main_process:
        atomic_write_text(out / "analysis.json", json.dumps(rows) + "\n")

    generated = []
    load = evaluate.load_for_eval

    def counting_load(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        generate = model.generate
        model.generate = lambda **kw: generated.append(len(kw["input_ids"])) or generate(**kw)
        return model, tokenizer

    evaluate.load_for_eval = counting_load
    try:
        eval_config = EvalConfig(batch_size=3, max_new_tokens=4, choices=3, shots=2)
        evaluate_model(
            specs["small"], folder / "qa.jsonl", out / "eval", config=eval_config, progress=False
        )
    finally:
        evaluate.load_for_eval = load
    rank = state.process_index
    atomic_write_text(out / f"generated-{rank}.json", json.dumps(sum(generated)))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The program above run here, one process, then by a 2-process torchrun (gloo)."""
    import torch

    from elusive.bios import BiosConfig, write_bios
    from elusive.models import make_tiny_model

    folder = tmp_path_factory.mktemp("parallel")
    make_tiny_model(folder / "small", arch="llama", seed=0)
    make_tiny_model(folder / "large", arch="llama", hidden_size=96, layers=3, seed=1)
    write_bios(BiosConfig(n=7, seed=4), folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(port)]
    # CPU processes, also on a GPU host (two processes cannot share one GPU under NCCL), on one
    # thread each, as the reference here (a thread count could change the last bits)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [*torchrun, __file__, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ELUSIVE_DEVICE", "cpu")
            _score_evaluate_analyse(folder)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.mark.parametrize(
    "name",
    ["scores/scores.jsonl", "analysis.json", "eval/metrics.json", "eval/predictions.jsonl"],
)
def test_two_processes_write_the_bytes_of_one(launched, name):
    one, two = launched / "out-1" / name, launched / "out-2" / name
    assert one.read_bytes() == two.read_bytes()
    assert len(one.read_bytes()) > 1000  # not trivially equal


def test_every_process_scores_and_generates_its_share(launched):
    one = json.loads((launched / "out-1" / "scores" / "manifest.json").read_text())["processes"]
    two = json.loads((launched / "out-2" / "scores" / "manifest.json").read_text())["processes"]
    assert [p["rank"] for p in one] == [0] and [p["rank"] for p in two] == [0, 1]
    assert one[0]["texts"] == 2 * 7  # every text, with each model
    for key in ("texts", "tokens"):
        assert all(p[key] > 0 for p in two)
        assert sum(p[key] for p in two) == one[0][key]
    alone = json.loads((launched / "out-1" / "generated-0.json").read_text())
    shares = [json.loads((launched / "out-2" / f"generated-{r}.json").read_text()) for r in (0, 1)]
    assert alone == 2 * 7 * 5  # each question and its cloze prompt
    assert all(shares) and sum(shares) == alone


if __name__ == "__main__":
    _score_evaluate_analyse(Path(sys.argv[1]))
