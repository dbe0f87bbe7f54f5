"""Llama (CodeLlama) over the paged KV cache: fused QKV and gate/up projections."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention.base import AttentionBackend
from engine.config import ModelConfig
from engine.kernels.cpu import rms_norm
from engine.models.cpu_stack import CpuDecoderStack
from engine.models.linear import Linear
from engine.step_batch import StepBatch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.use_kernel = False  # the C kernel (engine/kernels), set by LlamaForCausalLM.pack_for_cpu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and x.dim() == 2 and x.dtype == torch.float32:  # same math as F.rms_norm
            return rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32:  # fused kernel; same math as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Embedding(nn.Module):
    """nn.Embedding without the random init: the weights always come from a checkpoint (and
    nn.Embedding's normal_ on the meta device pulls in torch._dynamo, seconds of start-up)."""

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class Rotary(nn.Module):
    """Rotary embedding in Hugging Face's half-split layout, with linear position scaling."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: float) -> None:
        super().__init__()
        # Computed on the CPU even inside a meta-device context (meta ops pull in torch._dynamo).
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
        t = torch.arange(max_positions, dtype=torch.int64, device="cpu").float() / scaling
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at the step's positions, [T, 1, head_dim]: looked up once per step."""
        return self.cos[positions].to(dtype)[:, None, :], self.sin[positions].to(dtype)[:, None, :]


def apply_rotary(cos_sin: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor,
                 k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos_sin
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size)
        self.o_proj = Linear(self.q_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], kv_cache: torch.Tensor,
                batch: StepBatch, backend: AttentionBackend, meta: Any) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(cos_sin, q, k)
        o = backend.forward(q, k, v, kv_cache[0], kv_cache[1], batch, meta)
        return self.o_proj(o.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos_sin, kv_cache, batch, backend, meta) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, kv_cache, batch, backend, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling_factor)
        self.cpu_stack: CpuDecoderStack | None = None  # set by pack_for_cpu

    @torch.inference_mode()
    def forward(self, batch: StepBatch, kv_caches: torch.Tensor, backend: AttentionBackend) -> torch.Tensor:
        """Hidden states of the rows in batch.logits_indices, after the final norm."""
        meta = backend.prepare(batch)
        x = self.embed_tokens(batch.input_ids)
        cos_sin = self.rotary.tables(batch.positions, x.dtype)
        if self.cpu_stack is not None and self.cpu_stack.takes(batch, meta, x):
            x = self.cpu_stack.run(x, cos_sin, kv_caches, batch, meta)
        else:
            for layer, kv_cache in zip(self.layers, kv_caches):
                x = layer(x, cos_sin, kv_cache, batch, backend, meta)
        return self.norm(x[batch.logits_indices])

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def pack_for_cpu(self) -> int:
        """Turns on the CPU kernels: RMSNorm, and the few-row linear kernel with its bf16 weight
        copies where they are exact (engine/models/linear.py), and the whole decoder stack in one C
        call where every layer got them (engine/models/cpu_stack.py); returns how many linear layers
        got one."""
        for norm in (m for m in self.modules() if isinstance(m, RMSNorm)):
            norm.use_kernel = self.norm.weight.device.type == "cpu" and self.norm.weight.dtype == torch.float32
        packed = sum(m.pack_for_cpu() for m in self.modules() if isinstance(m, Linear))
        self.cpu_stack = CpuDecoderStack.build(self)
        return packed

    # ---------------------------------------------------------------- loading
    _FUSED = {  # checkpoint name part -> (our name part, shard index)
        "self_attn.q_proj": ("self_attn.qkv_proj", 0),
        "self_attn.k_proj": ("self_attn.qkv_proj", 1),
        "self_attn.v_proj": ("self_attn.qkv_proj", 2),
        "mlp.gate_proj": ("mlp.gate_up_proj", 0),
        "mlp.up_proj": ("mlp.gate_up_proj", 1),
    }

    @torch.no_grad()
    def load_hf_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in tensors:
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            target, shard = name, None
            for part, (fused, index) in self._FUSED.items():
                if part in name:
                    target, shard = name.replace(part, fused), index
                    break
            if target not in params:
                raise ValueError(f"unexpected tensor {name!r} in checkpoint")
            param = params[target]
            if shard is None:
                _copy(param, tensor, name)
            else:
                _copy(param.narrow(0, self._shard_offset(target, shard), tensor.shape[0]), tensor, name)
            loaded.add(f"{target}#{shard}")
        self._check_complete(loaded)

    def _shard_offset(self, target: str, shard: int) -> int:
        cfg = self.config
        if "qkv_proj" in target:
            q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
            return (0, q, q + kv)[shard]
        return shard * cfg.intermediate_size

    def _check_complete(self, loaded: set[str]) -> None:
        expected = set()
        for name, _ in self.named_parameters():
            if name.endswith("qkv_proj.weight"):
                expected |= {f"{name}#{i}" for i in range(3)}
            elif name.endswith("gate_up_proj.weight"):
                expected |= {f"{name}#{i}" for i in range(2)}
            elif not (name == "lm_head.weight" and self.config.tie_word_embeddings):
                expected.add(f"{name}#None")
        missing = expected - loaded
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {sorted(missing)[:3]}")


def _copy(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch for {name!r}: checkpoint {tuple(src.shape)}, model {tuple(dst.shape)}")
    dst.copy_(src.to(dst.dtype))
