"""DeepSeek-V2 (DeepSeek-Coder-V2-Lite) over the paged KV cache: latent attention
(engine/models/mla.py) and mixture-of-experts MLPs; here, where its checkpoint's tensors go."""
from __future__ import annotations

from engine.models.qwen3_moe import Qwen3MoeForCausalLM


class DeepseekV2ForCausalLM(Qwen3MoeForCausalLM):
    """DeepSeek-V2 / DeepSeek-Coder-V2: the latent attention's projections keep their checkpoint
    names (engine/models/mla.py); the experts as Qwen3-MoE's; the shared experts one gated MLP of
    their summed width, with no gate of their own; dense layers as Llama's."""

    _RENAMES = (("mlp.gate_proj", "mlp.gate_up_proj", 0), ("mlp.up_proj", "mlp.gate_up_proj", 1),
                ("shared_experts.gate_proj", "shared_expert.gate_up_proj", 0),
                ("shared_experts.up_proj", "shared_expert.gate_up_proj", 1),
                ("shared_experts.down_proj", "shared_expert.down_proj", None))
