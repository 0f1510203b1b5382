"""Work shared among the processes of `accelerate launch` / torchrun: who runs what, and the
exchange of the results.

A stage that shares its work cuts it into the units one process would run (the batches of the
one-process order) and hands each process a share of them (`share`), so every unit is computed
exactly as one process would compute it and the outputs do not depend on the number of
processes. Every process plans alone from the same inputs, so the plan needs no messages; the
results meet on disk (the attention score cache) or through `Dist.gather`. A single process,
launched or not, is rank 0 of 1 and runs everything.

Who this process is comes in one `Dist`, made once where a program starts (a CLI command,
`elusive.experiment.pipeline.run_experiment`, the Python API's top-level functions) and passed down;
the functions that compute take it as an argument and never ask accelerate themselves.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Dist:
    """This process's place among the launched ones and the collectives they share: made once
    at an entry point (`Dist.launched`, or `Dist.single` for a process alone) and passed down.
    Every collective (`gather`, `barrier`) must be called by every process alike."""

    rank: int = 0
    """This process's index among the launched ones, 0 to ``world - 1``; 0 is the main one."""
    world: int = 1
    """How many processes were launched; 1 for a process alone."""
    exchange: Callable[[list[Any]], list[Any]] | None = None
    """The collective behind `gather`: every process's list, concatenated in rank order, on
    every process. None (a process alone): its own list is all there is."""
    wait: Callable[[], None] | None = None
    """The collective behind `barrier`: returns once every process has called it. None (a
    process alone): there is no one to wait for."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not one of the {self.world} processes")
        if self.world > 1 and (self.exchange is None or self.wait is None):
            raise ValueError(f"{self.world} processes need an exchange and a wait")

    @classmethod
    def single(cls) -> Dist:
        """A process alone: rank 0 of 1; `gather` returns its input, `barrier` does nothing."""
        return cls()

    @classmethod
    def launched(cls) -> Dist:
        """This process under `accelerate launch` / torchrun (accelerate's process-wide state);
        rank 0 of 1 when not launched. Made once, at an entry point."""
        from accelerate.utils import gather_object

        state = process_state()
        return cls(state.process_index, state.num_processes, gather_object, state.wait_for_everyone)

    @property
    def is_main(self) -> bool:
        """Whether this is the main process: the one that writes shared files and prints."""
        return self.rank == 0

    def share(self, costs: Sequence[float]) -> list[int]:
        """This process's share of the units of `costs` (`elusive.parallel.share`)."""
        return share(costs, self.world)[self.rank]

    def gather(self, values: list[Any]) -> list[Any]:
        """Every process's `values` (picklable), concatenated in rank order, on every process:
        a collective. A process alone gets `values` back."""
        return values if self.exchange is None else self.exchange(values)

    def barrier(self) -> None:
        """Return once every process has reached this point: a collective."""
        if self.wait is not None:
            self.wait()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block in the main process first, then in the others (which wait for it):
        for work whose result the others read, such as a run folder's manifest."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()
