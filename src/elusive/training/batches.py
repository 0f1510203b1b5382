"""How one training epoch's texts become micro-batches, besides one shuffled text a row.

Both ways are seeded by (seed, epoch), as `elusive.training.train.EpochShuffle` is: the same seed
gives the same batches, and a resumed run the batches of an uninterrupted one.

- `PackedBlocks` (``train.packing``), the convention of Hugging Face ``run_clm`` and TRL: the
  epoch's token sequences (each one text's tokens ending in EOS) are concatenated in the
  epoch's shuffled order and cut into blocks of exactly `block` tokens, so a block holds the
  end of one text, the EOS that separates it from the next and the start of that one. Every
  block is full but the epoch's last, which keeps the remainder (``run_clm`` drops it: here
  every token is trained on once an epoch, whatever the order). Attention is not reset at EOS,
  as in ``run_clm``: a text may attend to the end of the text before it in its block.
- `LengthGroupedBatches` (``train.group_by_length``), the idea of the Hugging Face Trainer's
  ``group_by_length``: shuffle, sort by length within mega-batches of `MEGA_BATCHES` batches,
  cut them into batches, shuffle the batches (a short one stays last). A batch then holds texts
  of similar length, so little of it is padding, and every text is in one batch an epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

MEGA_BATCHES = 50
"""Batches per mega-batch of `LengthGroupedBatches` (the Trainer's ``megabatch_mult``): larger
groups pad less, smaller ones keep more of the shuffle."""


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The torch generator of one epoch's random choices
    (`elusive.training.train.EpochShuffle`'s)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def pack(seqs: Sequence[Sequence[int]], order: Sequence[int], block: int) -> list[list[int]]:
    """The token sequences `seqs` in `order`, concatenated and cut into blocks of `block` tokens;
    the last block holds the remainder (1 to `block` tokens)."""
    stream = [token for index in order for token in seqs[index]]
    return [stream[start : start + block] for start in range(0, len(stream), block)]


class PackedBlocks(Dataset):
    """The blocks of one epoch's packed token stream (see `pack`); call `set_epoch` before
    reading an epoch. Their number, ceil(tokens / block), is the same every epoch."""

    def __init__(self, seqs: Sequence[Sequence[int]], block: int, seed: int):
        self.seqs, self.block, self.seed = seqs, block, seed
        self.tokens = sum(len(s) for s in seqs)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        order = torch.randperm(len(self.seqs), generator=epoch_generator(self.seed, epoch))
        self.blocks = pack(self.seqs, order.tolist(), self.block)

    def __getitem__(self, index: int) -> list[int]:
        return self.blocks[index]

    def __len__(self) -> int:
        return -(-self.tokens // self.block)


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of indices into texts of `lengths`, grouped by length (see the module doc); a
    batch sampler. Call `set_epoch` before iterating. Its batches are as many as a plain
    epoch's, ceil(n / batch_size), and only the last can be short (the last mega-batch's)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        size, mega = self.batch_size, MEGA_BATCHES * self.batch_size
        batches = []
        for start in range(0, len(order), mega):
            # longest first; the sort is stable, so ties keep their shuffled order
            group = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [group[k : k + size] for k in range(0, len(group), size)]
        # the short batch, if any, stays last, where a DataLoader has it: accelerate's sharding
        # over processes counts on that
        full = len(order) // size
        shuffled = torch.randperm(full, generator=gen).tolist() + list(range(full, len(batches)))
        return iter([batches[k] for k in shuffled])

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def padded_share(batches: Iterable[Sequence[Sequence[int]]]) -> float:
    """The share of padding in `batches` of token sequences, each padded to its longest."""
    real = padded = 0
    for batch in batches:
        width = max(len(s) for s in batch)
        real += sum(len(s) for s in batch)
        padded += width * len(batch)
    return 1 - real / padded if padded else 0.0
