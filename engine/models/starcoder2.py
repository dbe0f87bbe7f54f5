"""StarCoder2 over the paged KV cache: the shared decoder with LayerNorm, a plain GELU MLP, biases
and a sliding window (all from the config); here, its checkpoint names."""
from __future__ import annotations

from engine.models.decoder import DecoderForCausalLM


class Starcoder2ForCausalLM(DecoderForCausalLM):
    _RENAMES = (
        ("self_attn.q_proj", "self_attn.qkv_proj", 0),
        ("self_attn.k_proj", "self_attn.qkv_proj", 1),
        ("self_attn.v_proj", "self_attn.qkv_proj", 2),
        ("mlp.c_fc", "mlp.fc_in", None),
        ("mlp.c_proj", "mlp.fc_out", None),
    )
