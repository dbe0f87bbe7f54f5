"""Triton kernels for the small per-token operations of a decoder layer on a GPU: RMSNorm, rotary
embedding (half-split layout, all of each head), SiLU(gate) * up over the fused gate-up projection,
and the residual add fused with the RMSNorm after it; one kernel each instead of the several
elementwise kernels PyTorch launches for them.

Their references are RMSNorm.forward (engine/models/norm.py), apply_rotary
(engine/models/rotary.py), GatedMLP.forward (engine/models/mlp.py) and DecoderLayer.forward
(engine/models/decoder.py); the kernels round where those round (a bf16 or fp16 result after each operation PyTorch runs in that
dtype), so that the rotary embedding and the residual sum are bit-exact, SiLU-and-mul is wherever its
exp is the reference's (on a GPU libdevice's expf, the one PyTorch's CUDA silu calls), and RMSNorm
differs only by the order of its float32 sum. Runs on CPU tensors under TRITON_INTERPRET=1 (the
tests); engine/fast_paths.py checks them on the device before a model uses them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _rms_norm_row(xr, w, cols, mask, n, eps, dtype: tl.constexpr):
    """w * (x * rsqrt(mean(x^2) + eps)) of one float32 row, in float32, the normed row rounded to
    dtype first (as RMSNorm.forward); shared so that add_rms_norm normalizes as rms_norm does."""
    rstd = tl.math.rsqrt(tl.sum(xr * xr, axis=0) / n + eps)
    normed = (xr * rstd).to(dtype).to(tl.float32)
    return tl.load(w + cols, mask=mask, other=0.0).to(tl.float32) * normed


@triton.jit
def _rms_norm_kernel(x, w, out, stride_x, stride_o, n, eps, BLOCK: tl.constexpr):
    """Grid (rows,): out = RMSNorm of each row of x, rounded to out's dtype."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    xr = tl.load(x + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    y = _rms_norm_row(xr, w, cols, mask, n, eps, out.dtype.element_ty)
    tl.store(out + row * stride_o + cols, y.to(out.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the rows of x [..., n] (x and weight in the same 16-bit dtype)."""
    rows = _rows(x)
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


@triton.jit
def _add_rms_norm_kernel(x, r, w, total, out, stride_x, stride_r, stride_t, stride_o, n, eps,
                         BLOCK: tl.constexpr):
    """Grid (rows,): total = x + r rounded to x's dtype (as PyTorch adds), out = RMSNorm of total."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    xr = tl.load(x + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rr = tl.load(r + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
    s = (xr + rr).to(total.dtype.element_ty)
    tl.store(total + row * stride_t + cols, s, mask=mask)
    y = _rms_norm_row(s.to(tl.float32), w, cols, mask, n, eps, out.dtype.element_ty)
    tl.store(out + row * stride_o + cols, y.to(out.dtype.element_ty), mask=mask)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, RMSNorm of that sum) over the rows of x [..., n] (all in one 16-bit dtype)."""
    rows, res = _rows(x), _rows(residual)
    total = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    out = torch.empty_like(total)
    n = rows.shape[1]
    if rows.shape[0]:
        _add_rms_norm_kernel[(rows.shape[0],)](rows, res, weight, total, out, rows.stride(0), res.stride(0),
                                               total.stride(0), out.stride(0), n, eps,
                                               BLOCK=triton.next_power_of_2(n))
    return total.view(x.shape), out.view(x.shape)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as rows [-1, n] whose elements are adjacent (the kernels step only between rows)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


_SILU_BLOCK = 1024  # columns per program: a decode step's few rows still spread over many programs


@triton.jit
def _silu_mul_kernel(gate_up, out, stride_g, stride_o, width, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    """Grid (rows, column blocks): out = silu(gate) * up, gate and up the halves of a row of gate_up;
    silu(gate) rounded to out's dtype before the product (as PyTorch computes them)."""
    row = tl.program_id(0).to(tl.int64)  # a long prefill's rows times 2 * width can pass 2**31
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    g = tl.load(gate_up + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gate_up + row * stride_g + width + cols, mask=mask, other=0.0).to(tl.float32)
    # PyTorch's silu is x / (1 + expf(-x)) in float32 with an IEEE division; tl.exp is the GPU's
    # approximate exp2, which would move some results across a bf16 rounding boundary. The
    # interpreter has no libdevice (and computes exp with numpy either way).
    if LIBDEVICE:
        e = libdevice.exp(-g)
    else:
        e = tl.exp(-g)
    act = tl.math.div_rn(g, 1.0 + e).to(out.dtype.element_ty).to(tl.float32)
    tl.store(out + row * stride_o + cols, (act * u).to(out.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [..., 2 * width] = [gate, up] (a 16-bit dtype): [..., width]."""
    rows = _rows(gate_up)
    width = rows.shape[1] // 2
    out = torch.empty((rows.shape[0], width), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0] and width:
        grid = (rows.shape[0], triton.cdiv(width, _SILU_BLOCK))
        _silu_mul_kernel[grid](rows, out, rows.stride(0), out.stride(0), width, BLOCK=_SILU_BLOCK,
                               LIBDEVICE=gate_up.device.type != "cpu")
    return out.view(*gate_up.shape[:-1], width)


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
