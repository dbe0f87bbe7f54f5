"""A Triton kernel for the sampler's race over each row's likeliest tokens on a GPU: after the top-k
of the temperature-scaled logits, one kernel does what race_candidates (engine/sampler.py) does in
dozens of PyTorch kernels (benchmarks/device_ops.py counts them): top-k, top-p and min-p over the
candidates, whether they cover what the row's filters keep, the race's noise and scores, and the
winner.

Its reference is race_candidates, which it equals where the arithmetic is the same: float32 where
the reference is float32 (exp and log from libdevice on a GPU, the functions PyTorch's CUDA exp and
log call; IEEE division), float64 sums for top-p. The sums' order differs (a scan, not a sequential
cumsum; the whole row's weight summed in blocks), so a top-p boundary can move when a token's
weight from above lands within a float64 rounding of top_p of the total. Runs on CPU tensors under
TRITON_INTERPRET=1 (the tests); engine/fast_paths.py checks it on the device before the sampler uses it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from engine.kernels.triton_noise import _mix32

_VOCAB_BLOCK = 1024  # logits per iteration of the whole row's weight


@triton.jit
def _max_f64(a, b):
    return tl.maximum(a, b)


@triton.jit
def _exp(x, LIBDEVICE: tl.constexpr):
    # tl.exp is the GPU's approximate exp2; the interpreter has no libdevice (numpy's exp either way).
    if LIBDEVICE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _log(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def _race_kernel(x, vals, ids, top_k, top_p, log_min_p, seeds, tokens, covered, vocab, stride_x, stride_v,
                 COUNT: tl.constexpr, ANY_MIN_P: tl.constexpr, LIBDEVICE: tl.constexpr,
                 VOCAB_BLOCK: tl.constexpr):
    """Grid (rows,): tokens[row] and covered[row] as race_candidates gives them, from x (the scaled
    logits, [rows, vocab]) and their top COUNT (vals descending, ids)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, COUNT)
    v = tl.load(vals + row * stride_v + cols)
    prev = tl.load(vals + row * stride_v + cols - 1, mask=cols > 0, other=float("inf"))
    idx = tl.load(ids + row * stride_v + cols)
    k = tl.load(top_k + row)
    p = tl.load(top_p + row)
    first = tl.sum(tl.where(cols == 0, v, 0.0), axis=0)  # the row's largest: never dropped by top-k
    by_k = k > 0
    kth = tl.sum(tl.where(cols == tl.minimum(tl.maximum(k, 1), COUNT) - 1, v, 0.0), axis=0)
    v = tl.where(by_k & (v < kth), float("-inf"), v)
    prev = tl.where(by_k & (prev < kth), float("-inf"), prev)
    w = _exp(v - first, LIBDEVICE).to(tl.float64)
    if by_k:
        total = tl.sum(w, axis=0)
    else:  # the whole row's weight
        acc = tl.zeros([VOCAB_BLOCK], dtype=tl.float64)
        for start in range(0, vocab, VOCAB_BLOCK):
            at = start + tl.arange(0, VOCAB_BLOCK)
            xs = tl.load(x + row * stride_x + at, mask=at < vocab, other=float("-inf"))
            acc += _exp(xs - first, LIBDEVICE).to(tl.float64)
        total = tl.sum(acc, axis=0)
    before = tl.cumsum(w, axis=0) - w
    # The weight of the tokens strictly better: `before` at the first of each run of equal values
    # (values descend, `before` grows: a running max of it at runs' starts).
    strictly_better = tl.associative_scan(tl.where(v != prev, before, -1.0), 0, _max_f64)
    by_p = p < 1.0
    target = p.to(tl.float64) * total
    keep = strictly_better < tl.where(by_p, target, float("inf"))  # without a top-p, every token
    last = cols == COUNT - 1
    v_last = tl.sum(tl.where(last, v, 0.0), axis=0)
    better_last = tl.sum(tl.where(last, strictly_better, 0.0), axis=0)
    cover = (by_k & (k <= COUNT) & (v_last < kth)) | ((k <= 0) & by_p & (better_last >= target))
    if ANY_MIN_P:  # the last candidate below the floor: so is every token past it
        floor = first + tl.load(log_min_p + row)
        keep = keep & (v >= floor)
        cover = cover | (v_last < floor)
    kept = tl.where(keep, v, float("-inf"))
    kept_first = tl.sum(tl.where(cols == 0, kept, 0.0), axis=0)
    seed = tl.load(seeds + row).to(tl.uint32)
    h = _mix32(_mix32(seed ^ (idx.to(tl.uint32) * 0x9E3779B1)) ^ (seed >> 7))
    u = ((h >> 9).to(tl.float32) + 0.5) * (1.0 / (1 << 23))
    weight = _exp(kept - kept_first, LIBDEVICE)
    score = tl.where(kept > float("-inf"), tl.math.div_rn(weight, -_log(u, LIBDEVICE)), 0.0)
    best = tl.max(score, axis=0)
    tl.store(tokens + row, tl.min(tl.where(score == best, idx, vocab), axis=0))  # a tie: the smallest id
    tl.store(covered + row, cover.to(tl.int8))


def race(x: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
         log_min_p: torch.Tensor | None, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """race_candidates' (tokens, covered) from the scaled logits x [n, vocab] and their top
    candidates (vals descending, ids) [n, count], count a power of two; top_k, top_p, log_min_p
    (None: no row has a min-p) and seeds per row, as RowKnobs holds them."""
    rows, count = vals.shape
    tokens = torch.empty(rows, dtype=torch.int64, device=x.device)
    covered = torch.empty(rows, dtype=torch.int8, device=x.device)
    if rows:
        x, vals, ids = x.contiguous(), vals.contiguous(), ids.contiguous()
        # Without a min-p the kernel never reads log_min_p: top_p stands in for the pointer.
        _race_kernel[(rows,)](x, vals, ids, top_k, top_p, top_p if log_min_p is None else log_min_p, seeds,
                              tokens, covered, x.shape[1], x.stride(0), vals.stride(0), COUNT=count,
                              ANY_MIN_P=log_min_p is not None, LIBDEVICE=x.device.type != "cpu",
                              VOCAB_BLOCK=_VOCAB_BLOCK)
    return tokens, covered.view(torch.bool)
