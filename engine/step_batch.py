"""The per-step batch description: built once per step, handed to every layer."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple
from typing import Sequence as Seq

import numpy as np
import torch


class SeqChunk(NamedTuple):
    """The tokens one sequence feeds in this step, at positions [start, start + len(token_ids))
    (a tuple: the runner makes one per scheduled sequence per step; the sequences read the
    fields only while the step is built)."""

    token_ids: Seq[int]
    start: int
    block_table: Seq[int]
    logits_from: int  # first index within the chunk whose logits are needed (len = none)


class HostStep(NamedTuple):
    """A step's inputs on the host, unpadded (int64 arrays; lengths also as tuples for
    backends that read them on the host)."""

    input_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    slot_mapping: np.ndarray  # [T]
    logits_indices: np.ndarray  # [R]
    block_tables: np.ndarray  # [B, width], padded with 0; width = the longest table (at least 1)
    cu_seqlens: np.ndarray  # [B + 1]
    context_lens: np.ndarray  # [B]
    query_lens_host: tuple[int, ...]
    context_lens_host: tuple[int, ...]


def host_step(chunks: Seq[SeqChunk], block_size: int) -> HostStep:
    """Every per-token and per-sequence input of the step. Per chunk only its lengths are read
    in Python; token ids and tables are copied in bulk, and positions, slots and logits rows
    come from array arithmetic (a step has up to thousands of rows and table entries)."""
    token_ids, starts, block_tables, froms = zip(*chunks) if chunks else ((), (), (), ())  # one pass, in C
    qlens = list(map(len, token_ids))
    widths = list(map(len, block_tables))
    num_tokens = sum(qlens)
    ids = np.fromiter(chain.from_iterable(token_ids), dtype=np.int64, count=num_tokens)
    flat_tables = np.fromiter(chain.from_iterable(block_tables), dtype=np.int64, count=sum(widths))
    width = max(widths, default=1) or 1
    tables = np.zeros((len(chunks), width), dtype=np.int64)
    tables[np.arange(width) < np.array(widths, dtype=np.int64)[:, None]] = flat_tables
    q = np.array(qlens, dtype=np.int64)
    cu = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(q, out=cu[1:])
    seq_of_row = np.repeat(np.arange(len(chunks)), q)
    offset = np.arange(num_tokens) - cu[:-1][seq_of_row]  # each row's index within its chunk
    start = np.array(starts, dtype=np.int64)
    positions = start[seq_of_row] + offset
    slots = tables[seq_of_row, positions // block_size] * block_size + positions % block_size
    logits_from = np.array(froms, dtype=np.int64)
    logits_rows = np.flatnonzero(offset >= logits_from[seq_of_row])
    context_lens = start + q
    return HostStep(ids, positions, slots, logits_rows, tables, cu, context_lens, tuple(qlens),
                    tuple(context_lens.tolist()))


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
        h = host_step(chunks, block_size)
        # Two host tensors (and two copies to the device) instead of one per field: each small
        # tensor costs a fixed overhead that a short step feels.
        longs = torch.from_numpy(np.concatenate(
            [h.input_ids, h.positions, h.slot_mapping, h.logits_indices, h.block_tables.ravel()])).to(device)
        ints = torch.from_numpy(np.concatenate([h.cu_seqlens, h.context_lens]).astype(np.int32)).to(device)
        t, n, b = len(h.input_ids), len(h.logits_indices), len(chunks)
        return cls(
            input_ids=longs[:t],
            positions=longs[t:2 * t],
            slot_mapping=longs[2 * t:3 * t],
            block_tables=longs[3 * t + n:].view(b, h.block_tables.shape[1]),
            query_lens=h.query_lens_host,
            context_lens=h.context_lens_host,
            cu_seqlens_q=ints[:b + 1],
            context_lens_t=ints[b + 1:],
            logits_indices=longs[3 * t:3 * t + n],
            block_size=block_size,
        )
