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
        tables = torch.zeros((len(chunks), max_blocks), dtype=torch.long)
        for i, chunk in enumerate(chunks):
            if chunk.block_table:
                tables[i, : len(chunk.block_table)] = torch.tensor(chunk.block_table, dtype=torch.long)

        def t(values: list[int], dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            input_ids=t(input_ids),
            positions=t(positions),
            slot_mapping=t(slots),
            block_tables=tables.to(device),
            query_lens=tuple(query_lens),
            context_lens=tuple(context_lens),
            cu_seqlens_q=t(cu, torch.int32),
            context_lens_t=t(context_lens, torch.int32),
            logits_indices=t(logits_rows),
            block_size=block_size,
        )
