"""The per-step batch description: built once per step, handed to every layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

import torch


@dataclass(frozen=True)
class SeqChunk:
    """The tokens one sequence feeds in this step, at positions [start, start + len(token_ids))."""

    token_ids: tuple[int, ...]
    start: int
    block_table: tuple[int, ...]
    logits_from: int  # first index within the chunk whose logits are needed (len = none)


@dataclass(frozen=True)
class StepBatch:
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    slot_mapping: torch.Tensor  # [T] long: where each new token's K/V is written
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with 0
    query_lens: tuple[int, ...]  # new tokens per sequence
    context_lens: tuple[int, ...]  # tokens in the cache per sequence after this step
    cu_seqlens_q: torch.Tensor  # [B + 1] int32
    context_lens_t: torch.Tensor  # [B] int32
    logits_indices: torch.Tensor  # [R] long: rows of the packed batch whose logits are computed
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def build(cls, chunks: Seq[SeqChunk], block_size: int, device: torch.device) -> "StepBatch":
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []
        query_lens, context_lens, cu = [], [], [0]
        for chunk in chunks:
            n = len(chunk.token_ids)
            base = len(input_ids)
            input_ids.extend(chunk.token_ids)
            pos = range(chunk.start, chunk.start + n)
            positions.extend(pos)
            table = chunk.block_table
            slots.extend(table[p // block_size] * block_size + p % block_size for p in pos)
            logits_rows.extend(range(base + chunk.logits_from, base + n))
            query_lens.append(n)
            context_lens.append(chunk.start + n)
            cu.append(cu[-1] + n)
        max_blocks = max((len(c.block_table) for c in chunks), default=1) or 1
        tables = [v for c in chunks for v in (*c.block_table, *(0,) * (max_blocks - len(c.block_table)))]
        # Two host tensors (and two copies to the device) instead of one per field: each small
        # tensor costs a fixed overhead that a short step feels.
        longs = torch.tensor(input_ids + positions + slots + logits_rows + tables, dtype=torch.long).to(device)
        ints = torch.tensor(cu + context_lens, dtype=torch.int32).to(device)
        t, n = len(input_ids), len(logits_rows)
        return cls(
            input_ids=longs[:t],
            positions=longs[t:2 * t],
            slot_mapping=longs[2 * t:3 * t],
            block_tables=longs[3 * t + n:].view(len(chunks), max_blocks),
            query_lens=tuple(query_lens),
            context_lens=tuple(context_lens),
            cu_seqlens_q=ints[:len(cu)],
            context_lens_t=ints[len(cu):],
            logits_indices=longs[3 * t:3 * t + n],
            block_size=block_size,
        )
