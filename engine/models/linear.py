"""A linear layer whose few-row products run in a C kernel on the CPU.

Decode and verify steps multiply a handful of rows by every weight of the model, so on a CPU
they are bound by reading the weights, and PyTorch's GEMM adds a packing pass per call. For
up to SMALL_ROWS rows, `Linear` uses engine/kernels (`linear_bf16`) over a bf16 copy of its
weight, made by `pack_for_cpu` only when that copy is exact (a bf16 checkpoint, like
CodeLlama's and the embedded model's): the products are the same numbers, summed in another
order. More rows (prefill) and everything else take F.linear, the reference it is tested
against (tests/engine/kernels/test_cpu.py). The kernel is bias-free: a bias (Qwen2's q/k/v,
StarCoder2's and CodeGen's layers) is added to its output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.cpu import linear_bf16, pack_bf16

# Up to here the kernel beats F.linear on the shapes of the embedded model and of CodeLlama-7B
# (benchmarks/step_cost.py; figures in benchmarks/results/).
SMALL_ROWS = 512


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.packed: torch.Tensor | None = None  # bf16 copy for the CPU kernel, in its tiled layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed
        if packed is not None and x.dim() == 2 and x.shape[0] <= SMALL_ROWS and x.dtype == torch.float32:
            out = linear_bf16(x.contiguous(), packed, self.out_features)
            return out if self.bias is None else out.add_(self.bias)
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def pack_for_cpu(self) -> bool:
        """Makes the bf16 copy when it is exact and the kernel can take the shape."""
        w = self.weight
        self.packed = None
        if w.device.type != "cpu" or w.dtype != torch.float32 or self.in_features % 4:
            return False
        bf16 = w.to(torch.bfloat16)
        if not torch.equal(bf16.float(), w):
            return False
        self.packed = pack_bf16(bf16)
        return True

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"packed={self.packed is not None}")
