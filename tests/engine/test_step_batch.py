"""The per-step batch: every field derived from the sequences' chunks, built once per step."""
from __future__ import annotations

import torch

from engine.step_batch import SeqChunk, StepBatch


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
