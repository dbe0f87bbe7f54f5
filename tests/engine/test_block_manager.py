"""KV blocks: exact accounting, and the prefix cache (full blocks shared, partial ones copied, LRU)."""
from __future__ import annotations

import pytest

from engine.block_manager import BlockManager, NoFreeBlocks
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def _seq(i: int = 0, tokens: list[int] | None = None) -> Sequence:
    return Sequence(i, f"r{i}", 0, list(range(10)) if tokens is None else tokens, SamplingParams(), 0)


def _computed(bm: BlockManager, seq: Sequence, num_tokens: int | None = None) -> Sequence:
    """Allocates for all the sequence's tokens and marks them computed, as a step would."""
    n = seq.num_tokens if num_tokens is None else num_tokens
    bm.allocate(seq, n)
    seq.num_computed_tokens = n
    bm.cache_full_blocks(seq)
    return seq


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


def test_full_blocks_are_shared_and_the_partial_one_is_copied():
    bm = BlockManager(10, 4)
    a = _computed(bm, _seq(0, list(range(10))))
    bm.cache_prompt_tail(a)  # tokens 8, 9 in the third block
    b = _seq(1, list(range(11)))
    hit = bm.match(b.token_slice(0, 10), 10)
    assert hit.blocks == tuple(a.block_table[:2]) and hit.partial_src == a.block_table[2] and hit.partial_len == 2
    copy = bm.take(b, hit)
    assert copy == (a.block_table[2], b.block_table[2]) and b.block_table[:2] == a.block_table[:2]
    assert [bm.refcounts[x] for x in a.block_table] == [2, 2, 2]  # the copy's source is held until it ran
    bm.copies_done()
    assert [bm.refcounts[x] for x in a.block_table] == [2, 2, 1]
    for s in (a, b):
        bm.free(s)
    assert bm.num_free == 10 and all(r == 0 for r in bm.refcounts)


def test_a_hit_never_covers_more_than_the_limit():
    bm = BlockManager(10, 4)
    a = _computed(bm, _seq(0, list(range(8))))
    hit = bm.match(list(range(8)), 7)  # the last known token must be computed again for its logits
    assert len(hit.blocks) == 1 and hit.partial_src == a.block_table[1] and hit.partial_len == 3
    assert bm.match(list(range(8)), 8).blocks == tuple(a.block_table)


def test_different_tokens_or_a_different_start_do_not_match():
    bm = BlockManager(10, 4)
    _computed(bm, _seq(0, [1, 2, 3, 4, 5, 6, 7, 8]))
    assert bm.match([9, 2, 3, 4, 5, 6, 7, 8], 8).blocks == ()  # the same second block after another first
    assert bm.match([1, 2, 3, 4, 5, 6, 7, 9], 8).partial_len == 3


def test_freed_blocks_stay_cached_until_needed_tail_first():
    bm = BlockManager(4, 4)
    a = _computed(bm, _seq(0, list(range(16))))
    bm.free(a)
    assert bm.num_free == 4 and len(bm.match(list(range(16)), 16).blocks) == 4
    other = _seq(1, [99] * 4)
    bm.allocate(other, 4)  # takes the least recently freed block: a's last
    assert len(bm.match(list(range(16)), 16).blocks) == 3
    bm.allocate(other, 8)
    assert len(bm.match(list(range(16)), 16).blocks) == 2


def test_a_reused_block_is_never_matched_by_its_old_chain():
    bm = BlockManager(3, 2)
    a = _computed(bm, _seq(0, [1, 2]))
    b = _computed(bm, _seq(1, [1, 2, 3, 4]))  # its own copy of [1, 2]; [3, 4] is cached after a's block
    assert bm.match([1, 2, 3, 4], 4).blocks == (a.block_table[0], b.block_table[1])
    first = a.block_table[0]
    bm.free(a)
    x = _computed(bm, _seq(2, [5, 6]))
    assert list(x.block_table) == [first]  # a's block, reused for other tokens
    assert bm.match([5, 6, 3, 4], 4).blocks == (x.block_table[0],)  # [3, 4] followed [1, 2], not [5, 6]


def test_two_sequences_that_computed_the_same_prefix_continue_one_chain():
    bm = BlockManager(10, 2)
    a = _computed(bm, _seq(0, [1, 2, 3, 4]))
    b = _computed(bm, _seq(1, [1, 2, 3, 4, 5, 6]))  # computed its own copy of [1, 2] [3, 4]
    assert bm.match([1, 2, 3, 4, 5, 6], 6).blocks == (a.block_table[0], a.block_table[1], b.block_table[2])


def test_caching_off_matches_nothing():
    bm = BlockManager(10, 4, enable_caching=False)
    a = _computed(bm, _seq(0, list(range(8))))
    bm.cache_prompt_tail(a)
    assert bm.match(list(range(8)), 8).blocks == () and bm.match(list(range(8)), 8).partial_src is None


def test_out_of_blocks():
    bm = BlockManager(2, 4)
    s = _seq()
    with pytest.raises(NoFreeBlocks):
        bm.allocate(s, 9)
    assert bm.num_free == 2 and not s.block_table
    bm.allocate(s, 8)
    s.num_computed_tokens = 7
    bm.cache_prompt_tail(s)
    b = _seq(1, list(range(10)))
    hit = bm.match(b.token_slice(0, 9), 9)
    with pytest.raises(NoFreeBlocks):  # the partial block needs a copy, and no block is free
        bm.take(b, hit)


def test_clearing_the_cache_forgets_only_what_nobody_holds():
    bm = BlockManager(8, 2)
    held = _computed(bm, _seq(0, [1, 2, 3, 4]))
    gone = _computed(bm, _seq(1, [5, 6, 7, 8]))
    bm.free(gone)
    bm.clear_cache()
    assert bm.match([5, 6, 7, 8], 4).blocks == () and len(bm.match([1, 2, 3, 4], 4).blocks) == 2
    bm.free(held)
    assert bm.num_free == 8


def test_a_freed_block_that_holds_nothing_findable_is_handed_out_first():
    """A rejected draft's block goes back to the front of the free list: the next allocation takes
    it, not a cached block (which stays findable) nor a block never used (whose memory is cold)."""
    bm = BlockManager(8, 4)
    cached = _computed(bm, _seq(0, list(range(8))))
    bm.free(cached)  # two cached blocks, free
    s = _seq(1, [50, 51, 52])
    bm.allocate(s, 3)
    first = s.block_table[0]
    bm.allocate(s, 3 + 6)  # a draft of 6 tokens takes two more blocks
    draft_blocks = s.block_table[1:]
    bm.truncate(s, 4)  # all rejected
    t = _seq(2, [60])
    bm.allocate(t, 1)
    assert t.block_table[0] in draft_blocks and first not in t.block_table
    assert len(bm.match(list(range(8)), 8).blocks) == 2  # the cached prefix is still whole
    with_caching_off = BlockManager(4, 4, enable_caching=False)
    u = _seq(3, [1])
    with_caching_off.allocate(u, 1)
    used = u.block_table[0]
    with_caching_off.free(u)
    with_caching_off.allocate(u, 1)
    assert list(u.block_table) == [used]
