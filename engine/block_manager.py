"""KV-cache blocks: reference counts and automatic prefix caching.

A block holds `block_size` positions. Once every position of a block holds a computed token it is
full and never written again, so several sequences may share it. A full block is cached under a
key made of its tokens and the identity of the block before it: equal keys mean equal prefixes,
so a sequence whose tokens start like a cached chain takes those blocks instead of computing them.
Where its tokens leave a chain inside a block, the longest cached start of that block is copied
into a block of its own (copy-on-write, done once, before the next forward writes to it).

Blocks nobody holds (refcount 0) stay cached until they are needed again, least recently freed
first; a sequence's blocks are freed tail first, so the start of a prefix, which more sequences
share, is evicted last. A freed block that holds nothing findable (a rejected draft's) is handed
out again first. `num_free` counts them all: cached blocks are free blocks.

Block identity across reuse: every time a block is handed out its generation goes up, so a key
that names a block that was evicted and reused since can never match again.
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence as Seq

from engine.sequence import Sequence

ROOT = (-1, 0)  # the parent of a sequence's first block
Parent = tuple[int, int]  # (block id, generation)
Key = tuple[Parent, tuple[int, ...]]


class NoFreeBlocks(RuntimeError):
    pass


@dataclass(frozen=True)
class PrefixHit:
    """What the cache holds of a sequence's start: full blocks to share, then optionally a block
    whose first `partial_len` positions match the tokens after them (to copy)."""

    blocks: tuple[int, ...]
    chain: tuple[Parent, ...]  # each shared block's identity (block, generation)
    partial_src: int | None = None
    partial_len: int = 0

    def num_tokens(self, block_size: int) -> int:
        return len(self.blocks) * block_size + self.partial_len


NO_HIT = PrefixHit((), ())


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.refcounts = [0] * num_blocks
        self._generation = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cache: dict[Key, int] = {}  # full blocks
        self._key: list[Key | None] = [None] * num_blocks
        self._children: dict[Parent, dict[int, tuple[int, ...]]] = {}  # parent -> {block: tokens it holds}
        self._parent_of: list[Parent | None] = [None] * num_blocks  # where a block is listed in _children
        self._copy_sources: list[int] = []  # held until the step's copies have run
        self.hit_tokens = 0  # tokens taken from the cache instead of computed

    # ------------------------------------------------------------------ counting
    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def extra_blocks(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks to add so that `seq` can hold `num_tokens` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(seq.block_table))

    def can_hold(self, seq: Sequence, num_tokens: int) -> bool:
        return self.extra_blocks(seq, num_tokens) <= len(self._free)

    # ------------------------------------------------------------------ a sequence's blocks
    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        need = self.extra_blocks(seq, num_tokens)
        if need > len(self._free):
            raise NoFreeBlocks(f"need {need} blocks, {len(self._free)} free")
        for _ in range(need):
            seq.block_table.append(self._take())

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Frees the blocks past what `num_tokens` tokens need (rollback of rejected drafts)."""
        keep = self.blocks_for(num_tokens)
        while len(seq.block_table) > keep:
            self._release(seq.block_table.pop())

    def free(self, seq: Sequence) -> None:
        """Lets go of the sequence's blocks; what it computed stays cached (tail evicted first)."""
        if self.enable_caching:
            self._cache_partial(seq)
        for block in reversed(seq.block_table):
            self._release(block)
        seq.block_table = array("q")
        seq.block_chain = []

    # ------------------------------------------------------------------ prefix caching
    def match(self, token_ids: Seq[int], limit: int) -> PrefixHit:
        """The longest cached start of `token_ids`, at most `limit` tokens."""
        if not self.enable_caching or limit <= 0:
            return NO_HIT
        bs, parent = self.block_size, ROOT
        blocks: list[int] = []
        chain: list[Parent] = []
        while (len(blocks) + 1) * bs <= limit:
            start = len(blocks) * bs
            block = self._cache.get((parent, tuple(token_ids[start:start + bs])))
            if block is None:
                break
            parent = (block, self._generation[block])
            blocks.append(block)
            chain.append(parent)
        start = len(blocks) * bs
        src, length = self._longest_partial(parent, token_ids[start:min(start + bs, limit)])
        return PrefixHit(tuple(blocks), tuple(chain), src, length)

    def take(self, seq: Sequence, hit: PrefixHit) -> tuple[int, int] | None:
        """Gives `seq` (which holds no blocks) the hit's blocks: the full ones shared, the partial
        one copied into a fresh block. Returns the (src, dst) copy to run before the next forward."""
        if seq.block_table:
            raise AssertionError("take() is for a sequence without blocks")
        if hit.partial_src is not None and not self._free:
            raise NoFreeBlocks("no block for the copy")
        for block in hit.blocks:
            self._hold(block)
        seq.block_table = array("q", hit.blocks)
        seq.block_chain = list(hit.chain)
        self.hit_tokens += hit.num_tokens(self.block_size)
        if hit.partial_src is None:
            return None
        self._hold(hit.partial_src)  # it must not be handed out before the copy has run
        self._copy_sources.append(hit.partial_src)
        dst = self._take()
        seq.block_table.append(dst)
        return hit.partial_src, dst

    def clear_cache(self) -> None:
        """Forgets every cached block nobody holds (benchmarks: runs that must not share a cache)."""
        for block in list(self._free):
            self._evict(block)

    def copies_done(self) -> None:
        """The step's copies have run: their sources may go."""
        for block in self._copy_sources:
            self._release(block)
        self._copy_sources = []

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Caches the sequence's blocks that became full (every position computed) since the last call."""
        if not self.enable_caching:
            return
        bs, chain = self.block_size, seq.block_chain
        full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        while len(chain) < full:
            i = len(chain)
            key = (chain[i - 1] if i else ROOT, tuple(seq.token_slice(i * bs, (i + 1) * bs)))
            cached = self._cache.get(key)
            if cached is None:  # else the sequence computed a duplicate: the chain goes on from the cached one
                cached = seq.block_table[i]
                self._register(cached, key)
            chain.append((cached, self._generation[cached]))

    def cache_prompt_tail(self, seq: Sequence) -> None:
        """Lists the computed start of the sequence's last, partly filled block, so that samples
        and requests with the same prompt copy it instead of computing it."""
        if self.enable_caching:
            self._cache_partial(seq)

    # ------------------------------------------------------------------ internals
    def _register(self, block: int, key: Key) -> None:
        self._unlist(block)
        self._cache[key] = block
        self._key[block] = key
        self._list(block, key[0], key[1])

    def _cache_partial(self, seq: Sequence) -> None:
        self.cache_full_blocks(seq)
        bs, chain = self.block_size, seq.block_chain
        full = len(chain)
        end = min(seq.num_computed_tokens, len(seq.block_table) * bs)
        if end <= full * bs:
            return
        block = seq.block_table[full]
        if self.refcounts[block] != 1:
            return  # shared: not this sequence's own tail to list
        self._list(block, chain[-1] if full else ROOT, tuple(seq.token_slice(full * bs, end)))

    def _longest_partial(self, parent: Parent, tokens: Seq[int]) -> tuple[int | None, int]:
        best, best_len = None, 0
        for block, held in self._children.get(parent, {}).items():
            n = 0
            limit = min(len(held), len(tokens))
            while n < limit and held[n] == tokens[n]:
                n += 1
            if n > best_len:
                best, best_len = block, n
        return best, best_len

    def _list(self, block: int, parent: Parent, tokens: tuple[int, ...]) -> None:
        self._unlist(block)
        self._children.setdefault(parent, {})[block] = tokens
        self._parent_of[block] = parent

    def _unlist(self, block: int) -> None:
        parent = self._parent_of[block]
        if parent is not None:
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.pop(block, None)
                if not siblings:
                    del self._children[parent]
            self._parent_of[block] = None

    def _evict(self, block: int) -> None:
        key = self._key[block]
        if key is not None:
            if self._cache.get(key) == block:
                del self._cache[key]
            self._key[block] = None
        self._unlist(block)
        self._children.pop((block, self._generation[block]), None)
        self._generation[block] += 1

    def _take(self) -> int:
        block, _ = self._free.popitem(last=False)
        self._evict(block)
        self.refcounts[block] = 1
        return block

    def _hold(self, block: int) -> None:
        if self.refcounts[block] == 0:
            del self._free[block]
        self.refcounts[block] += 1

    def _release(self, block: int) -> None:
        self.refcounts[block] -= 1
        if self.refcounts[block] == 0:
            if not self.enable_caching:
                self._evict(block)
            self._free[block] = None
            if self._key[block] is None and self._parent_of[block] is None:
                # Nothing in it can be found again (a rejected draft's block, a tail nobody
                # listed): handed out next, before any cached block is evicted for it and before
                # a never-used block is touched, so the memory in use stays small and warm.
                self._free.move_to_end(block, last=False)
        elif self.refcounts[block] < 0:
            raise AssertionError(f"block {block} released twice")
