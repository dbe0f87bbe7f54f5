"""The decoder layers of a step in one C call (engine/kernels `decoder_stack`).

A decode or verify step on a CPU runs ~15 small ops per layer; at batch 1 the Python and
PyTorch dispatch between them cost twice the arithmetic. `CpuDecoderStack` hands the whole
stack to the C kernel, which runs the same kernels as the modules (RMSNorm, the bf16 linear,
paged attention) and the glue between them. It takes a step only where the modules would have
used those kernels for every op: float32 on the CPU, every projection packed in bf16, every
sequence's new tokens within the attention kernel's limit (engine/attention/cpu.py
KERNEL_QUERY), at most SMALL_ROWS rows. Everything else runs the modules, the reference it is
tested against (tests/engine/models/test_cpu_stack.py). The kernel knows plain Llama only (RMSNorm,
gated SiLU, no biases, full half-split rotary, full attention): other configs never get a stack.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.attention.cpu import CpuMeta
from engine.kernels import cpu as kernels
from engine.models.linear import SMALL_ROWS
from engine.step_batch import StepBatch

if TYPE_CHECKING:
    from engine.config import ModelConfig
    from engine.models.llama import LlamaForCausalLM


class CpuDecoderStack:
    def __init__(self, model: "LlamaForCausalLM") -> None:
        cfg = model.config
        self.num_heads, self.intermediate = cfg.num_heads, cfg.intermediate_size
        self.eps = cfg.norm_eps
        self._tensors = [t for layer in model.layers for t in (
            layer.self_attn.qkv_proj.packed, layer.self_attn.o_proj.packed, layer.mlp.gate_up_proj.packed,
            layer.mlp.down_proj.packed, layer.input_layernorm.weight.detach(),
            layer.post_attention_layernorm.weight.detach())]  # held here, so the pointers below stay valid
        self.weights = torch.tensor([t.data_ptr() for t in self._tensors], dtype=torch.int64)

    @classmethod
    def build(cls, model: "LlamaForCausalLM") -> "CpuDecoderStack | None":
        """The stack, where every layer can run in the kernel (else None: the modules run)."""
        if not kernels.available() or not plain_llama(model.config):
            return None
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if any(p.packed is None for p in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)):
                return None
            norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
            if any(w.dtype != torch.float32 or w.device.type != "cpu" for w in norms):
                return None
        if model.config.head_dim % 2:
            return None
        return cls(model)

    @staticmethod
    def takes(batch: StepBatch, meta: object, x: torch.Tensor) -> bool:
        return (isinstance(meta, CpuMeta) and meta.groups is not None and not meta.reference.long
                and x.dtype == torch.float32 and 0 < batch.num_tokens <= SMALL_ROWS)

    def run(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], kv_caches: torch.Tensor,
            batch: StepBatch, meta: CpuMeta) -> torch.Tensor:
        """x [T, H] after every decoder layer (updated in place); the caches get this step's K/V."""
        cos, sin = (t.reshape(t.shape[0], -1) for t in cos_sin)
        kernels.decoder_stack(x, self.intermediate, self.weights, self.eps, cos.contiguous(), sin.contiguous(),
                              kv_caches, batch.slot_mapping, batch.block_tables, meta.groups, batch.cu_seqlens_q,
                              batch.context_lens_t, self.num_heads)
        return x


def plain_llama(cfg: "ModelConfig") -> bool:
    """The only variant the kernel computes."""
    return (cfg.norm == "rms" and cfg.gated_mlp and cfg.activation == "silu" and cfg.rotary_style == "neox"
            and cfg.rotary_dim == cfg.head_dim and not cfg.parallel_residual and cfg.sliding_window is None
            and not cfg.qk_norm and not cfg.sandwich_norms and not cfg.num_experts and not cfg.norm_weight_offset
            and cfg.embed_scale == 1.0 and cfg.attention_scale is None and cfg.residual_scale == 1.0
            and not (cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias or cfg.lm_head_bias))
