"""A mixture-of-experts MLP on a GPU in three kernels and no read-back, so a CUDA graph can hold it:
the routed (token, slot) pairs are grouped by expert into tiles of BLOCK_M rows (`align`, torch
ops of fixed shapes), one grouped matrix product runs each tile through its expert's gate-up
projection, the SiLU-and-mul kernel of engine/kernels/triton_fused.py follows, and a second grouped
product runs the down projection and scales each row by its routing weight; the k rows of a token
are summed last.

The reference is SparseMoE.forward (engine/models/moe.py), whose routing (`route`) this reuses.
Runs on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from engine.kernels import triton_fused

BLOCK_M = 16  # routed rows per tile: tl.dot's smallest on a GPU


class Alignment(NamedTuple):
    """The routed rows grouped by expert, each expert's padded to a multiple of BLOCK_M."""

    rows: torch.Tensor  # [capacity] int32: a routed row (token * k + slot) per place; pairs (padding) where none
    tile_expert: torch.Tensor  # [capacity // BLOCK_M] int32: each tile's expert; num_experts past the last


def capacity(pairs: int, num_experts: int) -> int:
    """Places for `pairs` routed rows when every expert's group is padded to a whole tile."""
    return triton.cdiv(pairs + num_experts * (BLOCK_M - 1), BLOCK_M) * BLOCK_M


def align(experts: torch.Tensor, num_experts: int) -> Alignment:
    """Groups the routed rows of `experts` [T, k] by expert (a row keeps its place in token order
    within its expert), in fixed shapes given T: no value comes back to the host."""
    flat = experts.flatten()
    pairs, device = flat.numel(), flat.device
    counts = torch.zeros(num_experts, dtype=torch.long, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = padded.cumsum(0)
    order = torch.sort(flat, stable=True).indices  # rows by expert
    expert_of = flat[order]
    first = counts.cumsum(0) - counts  # where each expert's rows start in `order`
    place = (ends - padded)[expert_of] + torch.arange(pairs, device=device) - first[expert_of]
    size = capacity(pairs, num_experts)
    rows = torch.full((size,), pairs, dtype=torch.int32, device=device)
    rows[place] = order.to(torch.int32)
    tile_start = torch.arange(0, size, BLOCK_M, device=device)
    tile_expert = torch.searchsorted(ends, tile_start, right=True).to(torch.int32)
    return Alignment(rows, tile_expert)


@triton.jit
def _grouped_kernel(a, w, out, scale, rows, tile_expert, pairs, n, k, stride_a, stride_we, stride_wn, stride_o,
                    TOP_K: tl.constexpr, GATHER: tl.constexpr, SCALE: tl.constexpr, NUM_EXPERTS: tl.constexpr,
                    LOW_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """Grid (tiles, cdiv(n, BLOCK_N)): out[r] = a[r // TOP_K if GATHER else r] @ w[e]^T for the routed
    rows r of a tile of expert e, times scale[r] where SCALE; w [E, n, k] with rows of k contiguous."""
    tile = tl.program_id(0)
    e = tl.load(tile_expert + tile)
    if e >= NUM_EXPERTS:
        return  # past the last expert's tiles
    r = tl.load(rows + tile * BLOCK_M + tl.arange(0, BLOCK_M))
    ok = r < pairs
    src = r // TOP_K if GATHER else r
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(a + src[:, None].to(tl.int64) * stride_a + kk[None, :], mask=ok[:, None] & (kk[None, :] < k),
                    other=0.0)
        wt = tl.load(w + e.to(tl.int64) * stride_we + cols[None, :] * stride_wn + kk[:, None],
                     mask=(cols[None, :] < n) & (kk[:, None] < k), other=0.0)
        if LOW_PRECISION:  # 16-bit tiles to the tensor cores as they are
            acc += tl.dot(x, wt)
        else:
            acc += tl.dot(x.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
    if SCALE:
        acc *= tl.load(scale + r, mask=ok, other=0.0).to(tl.float32)[:, None]
    tl.store(out + r[:, None].to(tl.int64) * stride_o + cols[None, :], acc.to(out.dtype.element_ty),
             mask=ok[:, None] & (cols[None, :] < n))


def _grouped(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, aligned: Alignment, top_k: int,
             gather: bool, scale: torch.Tensor | None) -> None:
    experts, n, k = w.shape
    # tl.dot wants every dimension >= 16 on GPUs (the interpreter takes any; lanes past n and k are masked).
    block_n = max(16, min(64, triton.next_power_of_2(n)))
    block_k = max(16, min(64, triton.next_power_of_2(k)))
    grid = (aligned.tile_expert.shape[0], triton.cdiv(n, block_n))
    _grouped_kernel[grid](a, w, out, scale if scale is not None else out, aligned.rows, aligned.tile_expert,
                          out.shape[0], n, k, a.stride(0), w.stride(0), w.stride(1), out.stride(0), TOP_K=top_k,
                          GATHER=gather, SCALE=scale is not None, NUM_EXPERTS=experts,
                          LOW_PRECISION=a.is_cuda and a.dtype != torch.float32, BLOCK_M=BLOCK_M, BLOCK_N=block_n,
                          BLOCK_K=block_k)


def moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
        down: torch.Tensor) -> torch.Tensor:
    """sum over a token's k experts e of weights[t, j] * down[e] @ silu-and-mul(gate_up[e] @ x[t]):
    x [T, H]; weights, experts [T, k] (SparseMoE.route); gate_up [E, 2I, H]; down [E, H, I]."""
    tokens, top_k = experts.shape
    pairs = tokens * top_k
    if pairs == 0:
        return torch.zeros_like(x)
    x = x if x.stride(-1) == 1 else x.contiguous()
    aligned = align(experts, gate_up.shape[0])
    hidden = torch.empty((pairs, gate_up.shape[1]), dtype=x.dtype, device=x.device)
    _grouped(x, gate_up, hidden, aligned, top_k, gather=True, scale=None)
    act = triton_fused.silu_mul(hidden)
    out = torch.empty((pairs, down.shape[1]), dtype=x.dtype, device=x.device)
    _grouped(act, down, out, aligned, top_k, gather=False, scale=weights.flatten().contiguous())
    return out.view(tokens, top_k, -1).sum(dim=1)
