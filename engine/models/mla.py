"""Multi-head latent attention (DeepSeek-V2, DeepSeek-Coder-V2) over the paged KV cache.

Every head's key and value come out of one latent per token (kv_a_proj_with_mqa, kv_a_layernorm,
then kv_b_proj), plus a rotary part that all heads share. The cache keeps only that: one KV
head of [rotary part | latent] per token, qk_rope_head_dim + kv_lora_rank wide (576 for
DeepSeek-Coder-V2-Lite, against 16 heads x 192 + 128 expanded), in one plane that the backends
see as both the keys and the values (engine/model_runner.py). The key projection of kv_b_proj
is applied to the queries instead (q_nope . W_uk c = (W_uk^T q_nope) . c), so that attention runs
over the latents as multi-query attention through any backend, with values the same rows as the
keys; the value projection is applied to each head's attended latent afterwards. The same sums
as transformers' expanded keys and values, in another order.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.attention.base import AttentionBackend
from engine.config import ModelConfig
from engine.models.linear import Linear
from engine.models.norm import RMSNorm
from engine.models.rotary import apply_rotary
from engine.step_batch import StepBatch


class LatentAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        mla = cfg.latent_attention
        if mla is None:
            raise ValueError("LatentAttention needs a config with latent_attention")
        self.heads, self.rank = cfg.num_heads, mla.kv_lora_rank
        self.nope, self.rope, self.v_dim = mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim
        qk = self.nope + self.rope
        if mla.q_lora_rank is None:
            self.q_proj: Linear | None = Linear(cfg.hidden_size, self.heads * qk, bias=False)
        else:
            self.q_proj = None
            self.q_a_proj = Linear(cfg.hidden_size, mla.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, cfg.norm_eps)
            self.q_b_proj = Linear(mla.q_lora_rank, self.heads * qk, bias=False)
        self.kv_a_proj_with_mqa = Linear(cfg.hidden_size, self.rank + self.rope, bias=cfg.qkv_bias)
        self.kv_a_layernorm = RMSNorm(self.rank, cfg.norm_eps)
        self.kv_b_proj = Linear(self.rank, self.heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = Linear(self.heads * self.v_dim, cfg.hidden_size, bias=cfg.o_bias)
        # Backends scale by 1 / sqrt(head_dim) of what they attend over (the cached rows): the
        # model's own scale (over qk_nope + qk_rope dims, with YaRN's mscale) is given to q.
        self.q_scale = cfg.attention_scale * cfg.head_dim ** 0.5

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], kv_cache: torch.Tensor,
                batch: StepBatch, backend: AttentionBackend, meta: Any) -> torch.Tensor:
        rows = x.shape[0]
        q = self.q_proj(x) if self.q_proj is not None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(rows, self.heads, self.nope + self.rope).split([self.nope, self.rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent)
        q_pe, k_pe = apply_rotary(cos_sin, q_pe, k_pe.view(rows, 1, self.rope), "gptj")
        w_k, w_v = self.kv_b_proj.weight.view(self.heads, self.nope + self.v_dim, self.rank).split(
            [self.nope, self.v_dim], dim=1)
        q_latent = torch.einsum("thd,hdc->thc", q_nope, w_k)
        q = torch.cat((q_pe, q_latent), dim=-1) * self.q_scale
        k = torch.cat((k_pe, latent.view(rows, 1, self.rank)), dim=-1)
        o = backend.forward(q, k, k, kv_cache[0], kv_cache[1], batch, meta)
        v = torch.einsum("thc,hdc->thd", o.view(rows, self.heads, -1)[..., self.rope:], w_v)
        return self.o_proj(v.reshape(rows, self.heads * self.v_dim))
