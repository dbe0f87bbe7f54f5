"""Decode and verify steps over static buffers: what a CUDA graph captures and replays.

A step in which every sequence feeds its last known token and maybe a draft (no prefill chunk)
is padded to a bucket: a number of sequences B from SEQ_BUCKETS and a number of rows T from a
grid of multiples of B. Its inputs are written into buffers allocated once, at the largest
bucket's size: each bucket is a view of their first B sequences and T rows, so the addresses a
captured graph reads never change. Padding sequences feed no token and hold no context; padding
rows write their K/V into a scratch block that no sequence owns and read nothing. Block tables
are padded with block 0, as in an eager batch (a masked key must still hold a finite value).

`StaticStep.run` is the step function over those buffers (the model's forward from the static
batch and, for Triton attention, static metadata, to the logits of every row); engine/cuda_graphs.py
captures and replays exactly it. On the CPU the tests call it directly and compare it with the
eager step.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from engine.step_batch import SeqChunk, StepBatch, host_step

SEQ_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
ROWS_PER_SEQ = (1, 2, 3, 4, 6, 8, 12, 17)  # rows of a bucket, as multiples of its sequences


@dataclass(frozen=True)
class Bucket:
    seqs: int
    rows: int


def buckets(max_seqs: int, max_rows: int) -> tuple[Bucket, ...]:
    """Every bucket up to `max_seqs` sequences and `max_rows` rows."""
    out = []
    for b in (s for s in SEQ_BUCKETS if s <= max_seqs) or (max_seqs,):
        for m in ROWS_PER_SEQ:
            if b * m <= max_rows:
                out.append(Bucket(b, b * m))
    return tuple(out)


def bucket_for(all_buckets: Sequence[Bucket], seqs: int, rows: int) -> Bucket | None:
    """The smallest bucket that holds the step (fewest rows, then fewest sequences); None if none."""
    fits = [b for b in all_buckets if b.seqs >= seqs and b.rows >= rows]
    return min(fits, key=lambda b: (b.rows, b.seqs)) if fits else None


def takes(chunks: Sequence[SeqChunk]) -> bool:
    """Decode and verify steps only: each sequence feeds its last known token (plus a draft) and
    every row is sampled."""
    return bool(chunks) and all(c.logits_from == 0 and len(c.token_ids) >= 1 for c in chunks)


class StaticStep:
    """The static buffers of every bucket and the step function over them."""

    def __init__(self, max_seqs: int, max_rows: int, max_blocks: int, block_size: int, scratch_block: int,
                 vocab_size: int, device: torch.device) -> None:
        self.block_size, self.scratch_block, self.device = block_size, scratch_block, device
        self.max_blocks = max_blocks
        self.buckets = buckets(max_seqs, max_rows)
        rows = max(b.rows for b in self.buckets)
        seqs = max(b.seqs for b in self.buckets)
        longs = dict(dtype=torch.long, device=device)
        self.input_ids = torch.zeros(rows, **longs)
        self.positions = torch.zeros(rows, **longs)
        self.slot_mapping = torch.full((rows,), scratch_block * block_size, **longs)
        self.logits_indices = torch.arange(rows, **longs)
        self.block_tables = torch.zeros((seqs, max_blocks), **longs)
        self.cu_seqlens = torch.zeros(seqs + 1, dtype=torch.int32, device=device)
        self.context_lens = torch.zeros(seqs, dtype=torch.int32, device=device)
        # Every bucket's logits land here: graphs share it instead of each keeping an output of its own.
        self.logits = torch.empty((rows, vocab_size), dtype=torch.float32, device=device)
        self.metas: dict[Bucket, object] = {}  # static attention metadata per bucket (Triton)

    def bucket(self, chunks: Sequence[SeqChunk]) -> Bucket | None:
        if not takes(chunks) or max(len(c.block_table) for c in chunks) > self.max_blocks:
            return None
        return bucket_for(self.buckets, len(chunks), sum(len(c.token_ids) for c in chunks))

    def fill(self, chunks: Sequence[SeqChunk], bucket: Bucket) -> StepBatch:
        """Writes the step into the buffers, padded to `bucket`; returns the bucket's view."""
        t, b = bucket.rows, bucket.seqs
        h = host_step(chunks, self.block_size)
        rows, n, width = h.num_tokens, len(chunks), h.width
        # ids, positions and slots of every row (padding rows: token 0 at position 0, written to
        # the scratch block), then the sequences' tables (padding sequences: block 0, as in an
        # eager batch, where a masked key must still hold a finite value).
        longs = np.zeros(3 * t + b * width, dtype=np.int64)
        longs[:rows] = h.input_ids
        longs[t:t + rows] = h.positions
        longs[2 * t:3 * t] = self.scratch_block * self.block_size
        longs[2 * t:2 * t + rows] = h.slot_mapping
        longs[3 * t:3 * t + n * width] = h.block_tables.ravel()
        ints = np.zeros(2 * b + 1, dtype=np.int32)  # cu_seqlens (padding sequences: no rows), context lengths
        ints[:n + 1] = h.cu_seqlens
        ints[n + 1:b + 1] = rows
        ints[b + 1:b + 1 + n] = h.context_lens
        longs, ints = torch.from_numpy(longs), torch.from_numpy(ints)
        if self.device.type == "cuda":
            longs, ints = longs.pin_memory(), ints.pin_memory()
        self.input_ids[:t].copy_(longs[:t], non_blocking=True)
        self.positions[:t].copy_(longs[t:2 * t], non_blocking=True)
        self.slot_mapping[:t].copy_(longs[2 * t:3 * t], non_blocking=True)
        self.block_tables[:b, :width].copy_(longs[3 * t:].view(b, width), non_blocking=True)
        self.cu_seqlens[:b + 1].copy_(ints[:b + 1], non_blocking=True)
        self.context_lens[:b].copy_(ints[b + 1:], non_blocking=True)
        pad = (0,) * (b - n)
        return self.view(bucket, h.query_lens_host + pad, h.context_lens_host + pad)

    def view(self, bucket: Bucket, query_lens: tuple[int, ...] | None = None,
             context_lens: tuple[int, ...] | None = None) -> StepBatch:
        """The bucket's StepBatch over the static buffers (host lengths for backends that read them)."""
        t, b = bucket.rows, bucket.seqs
        return StepBatch(
            input_ids=self.input_ids[:t], positions=self.positions[:t], slot_mapping=self.slot_mapping[:t],
            block_tables=self.block_tables[:b], query_lens=query_lens or (0,) * b,
            context_lens=context_lens or (0,) * b, cu_seqlens_q=self.cu_seqlens[:b + 1],
            context_lens_t=self.context_lens[:b], logits_indices=self.logits_indices[:t],
            block_size=self.block_size)

    def run(self, model: torch.nn.Module, kv_caches: torch.Tensor, backend: object, batch: StepBatch,
            meta: object) -> torch.Tensor:
        """The step function from given attention metadata: logits [T, vocab] of every row of the
        bucket (padding rows too), in the shared logits buffer."""
        hidden = model(batch, kv_caches, backend, meta)
        out = self.logits[:batch.num_tokens]
        out.copy_(model.compute_logits(hidden))
        return out

    def run_from_inputs(self, model: torch.nn.Module, kv_caches: torch.Tensor, backend: object, batch: StepBatch,
                        launch: object | None) -> torch.Tensor:
        """The step function that also builds its attention metadata from the static batch (with
        the bucket's fixed launch, when the backend takes one): a graph of it replays those few
        dozen small ops too, instead of the host launching them one by one every step."""
        return self.run(model, kv_caches, backend, batch, metadata(backend, batch, launch))


