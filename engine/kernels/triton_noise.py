"""A Triton kernel for the sampler's race noise on a GPU: the uniform float32 hash of (row seed,
token id) in one kernel instead of the few dozen elementwise kernels PyTorch launches for its
32-bit mixing.

Its reference is uniform_hash (engine/sampler.py), which it equals bit for bit: the hash runs in
uint32, whose products wrap modulo 2**32 and whose right shifts are logical, as the reference's
_mul32 and _mix32 compute in int64. Runs on CPU tensors under TRITON_INTERPRET=1 (the tests);
engine/fast_paths.py checks it on the device before the sampler uses it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024  # columns per program: the candidates of a row in one, a vocabulary in many


@triton.jit
def _mix32(x):
    """The reference's _mix32 on uint32 values."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _uniform_hash_kernel(seeds, ids, out, width, HAS_IDS: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (rows, column blocks): out[row, j] = the uniform noise of (seeds[row], token id), the
    id ids[row, j] when HAS_IDS (rows of `width` adjacent ids), else j itself."""
    row = tl.program_id(0).to(tl.int64)  # many rows of a large vocabulary can pass 2**31 elements
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    seed = tl.load(seeds + row).to(tl.uint32)  # below 2**32: the cast keeps every bit
    if HAS_IDS:
        token = tl.load(ids + row * width + cols, mask=mask, other=0).to(tl.uint32)
    else:
        token = cols.to(tl.uint32)
    h = _mix32(_mix32(seed ^ (token * 0x9E3779B1)) ^ (seed >> 7))
    # 23 bits, so that k + 0.5 is exact in float32, as the reference computes it.
    u = ((h >> 9).to(tl.float32) + 0.5) * (1.0 / (1 << 23))
    tl.store(out + row * width + cols, u, mask=mask)


def uniform_hash(seeds: torch.Tensor, token_ids: torch.Tensor | None, width: int) -> torch.Tensor:
    """The noise of each row's seed with its token ids: seeds [n] int64 below 2**32, token_ids
    [n, m] int64 below 2**31, or None for the ids 0..width-1 in every row. float32 [n, m] (or
    [n, width]), equal to engine.sampler.uniform_hash(seeds[:, None], token_ids)."""
    ids = None if token_ids is None else token_ids.contiguous()
    width = width if ids is None else ids.shape[1]
    seeds = seeds.contiguous()
    out = torch.empty((seeds.shape[0], width), dtype=torch.float32, device=seeds.device)
    if seeds.shape[0] and width:
        grid = (seeds.shape[0], triton.cdiv(width, _BLOCK))
        # Without ids the kernel never reads its ids argument: the seeds stand in for the pointer.
        _uniform_hash_kernel[grid](seeds, seeds if ids is None else ids, out, width,
                                   HAS_IDS=ids is not None, BLOCK=_BLOCK)
    return out
