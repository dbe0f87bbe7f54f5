"""GPTBigCode (StarCoder 1, WizardCoder, SantaCoder, Granite-20B/34B-Code) over the paged KV cache:
the shared decoder with learned absolute positions, LayerNorm, a plain GELU MLP and biases, and one
K/V head under multi-query attention (all from the config); here, its checkpoint names and the
layout of its fused c_attn."""
from __future__ import annotations

import torch

from engine.models.decoder import DecoderForCausalLM


class GPTBigCodeForCausalLM(DecoderForCausalLM):
    _PREFIX = "transformer."
    _RENAMES = (
        ("wte", "embed_tokens", None),
        ("wpe", "embed_positions", None),
        ("h", "layers", None),
        ("ln_1", "input_layernorm", None),
        ("ln_2", "post_attention_layernorm", None),
        ("attn.c_attn", "self_attn.qkv_proj", None),
        ("attn.c_proj", "self_attn.o_proj", None),
        ("mlp.c_fc", "mlp.fc_in", None),
        ("mlp.c_proj", "mlp.fc_out", None),
        ("ln_f", "norm", None),
    )

    def convert(self, target: str, tensor: torch.Tensor) -> torch.Tensor:
        """Under multi-query attention c_attn's rows are all q, then k, then v, as ours; otherwise
        they are per head: that head's q, k and v rows in turn."""
        cfg = self.config
        if cfg.num_kv_heads == 1 or ".qkv_proj." not in f".{target}":
            return tensor
        d = cfg.head_dim
        if tensor.shape[0] != 3 * cfg.num_heads * d:
            return tensor  # _copy reports the shape
        q, k, v = tensor.reshape(cfg.num_heads, 3, d, *tensor.shape[1:]).unbind(1)
        return torch.cat([part.reshape(cfg.num_heads * d, *tensor.shape[1:]) for part in (q, k, v)])
