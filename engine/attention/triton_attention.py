"""Triton attention over the paged KV cache (GPU), one kernel family for every step shape.

Per layer: `_write_kv_kernel` stores the new K/V rows in their slots; `_own_kernel` attends each
tile of a sequence's new tokens over its keys, causal, optionally split over the context
(split-K); with the cascade on, `_prefix_kernel` attends all query rows of a group of
siblings over their shared prefix, reading its K/V once per group, and `_merge_kernel`
combines the partial results by log-sum-exp. A program owns one KV head and the query heads
that share it (GQA without repeating K/V). Softmax runs in float32 in base 2.

Nothing is read back to the host in `forward`: the kernels take every per-step value from
the metadata tensors (see triton_meta for what a CUDA-graph layer keeps static). Runs on CPU
tensors under TRITON_INTERPRET=1 (the tests), where bf16 math happens in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention import triton_meta
from engine.attention.triton_meta import LaunchConfig, TritonMeta
from engine.step_batch import StepBatch

LOG2E = 1.4426950408889634
WRITE_ROWS = 32  # (token, kv head) rows per program of the cache write
# Heads up to WIDE_HEAD dims run the default tiles. Wider ones (DeepSeek-V2's 576-wide latent rows,
# padded to a 1024-wide tile) take tiles of 16 rows and 16 keys, the least tl.dot takes: a float32
# accumulator of 16 x 1024 already fills a block's registers, and a key tile with its value tile
# 64 KB of shared memory.
WIDE_HEAD = 256
WIDE_TILE = 16


@triton.jit
def _write_kv_kernel(k, v, k_cache, v_cache, slot_mapping, tokens, stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_ckb, stride_ckh, stride_cks, stride_cvb, stride_cvh, stride_cvs, kv_heads, head_dim,
                     BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """Grid (cdiv(T, BLOCK_T),): row r of a program is token r // BLOCK_H, kv head r % BLOCK_H."""
    r = tl.arange(0, BLOCK_T * BLOCK_H)
    t = tl.program_id(0) * BLOCK_T + r // BLOCK_H
    h = r % BLOCK_H
    slot = tl.load(slot_mapping + t, mask=t < tokens, other=-1)
    row_ok = (t < tokens) & (h < kv_heads) & (slot >= 0)  # slot -1: a padding row
    block = tl.where(row_ok, slot, 0) // BLOCK_SIZE
    off = tl.where(row_ok, slot, 0) % BLOCK_SIZE
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = row_ok[:, None] & (d < head_dim)
    kr = tl.load(k + t[:, None] * stride_kt + h[:, None] * stride_kh + d, mask=mask)
    vr = tl.load(v + t[:, None] * stride_vt + h[:, None] * stride_vh + d, mask=mask)
    tl.store(k_cache + (block * stride_ckb + h * stride_ckh + off * stride_cks)[:, None] + d,
             kr.to(k_cache.dtype.element_ty), mask=mask)
    tl.store(v_cache + (block * stride_cvb + h * stride_cvh + off * stride_cvs)[:, None] + d,
             vr.to(v_cache.dtype.element_ty), mask=mask)


