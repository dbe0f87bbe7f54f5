"""The decoders' dense MLPs: gated (Llama, Qwen, Mistral, Gemma, Phi-3, Granite; a Qwen2-MoE
shared expert) and plain (StarCoder 1 and 2, CodeGen)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models.linear import Linear

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class GatedMLP(nn.Module):
    """down(act(gate) * up), gate and up fused in one projection (Llama, Qwen2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = _ACTIVATIONS[cfg.activation]
        # The Triton SiLU-and-mul kernel over the fused projection (16-bit rows on a GPU), set by the
        # model's use_triton_kernels for the "silu" activation; the code below is its reference.
        self.act_mul: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.act_mul is not None and gate_up.dtype != torch.float32:
            return self.down_proj(self.act_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class MLP(nn.Module):
    """fc_out(act(fc_in(x))) (StarCoder 1 and 2, CodeGen)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc_in = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.fc_out = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))
