"""GLM-4 (Glm4ForCausalLM: GLM-4-9B-0414, GLM-4-32B-0414, GLM-Z1) over the paged KV cache: Llama's
layer with Gemma 3's sandwich norms, named its own way. Its checkpoint holds gate and up fused
already, as ours are; q, k and v come apart, as Llama's do."""
from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class Glm4ForCausalLM(LlamaForCausalLM):
    # GLM's post_attention_layernorm is the MLP's input norm, its post_self_attn_layernorm the one
    # after attention. Renames apply in turn to the renamed name, so its post_attention_layernorm
    # moves out of the way first.
    _RENAMES = (
        ("self_attn.q_proj", "self_attn.qkv_proj", 0),
        ("self_attn.k_proj", "self_attn.qkv_proj", 1),
        ("self_attn.v_proj", "self_attn.qkv_proj", 2),
        ("post_attention_layernorm", "pre_feedforward_layernorm", None),
        ("post_self_attn_layernorm", "post_attention_layernorm", None),
        ("post_mlp_layernorm", "post_feedforward_layernorm", None),
    )
