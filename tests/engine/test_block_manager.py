from __future__ import annotations

import pytest

from engine.block_manager import BlockManager, NoFreeBlocks
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def _seq(i: int = 0, n: int = 10) -> Sequence:
    return Sequence(i, "r", 0, list(range(n)), SamplingParams(), 0)


def test_allocate_truncate_free_account_exactly():
    bm = BlockManager(10, 4)
    s = _seq()
    bm.allocate(s, 10)
    assert len(s.block_table) == 3 and bm.num_free == 7
    bm.allocate(s, 17)  # a draft of 7 more tokens
    assert len(s.block_table) == 5
    bm.truncate(s, 11)  # rollback: 11 tokens kept
    assert len(s.block_table) == 3 and bm.num_free == 7
    bm.free(s)
    assert bm.num_free == 10 and all(r == 0 for r in bm.refcounts)


def test_fork_shares_full_blocks_and_copies_the_tail():
    bm = BlockManager(10, 4)
    parent, child = _seq(0), _seq(1)
    bm.allocate(parent, 10)
    copy = bm.fork(parent, child, 10)
    assert child.block_table[:2] == parent.block_table[:2]
    assert copy == (parent.block_table[2], child.block_table[2])
    assert [bm.refcounts[b] for b in parent.block_table] == [2, 2, 1]
    bm.free(parent)
    assert [bm.refcounts[b] for b in child.block_table] == [1, 1, 1]
    bm.free(child)
    assert bm.num_free == 10


def test_fork_at_a_block_boundary_needs_no_copy():
    bm = BlockManager(4, 4)
    parent, child = _seq(0, 8), _seq(1, 8)
    bm.allocate(parent, 8)
    assert bm.fork(parent, child, 8) is None and bm.num_free == 2


def test_out_of_blocks():
    bm = BlockManager(2, 4)
    s = _seq()
    with pytest.raises(NoFreeBlocks):
        bm.allocate(s, 9)
    assert bm.num_free == 2 and not s.block_table
    bm.allocate(s, 8)
    with pytest.raises(NoFreeBlocks):
        bm.fork(s, _seq(1), 7)
