"""Rotary position embedding: Hugging Face's half-split ("neox") layout or GPT-J's interleaved
pairs ("gptj"), on all of each head or its first `rotary_dim` dims, its frequencies stretched for
long contexts as the config says (linear, Llama 3.1's, YaRN, Phi-3's longrope within its
pretraining context: engine.config.RopeScaling)."""
from __future__ import annotations

import math

import torch
from torch import nn

from engine.config import ModelConfig, RopeScaling


class Rotary(nn.Module):
    def __init__(self, dim: int, max_positions: int, theta: float, scaling: RopeScaling = RopeScaling(),
                 style: str = "neox") -> None:
        super().__init__()
        # Computed on the CPU even inside a meta-device context (meta ops pull in torch._dynamo).
        inv_freq = frequencies(dim, theta, scaling)
        t = torch.arange(max_positions, dtype=torch.int64, device="cpu").float()
        if scaling.kind == "linear":
            t = t / scaling.factor
        freqs = torch.outer(t, inv_freq)
        # Each frequency sits where the dims it rotates sit: both halves (neox) or both of a pair (gptj).
        emb = torch.cat((freqs, freqs), dim=-1) if style == "neox" else freqs.repeat_interleave(2, dim=-1)
        self.register_buffer("cos", emb.cos() * scaling.attention_factor, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling.attention_factor, persistent=False)

    @classmethod
    def for_config(cls, cfg: ModelConfig) -> "Rotary":
        return cls(cfg.rotary_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, cfg.rotary_style)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at the step's positions, [T, 1, dim]: looked up once per step."""
        return self.cos[positions].to(dtype)[:, None, :], self.sin[positions].to(dtype)[:, None, :]


def frequencies(dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """The rotation rate of each pair of dims (float32 [dim / 2]), stretched as `scaling` says
    (linear scaling divides the positions instead, in Rotary)."""
    powers = theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim)
    if scaling.kind == "longrope":
        factors = scaling.short_factor
        if len(factors) != dim // 2:
            raise ValueError(f"rope scaling longrope: {len(factors)} factors for {dim // 2} rotated pairs of dims")
        return 1.0 / (torch.tensor(factors, dtype=torch.float32, device="cpu") * powers)
    base = 1.0 / powers
    if scaling.kind == "llama3":
        return _llama3(base, scaling)
    if scaling.kind == "yarn":
        return _yarn(base, dim, theta, scaling)
    return base


def _llama3(base: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Wavelengths past the pretraining context over low_freq_factor are divided by factor, those
    below it over high_freq_factor kept, and those between blended linearly in context / wavelength."""
    wavelen = 2 * math.pi / base
    slow = s.original_max_positions / s.low_freq_factor
    fast = s.original_max_positions / s.high_freq_factor
    divided = torch.where(wavelen > slow, base / s.factor, base)
    blend = (s.original_max_positions / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - blend) * divided / s.factor + blend * divided
    between = (wavelen >= fast) & (wavelen <= slow)
    return torch.where(between, blended, divided)


def _yarn(base: torch.Tensor, dim: int, theta: float, s: RopeScaling) -> torch.Tensor:
    """Dims that turn fewer than beta_slow times over the pretraining context are divided by
    factor, those that turn more than beta_fast times kept, with a linear ramp over the dims between."""
    def dim_turning(turns: float) -> float:  # the dim that turns `turns` times over the context
        return dim * math.log(s.original_max_positions / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_turning(s.beta_fast), dim_turning(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a ramp of no width would divide by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    kept = 1 - ramp
    return base / s.factor * (1 - kept) + base * kept


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
