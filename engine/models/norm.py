"""The decoders' normalizations: RMSNorm (Llama, Qwen2, Qwen3, Mistral; Gemma's scaling by 1 + weight)
and LayerNorm with bias (StarCoder 1 and 2, CodeGen)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.kernels.cpu import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        """`offset`: the norm scales by (offset + weight), in float32 before the cast (Gemma's
        1); the C and Triton kernels compute only offset 0 and are not given such a norm."""
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.offset = offset
        self.use_kernel = False  # the C kernel (engine/kernels), set by the model's pack_for_cpu
        # The Triton kernel (engine/kernels/triton_fused.py) for 16-bit rows on a GPU, set by the
        # model's use_triton_kernels; the code below is its reference.
        self.fused: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset:
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return (xf * (self.offset + self.weight.float())).to(x.dtype)
        if self.fused is not None and x.dtype != torch.float32:
            return self.fused(x, self.weight, self.eps)
        if self.use_kernel and x.dim() == 2 and x.dtype == torch.float32:  # same math as F.rms_norm
            return rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32:  # fused kernel; same math as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LayerNorm(nn.Module):
    """nn.LayerNorm without its init (the weights always come from a checkpoint)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def make_norm(cfg: ModelConfig) -> RMSNorm | LayerNorm:
    if cfg.norm == "rms":
        return RMSNorm(cfg.hidden_size, cfg.norm_eps, cfg.norm_weight_offset)
    return LayerNorm(cfg.hidden_size, cfg.norm_eps)
