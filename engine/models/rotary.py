"""Rotary position embedding: Hugging Face's half-split ("neox") layout or GPT-J's interleaved
pairs ("gptj"), on all of each head or its first `rotary_dim` dims, with linear position scaling."""
from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig


class Rotary(nn.Module):
    def __init__(self, dim: int, max_positions: int, theta: float, scaling: float, style: str = "neox") -> None:
        super().__init__()
        # Computed on the CPU even inside a meta-device context (meta ops pull in torch._dynamo).
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
        t = torch.arange(max_positions, dtype=torch.int64, device="cpu").float() / scaling
        freqs = torch.outer(t, inv_freq)
        # Each frequency sits where the dims it rotates sit: both halves (neox) or both of a pair (gptj).
        emb = torch.cat((freqs, freqs), dim=-1) if style == "neox" else freqs.repeat_interleave(2, dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    @classmethod
    def for_config(cls, cfg: ModelConfig) -> "Rotary":
        return cls(cfg.rotary_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling_factor,
                   cfg.rotary_style)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at the step's positions, [T, 1, dim]: looked up once per step."""
        return self.cos[positions].to(dtype)[:, None, :], self.sin[positions].to(dtype)[:, None, :]


def apply_rotary(cos_sin: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor, k: torch.Tensor,
                 style: str = "neox") -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, heads, d] and k [T, kv_heads, d] rotated by position on their first cos.shape[-1] dims."""
    dim = cos_sin[0].shape[-1]
    if dim == q.shape[-1]:
        return _rotate(cos_sin, q, style), _rotate(cos_sin, k, style)
    return _rotate_part(cos_sin, q, style, dim), _rotate_part(cos_sin, k, style, dim)


def _rotate_part(cos_sin: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, style: str, dim: int) -> torch.Tensor:
    return torch.cat((_rotate(cos_sin, x[..., :dim], style), x[..., dim:]), dim=-1)


def _rotate(cos_sin: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, style: str) -> torch.Tensor:
    cos, sin = cos_sin
    return x * cos + (_rotate_half(x) if style == "neox" else _rotate_pairs(x)) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
