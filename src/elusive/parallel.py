"""Work shared among the processes of `accelerate launch` / torchrun: who runs what, and the
exchange of the results.

A stage that shares its work cuts it into the units one process would run (the batches of the
one-process order) and hands each process a share of them (`share`), so every unit is computed
exactly as one process would compute it and the outputs do not depend on the number of
processes. Every process plans alone from the same inputs, so the plan needs no messages; the
results meet on disk (the attention score cache) or through `gather`. A single process, launched
or not, is rank 0 of 1 and runs everything.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import PartialState


def process_state() -> PartialState:
    """This process's place among the launched ones (accelerate's process-wide state: rank,
    world size, barriers); torchrun on CPUs talks gloo."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def share(costs: Sequence[float], world: int) -> list[list[int]]:
    """The indices of `costs` each of `world` processes runs, each list in ascending order.

    The costliest unit first (ties: the lower index) goes to the process with the least cost so
    far (ties: the lower rank): the longest-processing-time rule, within 4/3 of the best split.
    Depends on nothing but its arguments, so every process computes the same plan.
    """
    loads = [(0.0, rank) for rank in range(world)]  # a heap of (cost so far, rank)
    out: list[list[int]] = [[] for _ in range(world)]
    for index in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        load, rank = heapq.heappop(loads)
        out[rank].append(index)
        heapq.heappush(loads, (load + costs[index], rank))
    return [sorted(indices) for indices in out]


def my_share(costs: Sequence[float]) -> list[int]:
    """This process's share of `costs` (see `share`)."""
    state = process_state()
    return share(costs, state.num_processes)[state.process_index]


def gather(values: list[Any]) -> list[Any]:
    """Every process's `values` (picklable), concatenated in rank order, on every process: a
    collective, so every process must call it."""
    from accelerate.utils import gather_object

    return gather_object(values)
