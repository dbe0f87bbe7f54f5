"""Llama (CodeLlama, DeepSeek-Coder), Qwen2 (Llama with q/k/v biases), Qwen3 (with per-head q/k
norms), Mistral (Codestral), Gemma and Granite over the paged KV cache: q/k/v and gate/up fused
into one projection each."""
from __future__ import annotations

from engine.models.cpu_stack import CpuDecoderStack
from engine.models.decoder import DecoderForCausalLM


class LlamaForCausalLM(DecoderForCausalLM):
    _RENAMES = (
        ("self_attn.q_proj", "self_attn.qkv_proj", 0),
        ("self_attn.k_proj", "self_attn.qkv_proj", 1),
        ("self_attn.v_proj", "self_attn.qkv_proj", 2),
        ("mlp.gate_proj", "mlp.gate_up_proj", 0),
        ("mlp.up_proj", "mlp.gate_up_proj", 1),
    )

    def pack_for_cpu(self) -> int:
        """The CPU kernels of every model (DecoderForCausalLM.pack_for_cpu), and the whole decoder
        stack in one C call where the config is plain Llama and every layer got them
        (engine/models/cpu_stack.py)."""
        packed = super().pack_for_cpu()
        self.cpu_stack = CpuDecoderStack.build(self)
        return packed