def metadata(backend: object, batch: StepBatch, launch: object | None) -> object:
    """The step's attention metadata, with the bucket's fixed launch where the backend takes one."""
    return backend.prepare(batch, launch) if launch is not None else backend.prepare(batch)


def prepared(backend: object, batch: StepBatch, static: dict, bucket: Bucket, launch: object | None) -> object:
    """The step's attention metadata outside a graph. With a fixed launch per bucket (Triton), it
    is copied into the bucket's static metadata, which a graph reads; other backends get fresh
    metadata."""
    meta = metadata(backend, batch, launch)
    if launch is None:
        return meta
    if bucket not in static:
        static[bucket] = meta
    else:
        meta.copy_to(static[bucket])
    return static[bucket]


def launch_for_bucket(bucket: Bucket, max_query_tile: int = 16, prefix_tile: int = 32):
    """Triton's fixed launch parameters for a bucket: query tiles as tall as its rows per sequence
    need (at most the backend's), splits for few sequences with long contexts, the shared-prefix
    pass where a bucket can hold siblings."""
    from engine.attention.triton_meta import LaunchConfig

    per_seq = -(-bucket.rows // bucket.seqs)
    query_tile = min(max_query_tile, 1 << (per_seq - 1).bit_length())
    splits = 8 if bucket.seqs <= 4 else 4 if bucket.seqs <= 16 else 2 if bucket.seqs <= 48 else 1
    return LaunchConfig(query_tile, prefix_tile, splits, bucket.seqs >= 2)


def seq_bucket_index(seqs: int) -> int:
    return bisect.bisect_left(SEQ_BUCKETS, seqs)
