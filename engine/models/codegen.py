"""CodeGen over the paged KV cache: the shared decoder with parallel attention and MLP from one
LayerNorm and partial GPT-J-style rotary (all from the config); here, its checkpoint names and
the layout of its fused qkv_proj."""
from __future__ import annotations

import torch

from engine.models.decoder import DecoderForCausalLM
from engine.models.hf_config import CODEGEN_MP_NUM


class CodeGenForCausalLM(DecoderForCausalLM):
    _PREFIX = "transformer."
    _RENAMES = (
        ("wte", "embed_tokens", None),
        ("h", "layers", None),
        ("ln_1", "input_layernorm", None),
        ("attn.qkv_proj", "self_attn.qkv_proj", None),
        ("attn.out_proj", "self_attn.o_proj", None),
        ("ln_f", "norm", None),
    )
    _SKIP = ("attn.causal_mask", "attn.masked_bias")  # buffers in older checkpoints

    def convert(self, target: str, tensor: torch.Tensor) -> torch.Tensor:
        """CodeGen's qkv_proj rows are, per model-parallel shard, that shard's q, v and k rows
        (in that order), the shards holding consecutive heads; ours are all q, all k, all v."""
        if not target.endswith("self_attn.qkv_proj.weight"):
            return tensor
        hidden = self.config.hidden_size
        if tensor.shape != (3 * hidden, hidden):
            return tensor  # _copy reports the shape
        q, v, k = tensor.view(CODEGEN_MP_NUM, 3, hidden // CODEGEN_MP_NUM, hidden).unbind(1)
        return torch.cat([q.reshape(hidden, hidden), k.reshape(hidden, hidden), v.reshape(hidden, hidden)])
