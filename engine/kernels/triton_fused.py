"""Triton kernels for the small per-token operations of a decoder layer on a GPU: RMSNorm and
rotary embedding (half-split layout, all of each head), one kernel each instead of the several
elementwise kernels PyTorch launches for them.

Their references are RMSNorm.forward (engine/models/norm.py) and apply_rotary
(engine/models/rotary.py); both kernels round where those round (a bf16 or fp16 result after each
operation PyTorch runs in that dtype), so that the rotary embedding is bit-exact and RMSNorm
differs only by the order of its float32 sum. Runs on CPU tensors under TRITON_INTERPRET=1 (the
tests); engine/fast_paths.py checks both on the device before a model uses them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x, w, out, stride_x, stride_o, n, eps, BLOCK: tl.constexpr):
    """Grid (rows,): y = w * (x * rsqrt(mean(x^2) + eps)) in float32, rounded to x's dtype first."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    xr = tl.load(x + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(xr * xr, axis=0) / n + eps)
    normed = (xr * rstd).to(out.dtype.element_ty).to(tl.float32)
    wr = tl.load(w + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + row * stride_o + cols, (wr * normed).to(out.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the rows of x [..., n] (x and weight in the same 16-bit dtype)."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    n = rows.shape[1]
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), n, eps,
                                           BLOCK=triton.next_power_of_2(n))
    return out.view(x.shape)


@triton.jit
def _rope_kernel(x, cos, sin, stride_xt, stride_xh, stride_ct, heads, HALF: tl.constexpr, ROUND: tl.constexpr):
    """Grid (tokens, heads), in place: x = x * cos + rotate_half(x) * sin, each product and the sum
    rounded to x's dtype when ROUND (as PyTorch computes them in a 16-bit dtype)."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, HALF)
    base = x + t * stride_xt + h * stride_xh
    x1 = tl.load(base + d).to(tl.float32)
    x2 = tl.load(base + HALF + d).to(tl.float32)
    c1 = tl.load(cos + t * stride_ct + d).to(tl.float32)
    c2 = tl.load(cos + t * stride_ct + HALF + d).to(tl.float32)
    s1 = tl.load(sin + t * stride_ct + d).to(tl.float32)
    s2 = tl.load(sin + t * stride_ct + HALF + d).to(tl.float32)
    a1, b1 = x1 * c1, -x2 * s1
    a2, b2 = x2 * c2, x1 * s2
    if ROUND:
        dtype = x.dtype.element_ty
        a1, b1 = a1.to(dtype).to(tl.float32), b1.to(dtype).to(tl.float32)
        a2, b2 = a2.to(dtype).to(tl.float32), b2.to(dtype).to(tl.float32)
    tl.store(base + d, (a1 + b1).to(x.dtype.element_ty))
    tl.store(base + HALF + d, (a2 + b2).to(x.dtype.element_ty))


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [T, heads, d] in place (its rows may be strided views of a fused projection)
    by cos and sin [T, 1, d] in x's dtype; d a power of two. Returns x."""
    tokens, heads, dim = x.shape
    if tokens and heads:
        _rope_kernel[(tokens, heads)](x, cos, sin, x.stride(0), x.stride(1), cos.stride(0), heads,
                                      HALF=dim // 2, ROUND=x.dtype != torch.float32)
    return x


def supports_rope(head_dim: int, rotary_dim: int, style: str) -> bool:
    """Whether rope_ computes a layer's rotary embedding: half-split, the whole head, a power of two."""
    return style == "neox" and rotary_dim == head_dim and head_dim & (head_dim - 1) == 0 and head_dim >= 2
