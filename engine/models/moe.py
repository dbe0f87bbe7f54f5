"""A mixture-of-experts MLP (Qwen3-MoE, Qwen2-MoE, DeepSeek-V2): each token goes through
`experts_per_token` of `num_experts` SwiGLU experts, chosen by a router's softmax and weighted by
it (renormalized over the chosen ones, and scaled, where the config says so), plus a shared
expert where the config has one.

This is the reference: the experts that have tokens this step run one after another over their
tokens, which takes one read of the routing back to the host per layer (so a graph cannot capture
it: without the Triton experts, engine/fast_paths.py leaves CUDA graphs off for such models). The
experts' weights are stacked in two parameters, expert e's rows at e * rows-per-expert, each loaded
in shards (one per expert and projection) from the checkpoint's per-expert tensors.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models.linear import Linear
from engine.models.mlp import GatedMLP


class SparseMoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_experts, self.top_k, self.width = cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate_size
        self.hidden, self.renormalize, self.routed_scale = cfg.hidden_size, cfg.norm_topk_prob, cfg.routed_scale
        self.gate = Linear(cfg.hidden_size, cfg.num_experts, bias=False)  # the router
        # Expert e: gate rows then up rows at 2 * width * e; its down projection's rows at hidden * e.
        self.experts_gate_up = nn.Parameter(torch.empty(cfg.num_experts * 2 * self.width, cfg.hidden_size))
        self.experts_down = nn.Parameter(torch.empty(cfg.num_experts * cfg.hidden_size, self.width))
        # Qwen2-MoE: an expert every token goes through, weighted by a sigmoid gate of its own;
        # DeepSeek-V2: the same without the gate.
        self.shared_expert = self.shared_expert_gate = None
        if cfg.shared_expert_size:
            self.shared_expert = GatedMLP(dataclasses.replace(cfg, intermediate_size=cfg.shared_expert_size))
            if cfg.shared_expert_gated:
                self.shared_expert_gate = Linear(cfg.hidden_size, 1, bias=False)
        # The Triton experts (engine/kernels/triton_moe.py) for 16-bit rows on a GPU, set by the
        # model's use_triton_kernels: no read-back, so a graph can hold them; forward is their reference.
        self.fused: Callable[..., torch.Tensor] | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k] in x's dtype, experts [T, k]): the top k of the router's softmax (in float32)."""
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.routed_scale != 1.0:
            weights = weights * self.routed_scale
        return weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._routed(x)
        if self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        elif self.shared_expert is not None:
            out = out + self.shared_expert(x)
        return out

    def _routed(self, x: torch.Tensor) -> torch.Tensor:
        """What the chosen experts give (the Triton kernels where set, else one expert at a time)."""
        weights, experts = self.route(x)
        gate_up = self.experts_gate_up.view(self.num_experts, 2 * self.width, self.hidden)
        down = self.experts_down.view(self.num_experts, self.hidden, self.width)
        if self.fused is not None and x.dtype != torch.float32:
            return self.fused(x, weights, experts, gate_up, down)
        out = torch.zeros_like(x)
        for e in experts.unique().tolist():  # the one read-back: which experts have tokens
            token, slot = (experts == e).nonzero(as_tuple=True)
            gate, up = F.linear(x[token], gate_up[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, down[e])
            out.index_add_(0, token, y * weights[token, slot, None])
        return out
