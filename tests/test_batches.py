"""Packed blocks and length-grouped batches, against hand-built references."""

from __future__ import annotations

import random

import pytest
import torch

from elusive.training.batches import (
    MEGA_BATCHES,
    LengthGroupedBatches,
    PackedBlocks,
    epoch_generator,
    pack,
    padded_share,
)


def test_pack_joins_in_order_and_keeps_the_short_last_block():
    seqs = [[1, 2, 3, 9], [4, 9], [5, 6, 7, 8, 9]]  # 9 is EOS
    assert pack(seqs, [2, 0, 1], 4) == [[5, 6, 7, 8], [9, 1, 2, 3], [9, 4, 9]]
    assert pack(seqs, [0, 1, 2], 11) == [[1, 2, 3, 9, 4, 9, 5, 6, 7, 8, 9]]


def test_packed_blocks_follow_each_epochs_shuffle_and_lose_no_token():
    rng = random.Random(0)
    seqs = [[rng.randrange(1, 50) for _ in range(rng.randrange(1, 30))] + [0] for _ in range(40)]
    blocks = PackedBlocks(seqs, block=16, seed=7)
    tokens = sum(len(s) for s in seqs)
    seen = []
    for epoch in (1, 2):
        blocks.set_epoch(epoch)
        got = [blocks[k] for k in range(len(blocks))]
        assert len(got) == -(-tokens // 16)
        assert all(len(b) == 16 for b in got[:-1]) and 1 <= len(got[-1]) <= 16
        # the reference: the epoch's permutation, each text's tokens appended one by one
        order = torch.randperm(
            len(seqs), generator=torch.Generator().manual_seed(7_000_021 + epoch)
        )
        stream = []
        for index in order.tolist():
            for token in seqs[index]:
                stream.append(token)
        assert [t for b in got for t in b] == stream
        seen.append(got)
    assert seen[0] != seen[1]
    again = PackedBlocks(seqs, block=16, seed=7)
    again.set_epoch(2)
    assert [again[k] for k in range(len(again))] == seen[1]


@pytest.mark.parametrize("n, batch_size", [(1000, 8), (37, 4), (5, 8)])
def test_length_groups_hold_every_text_once_with_less_padding(n, batch_size):
    rng = random.Random(n)
    lengths = [rng.choice([rng.randrange(5, 20), rng.randrange(100, 400)]) for _ in range(n)]
    grouped = LengthGroupedBatches(lengths, batch_size, seed=3)
    plain_epochs, grouped_epochs = [], []
    for epoch in (1, 2):
        grouped.set_epoch(epoch)
        batches = list(grouped)
        assert len(batches) == len(grouped) == -(-n // batch_size)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(len(b) == batch_size for b in batches[:-1])  # only the last can be short
        grouped_epochs.append(batches)
        order = torch.randperm(n, generator=epoch_generator(3, epoch)).tolist()
        plain_epochs.append([order[k : k + batch_size] for k in range(0, n, batch_size)])
    assert grouped_epochs[0] != grouped_epochs[1] or n <= batch_size
    again = LengthGroupedBatches(lengths, batch_size, seed=3)
    again.set_epoch(2)
    assert list(again) == grouped_epochs[1]

    def share(epochs):
        rows = [[[0] * lengths[i] for i in batch] for batches in epochs for batch in batches]
        return padded_share(rows)

    if n > batch_size:  # one batch has nothing to group
        assert share(grouped_epochs) < share(plain_epochs) / 2


def test_length_groups_sort_within_mega_batches_only():
    """Within one mega-batch a batch holds the next-longest texts; the mega-batches are the
    epoch's shuffled order cut into MEGA_BATCHES batches each."""
    n, batch_size = 2 * MEGA_BATCHES * 2 + 3, 2
    lengths = list(range(n))
    grouped = LengthGroupedBatches(lengths, batch_size, seed=1)
    grouped.set_epoch(4)
    order = torch.randperm(n, generator=epoch_generator(1, 4)).tolist()
    mega = MEGA_BATCHES * batch_size
    want = []
    for start in range(0, n, mega):
        group = sorted(order[start : start + mega], reverse=True)  # length == index here
        want += [tuple(group[k : k + batch_size]) for k in range(0, len(group), batch_size)]
    assert sorted(map(tuple, grouped)) == sorted(want)


def test_padded_share_counts_padding_by_hand():
    assert padded_share([[[1, 2, 3], [4]], [[5, 6]]]) == pytest.approx(2 / 8)
    assert padded_share([]) == 0.0
