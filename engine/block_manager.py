"""Fixed-size KV blocks with reference counts.

Invariant: a block shared by several sequences (refcount > 1) is full and is
never written again, so sharing needs no copy-on-write at write time: `fork`
copies the one partly filled tail block up front and shares the full ones.
"""
from __future__ import annotations

from collections import deque

from engine.sequence import Sequence


class NoFreeBlocks(RuntimeError):
    pass


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.refcounts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))

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
        self.release(seq.block_table)
        seq.block_table = []

    def fork(self, parent: Sequence, child: Sequence, num_tokens: int) -> tuple[int, int] | None:
        """Gives `child` the parent's first `num_tokens` tokens of cache.

        Full blocks are shared; a partly filled tail block gets a private copy, and
        the (src, dst) pair returned must be copied before the next forward.
        Raises NoFreeBlocks when a tail copy is needed and no block is free.
        """
        full, partial = divmod(num_tokens, self.block_size)
        if partial and not self._free:
            raise NoFreeBlocks("no block for the tail copy")
        child.block_table = list(parent.block_table[:full])
        self.hold(child.block_table)
        if not partial:
            return None
        dst = self._take()
        child.block_table.append(dst)
        return parent.block_table[full], dst

    def new_block(self) -> int:
        """One free block, held once (let go with `release`)."""
        if not self._free:
            raise NoFreeBlocks("no free block")
        return self._take()

    def share(self, blocks: list[int], seq: Sequence) -> None:
        """Gives `seq`, which holds no blocks, these full blocks (another holder keeps them too)."""
        if seq.block_table:
            raise AssertionError("share() is for a sequence without blocks")
        self.hold(blocks)
        seq.block_table = list(blocks)

    def hold(self, blocks: list[int]) -> None:
        """One more reference to each of these blocks, let go with `release`."""
        for block in blocks:
            self.refcounts[block] += 1

    def release(self, blocks: list[int]) -> None:
        """Lets go of one reference to each block (newest first back on the free list)."""
        for block in reversed(blocks):
            self._release(block)

    def _take(self) -> int:
        block = self._free.popleft()
        self.refcounts[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.refcounts[block] -= 1
        if self.refcounts[block] == 0:
            self._free.append(block)
        elif self.refcounts[block] < 0:
            raise AssertionError(f"block {block} released twice")
