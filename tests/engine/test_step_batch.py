"""The per-step batch: every field derived from the sequences' chunks, built once per step."""
from __future__ import annotations

import random
from array import array

import numpy as np
import pytest
import torch

from engine.step_batch import Feed, SeqChunk, Shift, StepBatch, host_step_arrays, host_step_small


def test_fed_ids_go_to_the_first_rows_or_to_the_rows_named():
    """A step queued ahead feeds ids from the device: into its first rows, or where its
    sequences carry drafts after them, into each sequence's first row."""
    ids = torch.tensor([0, 0, 5, 6, 0, 7])
    Feed(torch.tensor([1, 2])).into(ids)
    assert ids.tolist() == [1, 2, 5, 6, 0, 7]
    Feed(torch.tensor([3, 4]), torch.tensor([1, 4])).into(ids)
    assert ids.tolist() == [1, 3, 5, 6, 4, 7]


@pytest.mark.parametrize("exact", [True, False])
def test_shifted_rows_read_as_if_planned_where_they_went(exact):
    """A step planned before the accepted draft tokens ahead of it were known: the device moves
    each shifted sequence's rows (positions, the slots they write, its context length); the batch
    then reads as one planned at those positions. The host's context lengths are the true ones
    (read back) or, where a backend only sizes a launch by them, the farthest."""
    block = 4
    tables = [(3, 8, 5), (1,), (2, 6, 9, 4)]
    planned = [SeqChunk((5,), 6, tables[0], 0), SeqChunk((8,), 1, tables[1], 0), SeqChunk((1, 2, 3), 7, tables[2], 0)]
    by = [2, 0, 3]
    moved = [c._replace(start=c.start + b) for c, b in zip(planned, by)]
    batch = StepBatch.build(planned, block, torch.device("cpu"))
    shifted = Shift([0, 2], [3, 4], torch.tensor([2, 3])).apply(batch, exact)
    want = StepBatch.build(moved, block, torch.device("cpu"))
    for field in ("input_ids", "positions", "slot_mapping", "block_tables", "cu_seqlens_q", "context_lens_t",
                  "logits_indices"):
        assert torch.equal(getattr(shifted, field), getattr(want, field)), field
    assert shifted.query_lens == want.query_lens
    assert shifted.context_lens == (want.context_lens if exact else (6 + 1 + 3, 2, 7 + 3 + 4))


def test_fields_follow_the_chunks():
    chunks = [SeqChunk((5, 6, 7), 2, (4, 9), 2),   # a prefill chunk: only its last row's logits
              SeqChunk((8,), 6, (1, 3), 0),        # a decode step at position 6
              SeqChunk((1, 2), 0, (7,), 2)]        # a chunk short of the end: no logits
    b = StepBatch.build(chunks, 4, torch.device("cpu"))
    assert b.input_ids.tolist() == [5, 6, 7, 8, 1, 2]
    assert b.positions.tolist() == [2, 3, 4, 6, 0, 1]
    assert b.slot_mapping.tolist() == [4 * 4 + 2, 4 * 4 + 3, 9 * 4 + 0, 3 * 4 + 2, 7 * 4 + 0, 7 * 4 + 1]
    assert b.logits_indices.tolist() == [2, 3]
    assert b.block_tables.tolist() == [[4, 9], [1, 3], [7, 0]]
    assert b.query_lens == (3, 1, 2) and b.context_lens == (5, 7, 2)
    assert b.cu_seqlens_q.tolist() == [0, 3, 4, 6] and b.context_lens_t.tolist() == [5, 7, 2]
    assert b.num_seqs == 3 and b.num_tokens == 6


def test_a_verify_step_needs_every_rows_logits():
    b = StepBatch.build([SeqChunk((3, 10, 11, 12), 9, (2, 5, 6, 8), 0)], 4, torch.device("cpu"))
    assert b.logits_indices.tolist() == [0, 1, 2, 3] and b.positions.tolist() == [9, 10, 11, 12]
    assert b.slot_mapping.tolist() == [6 * 4 + 1, 6 * 4 + 2, 6 * 4 + 3, 8 * 4 + 0]


KINDS = ("prefill", "decode", "verify", "short")


def _random_chunks(rng: random.Random, n: int, block_size: int, table_of=list, kinds=KINDS) -> list[SeqChunk]:
    """Prefill chunks (some short of the end), decode steps and verify steps over random tables
    (`table_of` makes each table: a list, or an int64 array as a Sequence holds it)."""
    chunks = []
    for _ in range(n):
        kind = rng.choice(kinds)
        q = 1 if kind == "decode" else rng.randint(2, 9)
        start = rng.randint(0, 40)
        table = table_of([rng.randrange(100) for _ in range(-(-(start + q) // block_size))])
        logits_from = {"prefill": q - 1, "decode": 0, "verify": 0, "short": q}[kind]
        chunks.append(SeqChunk([rng.randrange(1000) for _ in range(q)], start, table, logits_from))
    return chunks


@pytest.mark.parametrize("kinds", [KINDS, ("decode",)], ids=["mixed", "decode only"])
@pytest.mark.parametrize("table_of", [list, lambda t: array("q", t)], ids=["list", "int64 array"])
@pytest.mark.parametrize("n", [1, 3, 16, 17, 40])
def test_the_python_and_the_numpy_builds_agree(n, table_of, kinds):
    rng = random.Random(n)
    for _ in range(20):
        chunks = _random_chunks(rng, n, 4, table_of, kinds)
        small, arrays = host_step_small(chunks, 4), host_step_arrays(chunks, 4)
        assert small.longs.dtype == arrays.longs.dtype == np.int64 and small.ints.dtype == arrays.ints.dtype == np.int32
        assert small.longs.tolist() == arrays.longs.tolist() and small.ints.tolist() == arrays.ints.tolist()
        assert small[2:] == arrays[2:]  # counts, width and the host tuples
        for field in ("input_ids", "positions", "slot_mapping", "logits_indices", "block_tables", "cu_seqlens",
                      "context_lens"):
            assert getattr(small, field).tolist() == getattr(arrays, field).tolist(), field


@pytest.mark.parametrize("n", [2, 16, 17, 40])
def test_a_batch_reads_the_same_whichever_build_made_it(n):
    """StepBatch.build takes the Python build for few sequences and numpy for many: both sides of
    the switch give what the chunks say."""
    chunks = _random_chunks(random.Random(100 + n), n, 4)
    b = StepBatch.build(chunks, 4, torch.device("cpu"))
    assert b.input_ids.tolist() == [t for c in chunks for t in c.token_ids]
    assert b.positions.tolist() == [c.start + i for c in chunks for i in range(len(c.token_ids))]
    assert b.slot_mapping.tolist() == [c.block_table[p // 4] * 4 + p % 4 for c in chunks
                                       for p in range(c.start, c.start + len(c.token_ids))]
    width = max(len(c.block_table) for c in chunks)
    assert b.block_tables.tolist() == [list(c.block_table) + [0] * (width - len(c.block_table)) for c in chunks]
    assert b.context_lens_t.tolist() == [c.start + len(c.token_ids) for c in chunks]
    assert b.cu_seqlens_q.dtype == torch.int32 and b.input_ids.dtype == torch.int64
