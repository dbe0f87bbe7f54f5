"""The per-step batch description: built once per step, handed to every layer."""
from __future__ import annotations

import dataclasses
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


def on_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor copied to `device` without waiting for the work queued there: a CUDA copy out
    of pageable memory waits for its whole stream, so a step queued ahead of the one in flight
    would wait for that one to end."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class Feed(NamedTuple):
    """Token ids already on the device that a step feeds in place of the scheduled ones (a step
    queued before the tokens it feeds reached the host): into its first len(tokens) rows, or where
    sequences carry drafts after them, into `rows`."""

    tokens: torch.Tensor
    rows: torch.Tensor | None = None

    def into(self, input_ids: torch.Tensor) -> None:
        if self.rows is None:
            input_ids[:len(self.tokens)].copy_(self.tokens)
        else:
            input_ids.index_copy_(0, self.rows, self.tokens)


class Shift(NamedTuple):
    """Sequences of a step planned before the step in flight's accepted draft tokens reached the
    host (engine/llm_engine.py's overlap): sequence seqs[i]'s rows sit by[i] positions later than
    planned, 0 <= by[i] <= limits[i], `by` known on the device only."""

    seqs: list[int]  # indices among the step's sequences
    limits: list[int]
    by: torch.Tensor  # [len(seqs)] long, on the device

    def apply(self, batch: "StepBatch", exact: bool) -> "StepBatch":
        """Moves the sequences' rows in the batch's tensors, in place: positions, the slots their
        keys and values go to, context lengths. The host's context lengths become the farthest
        (`exact`: the true ones, read back, for backends that attend by them on the host)."""
        device = batch.positions.device
        cu = np.cumsum((0, *batch.query_lens))
        rows = np.concatenate([np.arange(cu[i], cu[i + 1]) for i in self.seqs])
        owner = np.repeat(np.arange(len(self.seqs)), [batch.query_lens[i] for i in self.seqs])
        rows_t, owner_t = (on_device(torch.from_numpy(a), device) for a in (rows, owner))
        seqs_t = on_device(torch.tensor(self.seqs, dtype=torch.long), device)
        positions = batch.positions.index_select(0, rows_t) + self.by.index_select(0, owner_t)
        batch.positions.index_copy_(0, rows_t, positions)
        size = batch.block_size
        blocks = batch.block_tables[seqs_t.index_select(0, owner_t), positions // size]
        batch.slot_mapping.index_copy_(0, rows_t, blocks * size + positions % size)
        batch.context_lens_t.index_add_(0, seqs_t, self.by.to(batch.context_lens_t.dtype))
        if exact:
            context = tuple(batch.context_lens_t.tolist())
        else:
            context = list(batch.context_lens)
            for i, limit in zip(self.seqs, self.limits):
                context[i] += limit
            context = tuple(context)
        return dataclasses.replace(batch, context_lens=context)


class HostStep(NamedTuple):
    """A step's inputs on the host, unpadded: int64 fields packed in `longs` (ids, positions,
    slots, logits rows, tables), int32 ones in `ints` (cu_seqlens, context lengths), so that a
    device gets each in one copy; lengths also as tuples for backends that read them on the host."""

    longs: np.ndarray  # [3T + R + B * width]
    ints: np.ndarray  # [2B + 1] int32
    num_tokens: int  # T
    num_logits: int  # R
    width: int  # the longest block table (at least 1); shorter ones are padded with 0
    query_lens_host: tuple[int, ...]
    context_lens_host: tuple[int, ...]

    @property
    def input_ids(self) -> np.ndarray:
        return self.longs[:self.num_tokens]

    @property
    def positions(self) -> np.ndarray:
        return self.longs[self.num_tokens:2 * self.num_tokens]

    @property
    def slot_mapping(self) -> np.ndarray:
        return self.longs[2 * self.num_tokens:3 * self.num_tokens]

    @property
    def logits_indices(self) -> np.ndarray:
        return self.longs[3 * self.num_tokens:3 * self.num_tokens + self.num_logits]

    @property
    def block_tables(self) -> np.ndarray:  # [B, width]
        return self.longs[3 * self.num_tokens + self.num_logits:].reshape(-1, self.width)

    @property
    def cu_seqlens(self) -> np.ndarray:
        return self.ints[:len(self.query_lens_host) + 1]

    @property
    def context_lens(self) -> np.ndarray:
        return self.ints[len(self.query_lens_host) + 1:]


SMALL_STEP_SEQS = 16  # up to this many sequences a step's inputs are built in plain Python


def host_step(chunks: Seq[SeqChunk], block_size: int) -> HostStep:
    """Every per-token and per-sequence input of the step. A small step (batch-1 decode, a few
    sequences) is built from Python lists, where numpy's fixed cost per call would dominate; a
    large one from array arithmetic (a step has up to thousands of rows and table entries).
    Both give the same arrays."""
    if len(chunks) <= SMALL_STEP_SEQS:
        return host_step_small(chunks, block_size)
    return host_step_arrays(chunks, block_size)


def host_step_small(chunks: Seq[SeqChunk], block_size: int) -> HostStep:
    """host_step in plain Python: one pass over the chunks, one array per dtype at the end."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    rows: list[int] = []
    tables: list[int] = []
    cu, ends, qlens = [0], [], []
    width = max((len(c.block_table) for c in chunks), default=1) or 1
    row = 0
    for tokens, start, table, logits_from in chunks:
        q = len(tokens)
        ids += tokens
        if q == 1:  # a decode step: most chunks of most steps
            positions.append(start)
            slots.append(table[start // block_size] * block_size + start % block_size)
        else:
            positions += range(start, start + q)
            slots += [table[p // block_size] * block_size + p % block_size for p in range(start, start + q)]
        rows += range(row + logits_from, row + q)
        tables += table
        if len(table) < width:
            tables += [0] * (width - len(table))
        row += q
        cu.append(row)
        ends.append(start + q)
        qlens.append(q)
    longs = np.array(ids + positions + slots + rows + tables, dtype=np.int64)
    ints = np.array(cu + ends, dtype=np.int32)
    return HostStep(longs, ints, len(ids), len(rows), width, tuple(qlens), tuple(ends))


def host_step_arrays(chunks: Seq[SeqChunk], block_size: int) -> HostStep:
    """host_step in numpy: per chunk only its lengths are read in Python; token ids and tables
    are copied in bulk, and positions, slots and logits rows come from array arithmetic."""
    token_ids, starts, block_tables, froms = zip(*chunks) if chunks else ((), (), (), ())  # one pass, in C
    qlens = list(map(len, token_ids))
    widths = list(map(len, block_tables))
    t, b = sum(qlens), len(chunks)
    width = max(widths, default=1) or 1
    q = np.array(qlens, dtype=np.int64)
    start = np.array(starts, dtype=np.int64)
    cu, seq_of_row, positions, logits_rows = _rows(q, start, np.array(froms, dtype=np.int64), t)
    r = len(logits_rows)
    longs = np.zeros(3 * t + r + b * width, dtype=np.int64)  # tables are padded with 0
    longs[:t] = np.fromiter(chain.from_iterable(token_ids), dtype=np.int64, count=t)
    longs[t:2 * t] = positions
    tables = longs[3 * t + r:].reshape(b, width)
    tables[np.arange(width) < np.array(widths, dtype=np.int64)[:, None]] = _flat_tables(block_tables, sum(widths))
    longs[2 * t:3 * t] = tables[seq_of_row, positions // block_size] * block_size + positions % block_size
    longs[3 * t:3 * t + r] = logits_rows
    context_lens = start + q
    ints = np.concatenate([cu, context_lens]).astype(np.int32)
    return HostStep(longs, ints, t, r, width, tuple(qlens), tuple(context_lens.tolist()))


def _rows(q: np.ndarray, start: np.ndarray, froms: np.ndarray, t: int) -> tuple[np.ndarray, ...]:
    """cu_seqlens, each row's sequence, each row's position and the rows whose logits are needed,
    from the chunks' lengths, starts and logits_from."""
    b = len(q)
    if t == b:  # one token per chunk (a decode step): row i is sequence i
        rows = np.arange(b + 1)
        return rows, rows[:b], start, np.flatnonzero(froms <= 0)
    cu = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(q, out=cu[1:])
    seq_of_row = np.repeat(np.arange(b), q)
    offset = np.arange(t) - cu[:-1][seq_of_row]  # each row's index within its chunk
    return cu, seq_of_row, start[seq_of_row] + offset, np.flatnonzero(offset >= froms[seq_of_row])


def _flat_tables(block_tables: Seq[Seq[int]], count: int) -> np.ndarray:
    """The tables one after another: a sequence's own (an int64 array) joined as bytes, any
    other sequence of ints read an int at a time."""
    try:
        joined = b"".join(block_tables)
    except TypeError:  # not buffers: tuples or lists of ints
        joined = b""
    if len(joined) == 8 * count:
        return np.frombuffer(joined, dtype=np.int64, count=count)
    return np.fromiter(chain.from_iterable(block_tables), dtype=np.int64, count=count)


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
    first_blocks: np.ndarray | None = None  # [B] each table's first block, on the host (None: not there)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def build(cls, chunks: Seq[SeqChunk], block_size: int, device: torch.device) -> "StepBatch":
        h = host_step(chunks, block_size)
        # Two host tensors (and two copies to the device), split into the fields by one call
        # each: every small tensor op costs a fixed overhead that a short step feels.
        t, n, b = h.num_tokens, h.num_logits, len(chunks)
        ids, positions, slots, rows, tables = on_device(torch.from_numpy(h.longs), device).split_with_sizes(
            [t, t, t, n, b * h.width])
        cu, context = on_device(torch.from_numpy(h.ints), device).split_with_sizes([b + 1, b])
        return cls(ids, positions, slots, tables.view(b, h.width), h.query_lens_host, h.context_lens_host,
                   cu, context, rows, block_size, h.block_tables[:, 0])