@triton.jit
def _tile_rows(tile_seq, tile_q0, cu_seqlens, context_lens, tile, chunk, kv_head, REP: tl.constexpr,
               HEADS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    """Row r of a (used) attention tile is new token r // HEADS of the tile, query head
    r % HEADS of this program's share of the KV head's REP heads."""
    seq = tl.load(tile_seq + tile)
    q0 = tl.load(tile_q0 + tile)
    first = tl.load(cu_seqlens + seq)
    q_len = tl.load(cu_seqlens + seq + 1) - first
    ctx = tl.load(context_lens + seq)
    r = tl.arange(0, BLOCK_M)
    j = r // HEADS
    hk = chunk * HEADS + r % HEADS
    row_ok = (j < BLOCK_Q) & (q0 + j < q_len) & (hk < REP)
    token = first + q0 + j
    head = kv_head * REP + hk
    q_pos = tl.where(row_ok, ctx - q_len + q0 + j, -1)  # -1: the row sees no key
    return seq, ctx, token, head, row_ok, q_pos


@triton.jit
def _load_queries(q, token, head, row_ok, stride_qt, stride_qh, head_dim, LOW_PRECISION: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    rows = tl.load(q + token[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                   mask=row_ok[:, None] & (d[None, :] < head_dim), other=0.0)
    if not LOW_PRECISION:
        rows = rows.to(tl.float32)
    return rows


@triton.jit
def _key_range(lo, hi, split, q_pos, row_ok, NUM_SPLITS: tl.constexpr, WINDOW: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Split `split` of positions [lo, hi) (key-tile aligned lengths), cut to what the rows see."""
    per_split = ((hi - lo + NUM_SPLITS - 1) // NUM_SPLITS + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, hi)
    end = tl.minimum(end, tl.max(q_pos, 0) + 1)
    if WINDOW > 0:
        first = tl.min(tl.where(row_ok, q_pos, 2147483647 - WINDOW), 0)
        start = tl.maximum(start, first - WINDOW + 1)
    return start, end


@triton.jit
def _attend(qs, q_pos, table, k_head, v_head, lo, hi, stride_cb, stride_cs, head_dim, qk_scale,
            BLOCK_SIZE: tl.constexpr, WINDOW: tl.constexpr, LOW_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Online softmax of rows `qs` over key positions [lo, hi) of a block table: (max, sum, acc),
    in base 2. k_head, v_head point at one kv head of the caches (same layout); a key is read
    through the table per position, so a key tile may span blocks."""
    n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: rows that see nothing stay NaN-free
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(lo - lo % BLOCK_N, hi, BLOCK_N):
        pos = n0 + n
        key_ok = (pos >= lo) & (pos < hi)
        block = tl.load(table + pos // BLOCK_SIZE, mask=key_ok, other=0)
        offsets = (block * stride_cb + (pos % BLOCK_SIZE) * stride_cs)[:, None] + d[None, :]
        kv_mask = key_ok[:, None] & (d[None, :] < head_dim)
        ks = tl.load(k_head + offsets, mask=kv_mask, other=0.0)
        vs = tl.load(v_head + offsets, mask=kv_mask, other=0.0)
        if LOW_PRECISION:
            s = tl.dot(qs, tl.trans(ks))
        else:
            s = tl.dot(qs, tl.trans(ks.to(tl.float32)), input_precision="ieee")
        # Keys outside [lo, hi) get a position no row reaches, so one compare masks everything.
        key_pos = tl.where(key_ok, pos, 2147483647)
        visible = key_pos[None, :] <= q_pos[:, None]
        if WINDOW > 0:
            visible = visible & (key_pos[None, :] > q_pos[:, None] - WINDOW)
        s = tl.where(visible, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if LOW_PRECISION:
            pv = tl.dot(p.to(vs.dtype), vs)
        else:
            pv = tl.dot(p, vs.to(tl.float32), input_precision="ieee")
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _store_partial(part_lse, part_o, slot, token, head, row_ok, m, l, acc, stride_ps, stride_pt, head_dim,
                   BLOCK_D: tl.constexpr):
    """(log2-sum-exp, normalized output) of each row; a row that saw no key gets (-inf, 0)."""
    d = tl.arange(0, BLOCK_D)
    seen = l > 0
    lse = tl.where(seen, m + tl.log2(tl.where(seen, l, 1.0)), float("-inf"))
    o = acc / tl.where(seen, l, 1.0)[:, None]
    row = (slot * stride_ps + token * stride_pt + head).to(tl.int64)  # x head_dim may pass 2**31
    tl.store(part_lse + row, lse, mask=row_ok)
    tl.store(part_o + row[:, None] * head_dim + d[None, :], o, mask=row_ok[:, None] & (d[None, :] < head_dim))


@triton.jit
def _own_kernel(q, k_cache, v_cache, out, part_lse, part_o, tile_seq, tile_q0, cu_seqlens, context_lens,
                own_start, block_tables, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, stride_cb, stride_ch,
                stride_cs, stride_ps, stride_pt, head_dim, qk_scale,
                REP: tl.constexpr, HEADS: tl.constexpr, CHUNKS: tl.constexpr, NUM_SPLITS: tl.constexpr,
                DIRECT: tl.constexpr, BLOCK_SIZE: tl.constexpr, WINDOW: tl.constexpr, LOW_PRECISION: tl.constexpr,
                BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (attention tiles, kv heads x head chunks, splits): a tile's new tokens over the
    sequence's own keys [own_start, context), this program's split of them."""
    tile = tl.program_id(0)
    if tl.load(tile_seq + tile) < 0:
        return  # an unused slot of the tile list
    kv_head = tl.program_id(1) // CHUNKS
    split = tl.program_id(2)
    seq, ctx, token, head, row_ok, q_pos = _tile_rows(tile_seq, tile_q0, cu_seqlens, context_lens, tile,
                                                      tl.program_id(1) % CHUNKS, kv_head, REP, HEADS, BLOCK_Q,
                                                      BLOCK_M)
    qs = _load_queries(q, token, head, row_ok, stride_qt, stride_qh, head_dim, LOW_PRECISION, BLOCK_D)
    lo, hi = _key_range(tl.load(own_start + seq), ctx, split, q_pos, row_ok, NUM_SPLITS, WINDOW, BLOCK_N)
    m, l, acc = _attend(qs, q_pos, block_tables + seq * stride_bt, k_cache + kv_head * stride_ch,
                        v_cache + kv_head * stride_ch, lo, hi, stride_cb, stride_cs, head_dim, qk_scale, BLOCK_SIZE,
                        WINDOW, LOW_PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)
    if DIRECT:
        d = tl.arange(0, BLOCK_D)
        o = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out + token[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 o.to(out.dtype.element_ty), mask=row_ok[:, None] & (d[None, :] < head_dim))
    else:
        _store_partial(part_lse, part_o, split, token, head, row_ok, m, l, acc, stride_ps, stride_pt, head_dim,
                       BLOCK_D)


@triton.jit
def _prefix_kernel(q, k_cache, v_cache, part_lse, part_o, prefix_leader, prefix_len, prefix_start, prefix_count,
                   group_tokens, positions, block_tables, stride_qt, stride_qh, stride_bt, stride_cb, stride_ch,
                   stride_cs, stride_ps, stride_pt, head_dim, qk_scale,
                   REP: tl.constexpr, HEADS: tl.constexpr, CHUNKS: tl.constexpr, NUM_SPLITS: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, WINDOW: tl.constexpr, LOW_PRECISION: tl.constexpr,
                   BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (prefix tiles, kv heads x head chunks, splits): new tokens of several members of a
    group over the group's shared prefix [0, prefix_len), each K/V tile loaded once for all of
    them; results go to partial slots NUM_SPLITS + split."""
    tile = tl.program_id(0)
    count = tl.load(prefix_count + tile)
    if count == 0:
        return  # an unused slot of the tile list
    kv_head = tl.program_id(1) // CHUNKS
    split = tl.program_id(2)
    r = tl.arange(0, BLOCK_M)
    j = r // HEADS
    hk = (tl.program_id(1) % CHUNKS) * HEADS + r % HEADS
    row_ok = (j < BLOCK_Q) & (j < count) & (hk < REP)
    token = tl.load(group_tokens + tl.load(prefix_start + tile) + j, mask=row_ok, other=0)
    head = kv_head * REP + hk
    q_pos = tl.where(row_ok, tl.load(positions + token, mask=row_ok, other=0), -1)
    qs = _load_queries(q, token, head, row_ok, stride_qt, stride_qh, head_dim, LOW_PRECISION, BLOCK_D)
    lo, hi = _key_range(0, tl.load(prefix_len + tile), split, q_pos, row_ok, NUM_SPLITS, WINDOW, BLOCK_N)
    table = block_tables + tl.load(prefix_leader + tile) * stride_bt
    m, l, acc = _attend(qs, q_pos, table, k_cache + kv_head * stride_ch, v_cache + kv_head * stride_ch, lo, hi,
                        stride_cb, stride_cs, head_dim, qk_scale, BLOCK_SIZE, WINDOW, LOW_PRECISION, BLOCK_M,
                        BLOCK_N, BLOCK_D)
    _store_partial(part_lse, part_o, NUM_SPLITS + split, token, head, row_ok, m, l, acc, stride_ps, stride_pt,
                   head_dim, BLOCK_D)


@triton.jit
def _merge_kernel(out, part_lse, part_o, tile_seq, tile_q0, cu_seqlens, context_lens, own_start, stride_ot,
                  stride_oh, stride_ps, stride_pt, head_dim, REP: tl.constexpr, HEADS: tl.constexpr,
                  CHUNKS: tl.constexpr, NUM_SPLITS: tl.constexpr, PARTS: tl.constexpr, BLOCK_Q: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (attention tiles, kv heads x head chunks): each row's partials (own splits, then
    the prefix's splits when its sequence has a shared prefix) combined by log-sum-exp."""
    tile = tl.program_id(0)
    if tl.load(tile_seq + tile) < 0:
        return  # an unused slot of the tile list
    kv_head = tl.program_id(1) // CHUNKS
    seq, _, token, head, row_ok, _ = _tile_rows(tile_seq, tile_q0, cu_seqlens, context_lens, tile,
                                                tl.program_id(1) % CHUNKS, kv_head, REP, HEADS, BLOCK_Q, BLOCK_M)
    # Rows whose sequence has a shared prefix (a block of flags: see _write_kv_kernel).
    prefix_ok = row_ok & (tl.zeros([BLOCK_M], dtype=tl.int32) + tl.load(own_start + seq) > 0)
    d = tl.arange(0, BLOCK_D)
    o_mask = row_ok[:, None] & (d[None, :] < head_dim)
    row = (token * stride_pt + head).to(tl.int64)  # (s * stride_ps + row) * head_dim may pass 2**31
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in tl.static_range(PARTS):
        ok = row_ok if s < NUM_SPLITS else prefix_ok  # slots past NUM_SPLITS: the prefix's
        top = tl.maximum(top, tl.load(part_lse + s * stride_ps + row, mask=ok, other=float("-inf")))
    top = tl.where(top == float("-inf"), 0.0, top)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for s in tl.static_range(PARTS):
        ok = row_ok if s < NUM_SPLITS else prefix_ok
        w = tl.exp2(tl.load(part_lse + s * stride_ps + row, mask=ok, other=float("-inf")) - top)
        o = tl.load(part_o + (s * stride_ps + row)[:, None] * head_dim + d[None, :], mask=ok[:, None] & o_mask,
                    other=0.0)
        total += w
        acc += w[:, None] * o
    acc = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(out + token[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
             acc.to(out.dtype.element_ty), mask=o_mask)


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v [T, kv_heads, d] into their cache slots; rows with slot -1 are skipped."""
    k, v = _last_dim_contiguous(k), _last_dim_contiguous(v)
    tokens, kv_heads, head_dim = k.shape
    if tokens == 0:
        return
    block_h = triton.next_power_of_2(kv_heads)
    block_d = triton.next_power_of_2(head_dim)
    block_t = max(1, WRITE_ROWS * 128 // max(128, block_d) // block_h)  # a tile of at most WRITE_ROWS x 128
    _write_kv_kernel[(triton.cdiv(tokens, block_t),)](
        k, v, k_cache, v_cache, slot_mapping, tokens, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), kv_heads, head_dim, BLOCK_SIZE=k_cache.shape[2], BLOCK_T=block_t, BLOCK_H=block_h,
        BLOCK_D=block_d)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _heads_per_program(rep: int, query_tile: int, max_rows: int) -> tuple[int, int, int]:
    """(query heads per program, programs per kv head, rows per program): all `rep` heads of a
    kv head in one program unless that makes the tile too tall (large query tiles under MQA)."""
    heads = rep if rep * query_tile <= max_rows else max(1, max_rows // query_tile)
    # tl.dot wants every dimension >= 16 on GPUs.
    return heads, -(-rep // heads), max(16, triton.next_power_of_2(heads * query_tile))


def _warps(rows: int, block_d: int) -> int:
    """More warps for tall tiles: the float32 accumulator is rows x block_d registers."""
    return 8 if rows * block_d >= 64 * 128 else 4


def _check_layout(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if q.shape[1] % k_cache.shape[1] or q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"queries {tuple(q.shape)} do not fit the cache {tuple(k_cache.shape)}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("the K and V caches must share one layout with contiguous head_dim")


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: TritonMeta,
           sliding_window: int | None = None, key_tile: int = 64, max_rows: int = 128) -> torch.Tensor:
    """Attention of q [T, heads, d] over the paged cache as described by `meta` (the new K/V
    already written). Returns [T, heads, d] in q's dtype; rows of no sequence are zero.

    Unless the launch is direct, programs write float32 partials, slot s of [parts, T, heads]:
    slots [0, splits) the own-key splits, [splits, 2 * splits) the shared prefix's splits."""
    q = _last_dim_contiguous(q)
    _check_layout(q, k_cache, v_cache)
    tokens, num_heads, head_dim = q.shape
    _, kv_heads, block_size, _ = k_cache.shape
    launch = meta.launch
    out = torch.zeros((tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)  # padding rows stay finite
    if tokens == 0:
        return out
    rep, splits = num_heads // kv_heads, launch.num_splits
    parts = splits * (2 if launch.cascade else 1)
    part_lse, part_o = out, out  # not read by a direct launch
    if not launch.direct:
        part_lse = torch.empty((parts, tokens, num_heads), dtype=torch.float32, device=q.device)
        part_o = torch.empty((parts, tokens, num_heads, head_dim), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))  # tl.dot: >= 16 on GPUs (lanes past head_dim masked)
    # bf16/fp16 tiles go to tl.dot as they are (tensor cores); float32, and everything under
    # the interpreter, in IEEE float32.
    low_precision = q.is_cuda and q.dtype != torch.float32 and k_cache.dtype == q.dtype
    common = {"BLOCK_SIZE": block_size, "WINDOW": sliding_window or 0, "LOW_PRECISION": low_precision,
              "BLOCK_N": key_tile, "BLOCK_D": block_d}
    cache_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2))
    part_strides = (tokens * num_heads, num_heads)
    qk_scale = head_dim ** -0.5 * LOG2E

    heads, chunks, rows = _heads_per_program(rep, launch.query_tile, max_rows)
    tile_grid = (meta.tile_seq.shape[0], kv_heads * chunks)
    _own_kernel[(*tile_grid, splits)](
        q, k_cache, v_cache, out, part_lse, part_o, meta.tile_seq, meta.tile_q0, meta.cu_seqlens,
        meta.context_lens, meta.own_start, meta.block_tables, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), meta.block_tables.stride(0), *cache_strides, *part_strides, head_dim, qk_scale,
        REP=rep, HEADS=heads, CHUNKS=chunks, NUM_SPLITS=splits, DIRECT=launch.direct, BLOCK_Q=launch.query_tile,
        BLOCK_M=rows, num_warps=_warps(rows, block_d), **common)
    if launch.cascade:
        p_heads, p_chunks, p_rows = _heads_per_program(rep, launch.prefix_tile, max_rows)
        _prefix_kernel[(meta.prefix_len.shape[0], kv_heads * p_chunks, splits)](
            q, k_cache, v_cache, part_lse, part_o, meta.prefix_leader, meta.prefix_len, meta.prefix_start,
            meta.prefix_count, meta.group_tokens, meta.positions, meta.block_tables, q.stride(0), q.stride(1),
            meta.block_tables.stride(0), *cache_strides, *part_strides, head_dim, qk_scale, REP=rep,
            HEADS=p_heads, CHUNKS=p_chunks, NUM_SPLITS=splits, BLOCK_Q=launch.prefix_tile, BLOCK_M=p_rows,
            num_warps=_warps(p_rows, block_d), **common)
    if not launch.direct:
        _merge_kernel[tile_grid](
            out, part_lse, part_o, meta.tile_seq, meta.tile_q0, meta.cu_seqlens, meta.context_lens,
            meta.own_start, out.stride(0), out.stride(1), *part_strides, head_dim, REP=rep, HEADS=heads,
            CHUNKS=chunks, NUM_SPLITS=splits, PARTS=parts, BLOCK_Q=launch.query_tile, BLOCK_M=rows,
            BLOCK_D=block_d, num_warps=_warps(rows, block_d))
    return out


class TritonBackend:
    """Triton kernels over the paged cache. Launch parameters left None are chosen per step
    from host-side sizes in `prepare` (the cascade from the host's first blocks);
    a CUDA-graph layer passes its bucket's fixed `LaunchConfig` to `prepare` instead."""

    name = "triton"
    host_lengths = False  # the host's lengths only size the launch: the farthest will do (AttentionBackend)

    def __init__(self, sliding_window: int | None = None, query_tile: int = 16, prefix_tile: int = 32,
                 key_tile: int = 64, max_rows: int = 128, num_splits: int | None = None,
                 cascade: bool | None = None, head_dim: int | None = None) -> None:
        """`head_dim`: the model's, where it is known; heads wider than WIDE_HEAD cap every tile
        at WIDE_TILE."""
        if key_tile < 16 or key_tile & (key_tile - 1):
            raise ValueError(f"key_tile must be a power of two >= 16, got {key_tile}")
        if head_dim is not None and triton.next_power_of_2(head_dim) > WIDE_HEAD:
            query_tile, prefix_tile = min(query_tile, WIDE_TILE), min(prefix_tile, WIDE_TILE)
            key_tile, max_rows = min(key_tile, WIDE_TILE), min(max_rows, WIDE_TILE)
        self.sliding_window = sliding_window
        self.query_tile, self.prefix_tile, self.key_tile, self.max_rows = query_tile, prefix_tile, key_tile, max_rows
        self.num_splits, self.cascade = num_splits, cascade

    def prepare(self, batch: StepBatch, launch: LaunchConfig | None = None) -> TritonMeta:
        cascade_possible = self.cascade is not False if launch is None else launch.cascade
        groups = None
        if cascade_possible:
            groups = triton_meta.shared_groups(batch.block_tables, batch.context_lens_t,
                                               batch.cu_seqlens_q.diff(), batch.block_size)
        return triton_meta.build(batch, launch or self.launch_for(batch, groups), groups)

    def launch_for(self, batch: StepBatch, groups: triton_meta.Groups | None) -> LaunchConfig:
        """The launch parameters this backend picks for a step, from the host's sizes and tables
        only: reading the groups back would wait for the step before it (a step queued ahead is
        launched while that one runs)."""
        longest_query = max(batch.query_lens, default=1) or 1
        query_tile = min(triton.next_power_of_2(longest_query), self.query_tile)
        splits = self.num_splits or _splits_for(batch, query_tile)
        cascade = self.cascade
        if cascade is None:
            cascade = groups is not None and _may_share(batch)
        return LaunchConfig(query_tile, self.prefix_tile, splits, bool(cascade))

    def forward(self, q, k, v, k_cache, v_cache, batch: StepBatch, meta: TritonMeta) -> torch.Tensor:
        write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return attend(q, k_cache, v_cache, meta, self.sliding_window, self.key_tile, self.max_rows)


# Split-K heuristic: enough programs per kv head to fill a GPU when few query tiles are
# active, no split shorter than SPLIT_MIN_KEYS keys, and partials of bounded size (a long
# prefill has tiles enough). Not tuned on hardware yet.
SPLIT_TARGET_PROGRAMS = 64
SPLIT_MIN_KEYS = 256
SPLIT_MAX = 16
SPLIT_MAX_ROWS = 4096  # new tokens x splits


def _may_share(batch: StepBatch) -> bool:
    """Whether shared_groups finds a prefix: two sequences with new tokens and keys in the cache
    that begin with one block (from the host's first blocks; where the host has none, whether
    two sequences could, as a CUDA graph's bucket decides it)."""
    if batch.first_blocks is None:
        return batch.num_seqs >= 2
    active = [f for f, q, c in zip(batch.first_blocks.tolist(), batch.query_lens, batch.context_lens) if q and c]
    return len(set(active)) < len(active)


def _splits_for(batch: StepBatch, query_tile: int) -> int:
    tiles = sum(-(-n // query_tile) for n in batch.query_lens) or 1
    longest = max(batch.context_lens, default=0)
    by_rows = SPLIT_MAX_ROWS // max(batch.num_tokens, 1)
    return max(1, min(SPLIT_MAX, SPLIT_TARGET_PROGRAMS // tiles, longest // SPLIT_MIN_KEYS, by_rows))
