"""Work shared among launched processes: the plan, the distributed context (`Dist`), a rank's
share of the scoring and the answers with two ranks in threads (their collectives meet in
memory), and scoring, evaluation and the report's attention analysis under a 2-process torchrun
(gloo, CPU) giving a single process's bytes.

Run as a script (``torchrun ... tests/test_parallel.py FOLDER``), this file is the launched
program: see `_score_evaluate_analyse`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from elusive.parallel import Dist, share


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


def test_a_process_alone_is_rank_0_of_1_and_needs_no_accelerate():
    program = (
        "import sys\n"
        "from elusive.parallel import Dist\n"
        "alone = Dist.single()\n"
        "values = [3, 'a']\n"
        "assert (alone.rank, alone.world, alone.is_main) == (0, 1, True)\n"
        "assert alone.gather(values) is values\n"
        "alone.barrier()\n"
        "with alone.main_first():\n"
        "    pass\n"
        "assert alone.share([5, 1, 8]) == [0, 1, 2]\n"
        "assert 'accelerate' not in sys.modules and 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_rank_gets_its_share_and_a_world_of_two_needs_collectives():
    costs = [5, 1, 8, 3, 3, 7, 2, 2, 6]
    ranks = [Dist(rank, 3, exchange=list, wait=lambda: None) for rank in range(3)]
    assert [d.share(costs) for d in ranks] == share(costs, 3)
    assert [d.is_main for d in ranks] == [True, False, False]
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 processes"):
        Dist(2, 2, exchange=list, wait=lambda: None)
    with pytest.raises(ValueError, match="2 processes need an exchange and a wait"):
        Dist(1, 2)


def test_the_launched_context_of_a_process_not_launched_is_rank_0_of_1():
    alone = Dist.launched()
    assert (alone.rank, alone.world, alone.is_main) == (0, 1, True)
    assert alone.gather([1, 2]) == [1, 2]


def test_main_first_runs_the_main_process_first():
    order = []
    done = _as_two(lambda dist: _main_first_then(dist, order))
    assert done == [None, None] and order == [0, 1]


def _main_first_then(dist: Dist, order: list[int]) -> None:
    with dist.main_first():
        order.append(dist.rank)


def _as_two(work: Callable[[Dist], Any]) -> list[Any]:
    """`work(dist)` in two threads, as ranks 0 and 1 of a two-process `Dist` whose collectives
    meet in memory (no process group); both results, in rank order."""
    barrier = threading.Barrier(2, timeout=300)
    slots: list[list[Any]] = [[], []]

    def exchange(rank: int) -> Callable[[list[Any]], list[Any]]:
        def gather(values: list[Any]) -> list[Any]:
            slots[rank] = list(values)
            barrier.wait()
            everyone = [*slots[0], *slots[1]]
            barrier.wait()  # both have read before either gathers again
            return everyone

        return gather

    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            results[rank] = work(Dist(rank, 2, exchange(rank), barrier.wait))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # the other rank stops waiting

    threads = [threading.Thread(target=target, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def pair(tmp_path_factory, one_thread):
    """A large and a small tiny llama (one tokenizer), run on one thread: the reference and the
    two ranks compute the same numbers."""
    from elusive.tiny import make_tiny_model

    folder = tmp_path_factory.mktemp("pair")
    return {
        "large": str(make_tiny_model(folder / "large", arch="llama", hidden_size=96, seed=1)),
        "small": str(make_tiny_model(folder / "small", arch="llama", seed=0)),
    }


def test_two_ranks_each_score_their_share_and_both_get_every_score(pair, tmp_path):
    """`score_records` under a two-process `Dist`: each rank scores its share of the batches
    (their texts add up to the one-process count, none twice), the shares meet in the cache,
    and both ranks end with the rows one process gives."""
    from elusive.corpus.bios import BiosConfig, generate_bios
    from elusive.scoring.attention import AttentionConfig, score_records

    records = generate_bios(BiosConfig(n=7, seed=4))[0]
    options = {"batch_size": 2, "chunk_size": 3}
    alone, _, [counted] = score_records(
        records, pair, AttentionConfig(cache_dir=tmp_path / "one", **options), progress=False
    )
    config = AttentionConfig(cache_dir=tmp_path / "two", **options)
    both = _as_two(lambda dist: score_records(records, pair, config, progress=False, dist=dist))
    assert counted == {"rank": 0, "texts": 2 * 7, "tokens": counted["tokens"]}
    for rows, _, processes in both:
        assert rows == alone
        assert [p["rank"] for p in processes] == [0, 1]
        assert all(p["texts"] > 0 for p in processes)
        for key in ("texts", "tokens"):
            assert sum(p[key] for p in processes) == counted[key]
    assert both[0][2] == both[1][2]  # the same record of who scored what


def test_two_ranks_each_answer_their_share_and_both_get_every_answer(pair, monkeypatch):
    """`answer_and_score` under a two-process `Dist`: each rank generates for its share of the
    batches only (together every prompt once) and both get every answer and candidate score,
    the ones one process gives."""
    from elusive.evaluation import evaluate
    from elusive.evaluation.evaluate import EvalConfig, answer_and_score
    from elusive.models import load_model

    prompts = [f"Question {i}: where did person {'x' * i} work? Answer:" for i in range(9)]
    candidates = [["Acme", "Globex Corporation", f"Initech {i}"] for i in range(9)]
    config = EvalConfig(batch_size=2, max_new_tokens=4, mixed_precision="no")
    rows: dict[int, int] = {}  # id(model) -> rows it decoded
    greedy = evaluate.greedy_tokens

    def counting(model, tokenizer, logits, cache, mask, max_new_tokens):
        rows[id(model)] = rows.get(id(model), 0) + len(mask)
        return greedy(model, tokenizer, logits, cache, mask, max_new_tokens)

    monkeypatch.setattr(evaluate, "greedy_tokens", counting)

    def answer(dist: Dist | None) -> tuple[Any, int]:
        model, tokenizer = load_model(pair["small"])  # each rank its own, as processes have
        result = answer_and_score(model, tokenizer, prompts, config, False, candidates, dist)
        return result, rows.get(id(model), 0)

    (texts, scores), generated = answer(None)
    assert generated == len(prompts) and all(texts)
    both = _as_two(answer)
    assert all(0 < rows < len(prompts) for _, rows in both)
    assert sum(rows for _, rows in both) == len(prompts)
    for (got_texts, got_scores), _ in both:
        assert got_texts == texts
        assert got_scores == scores


def _score_evaluate_analyse(folder: Path) -> None:
    """Score folder/people.jsonl with both models, evaluate the small one on folder/qa.jsonl
    (2-shot: each process runs the solved examples its batches share) and run the Figure 2-3
    analysis, into folder/out-WORLD (own cache); each process also writes how many prompts it
    generated for."""
    from elusive.corpus.records import read_corpus
    from elusive.evaluation import evaluate
    from elusive.evaluation.evaluate import EvalConfig, evaluate_model
    from elusive.experiment.analysis import company_query_rows
    from elusive.io import atomic_write_text
    from elusive.scoring.attention import AttentionConfig, score_corpus

    dist = Dist.launched()
    out = folder / f"out-{dist.world}"
    specs = {"large": str(folder / "large"), "small": str(folder / "small")}
    config = AttentionConfig(cache_dir=out / "cache", batch_size=2, chunk_size=3)
    score_corpus(specs, folder / "people.jsonl", out / "scores", config, progress=False, dist=dist)
    rows = company_query_rows(read_corpus(folder / "people.jsonl"), specs, config, dist=dist)
    if dist.is_main:
        atomic_write_text(out / "analysis.json", json.dumps(rows) + "\n")

    generated = []
    greedy = evaluate.greedy_tokens

    def counting(model, tokenizer, logits, cache, mask, max_new_tokens):
        generated.append(len(mask))  # the rows of a batch this process decodes
        return greedy(model, tokenizer, logits, cache, mask, max_new_tokens)

    evaluate.greedy_tokens = counting
    try:
        eval_config = EvalConfig(batch_size=3, max_new_tokens=4, choices=3, shots=2)
        evaluate_model(
            specs["small"],
            folder / "qa.jsonl",
            out / "eval",
            config=eval_config,
            progress=False,
            dist=dist,
        )
    finally:
        evaluate.greedy_tokens = greedy
    atomic_write_text(out / f"generated-{dist.rank}.json", json.dumps(sum(generated)))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The program above run here, one process, then by a 2-process torchrun (gloo)."""
    import torch

    from elusive.corpus.bios import BiosConfig, write_bios
    from elusive.tiny import make_tiny_model

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
