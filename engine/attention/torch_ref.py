"""Reference paged attention in plain PyTorch (CPU and GPU).

Sequences with few new tokens (decode, verify, short chunks) are padded into one
batched SDPA call over keys gathered through their block tables; long prefill
chunks run one sequence at a time. Every faster backend is tested against this. With a
sliding window (StarCoder2), a query also stops seeing keys `sliding_window` or more positions back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.attention.base import write_kv
from engine.step_batch import StepBatch

SHORT_QUERY = 64  # sequences with at most this many new tokens share one padded call


@dataclass(frozen=True)
class PaddedGroup:
    seq_index: torch.Tensor  # [G] which sequences
    row_index: torch.Tensor  # [G, Q] packed row of each query slot (0 where padding)
    row_valid: torch.Tensor  # [G, Q] bool
    block_tables: torch.Tensor  # [G, nb]
    mask: torch.Tensor  # [G, 1, Q, nb * block_size] bool: key visible to query


@dataclass(frozen=True)
class LongChunk:
    rows: slice
    slots: torch.Tensor  # [ctx] cache slots of all keys of the sequence
    mask: torch.Tensor | None  # [q, ctx] bool, None when plain causal (ctx == q)


@dataclass(frozen=True)
class TorchMeta:
    group: PaddedGroup | None
    long: tuple[LongChunk, ...]


class TorchRefBackend:
    name = "torch"
    host_lengths = True  # attends by the step's lengths on the host (AttentionBackend)

    def __init__(self, sliding_window: int | None = None) -> None:
        self.sliding_window = sliding_window

    def prepare(self, batch: StepBatch) -> TorchMeta:
        short = [i for i, q in enumerate(batch.query_lens) if q <= SHORT_QUERY]
        long = [i for i, q in enumerate(batch.query_lens) if q > SHORT_QUERY]
        window = self.sliding_window
        return TorchMeta(_padded_group(batch, short, window) if short else None,
                         tuple(long_chunk(batch, i, window) for i in long))

    def forward(self, q, k, v, k_cache, v_cache, batch: StepBatch, meta: TorchMeta) -> torch.Tensor:
        write_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        out = torch.zeros_like(q)  # rows of no sequence (padding) stay finite: their K/V land in the cache
        if meta.group is not None:
            _attend_group(q, k_cache, v_cache, meta.group, out)
        for chunk in meta.long:
            attend_long(q, k_cache, v_cache, chunk, out)
        return out


def _padded_group(batch: StepBatch, seqs: list[int], window: int | None = None) -> PaddedGroup:
    device = batch.input_ids.device
    cu = batch.cu_seqlens_q.tolist()
    max_q = max(batch.query_lens[i] for i in seqs)
    q_offsets = torch.arange(max_q, device=device)
    starts = torch.tensor([cu[i] for i in seqs], device=device)
    qlens = torch.tensor([batch.query_lens[i] for i in seqs], device=device)
    ctx = torch.tensor([batch.context_lens[i] for i in seqs], device=device)
    row_valid = q_offsets[None, :] < qlens[:, None]
    row_index = torch.where(row_valid, starts[:, None] + q_offsets[None, :], torch.zeros_like(row_valid, dtype=torch.long))
    seq_index = torch.tensor(seqs, device=device)
    max_ctx = max(batch.context_lens[i] for i in seqs)
    nb = (max_ctx + batch.block_size - 1) // batch.block_size
    tables = batch.block_tables[seq_index, :nb]
    # Query j of a sequence sits at position ctx - qlen + j and sees keys up to it.
    q_pos = (ctx - qlens)[:, None] + q_offsets[None, :]
    key_pos = torch.arange(nb * batch.block_size, device=device)
    mask = (key_pos[None, None, :] <= q_pos[:, :, None]) & row_valid[:, :, None]
    if window is not None:
        mask &= key_pos[None, None, :] > q_pos[:, :, None] - window
    return PaddedGroup(seq_index, row_index, row_valid, tables, mask[:, None])


def long_chunk(batch: StepBatch, i: int, window: int | None = None) -> LongChunk:
    device = batch.input_ids.device
    cu = batch.cu_seqlens_q.tolist()
    ctx, qlen = batch.context_lens[i], batch.query_lens[i]
    key_pos = torch.arange(ctx, device=device)
    slots = batch.block_tables[i, key_pos // batch.block_size] * batch.block_size + key_pos % batch.block_size
    mask = None
    if ctx != qlen or (window is not None and ctx > window):
        q_pos = torch.arange(ctx - qlen, ctx, device=device)
        mask = key_pos[None, :] <= q_pos[:, None]
        if window is not None:
            mask &= key_pos[None, :] > q_pos[:, None] - window
    return LongChunk(slice(cu[i], cu[i + 1]), slots, mask)


def _attend_group(q, k_cache, v_cache, g: PaddedGroup, out: torch.Tensor) -> None:
    """Attention block by block: gathered blocks stay [G, nb, kv_heads, block, d], so both
    products are batches of small matrix products over contiguous blocks (no K/V re-layout)."""
    num_g, nb = g.block_tables.shape
    _, kv_heads, block_size, head_dim = k_cache.shape
    heads, num_q = q.shape[1], g.row_index.shape[1]
    rep = heads // kv_heads
    keys, values = k_cache[g.block_tables], v_cache[g.block_tables]  # [G, nb, kvh, bs, d]
    # The `rep` query heads that share a KV head become extra query rows: K/V are never repeated.
    queries = q[g.row_index].view(num_g, num_q, kv_heads, rep, head_dim).permute(0, 2, 1, 3, 4)
    queries = queries.reshape(num_g, 1, kv_heads, num_q * rep, head_dim) * head_dim ** -0.5
    scores = torch.matmul(queries, keys.transpose(-1, -2))  # [G, nb, kvh, Q*rep, bs]
    scores = scores.permute(0, 2, 3, 1, 4).reshape(num_g, kv_heads, num_q * rep, nb * block_size)
    scores = scores.masked_fill(~g.mask.repeat_interleave(rep, dim=2), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # padded query rows see no key
    probs = probs.view(num_g, kv_heads, num_q * rep, nb, block_size).permute(0, 3, 1, 2, 4)
    o = torch.matmul(probs, values).sum(dim=1)  # [G, kvh, Q*rep, d]
    o = o.view(num_g, kv_heads, num_q, rep, head_dim).permute(0, 2, 1, 3, 4).reshape(num_g, num_q, heads, head_dim)
    out[g.row_index[g.row_valid]] = o[g.row_valid]


def attend_long(q, k_cache, v_cache, c: LongChunk, out: torch.Tensor) -> None:
    kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    blocks, offsets = c.slots // block_size, c.slots % block_size
    keys = k_cache[blocks, :, offsets].transpose(0, 1)[None]  # [1, kvh, ctx, d]
    values = v_cache[blocks, :, offsets].transpose(0, 1)[None]
    queries = q[c.rows].transpose(0, 1)[None]
    o = F.scaled_dot_product_attention(queries, keys, values, attn_mask=c.mask, is_causal=c.mask is None,
                                       enable_gqa=queries.shape[1] != kv_heads)
    out[c.rows] = o[0].transpose(0, 1)
