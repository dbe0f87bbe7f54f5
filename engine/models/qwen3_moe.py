"""Qwen3-MoE (Qwen3-Coder-30B-A3B, Qwen3-30B-A3B) and Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B) over
the paged KV cache: Qwen's attention with mixture-of-experts MLPs (engine/models/moe.py); here,
where each expert's checkpoint tensors go in the stacked expert parameters."""
from __future__ import annotations

import re

from engine.models.llama import LlamaForCausalLM

_EXPERT = re.compile(r"^(layers\.\d+\.mlp)\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    def checkpoint_target(self, name: str) -> tuple[str, object] | None:
        """Expert e's gate_proj / up_proj / down_proj: a shard (projection, e) of the stacked
        experts_gate_up / experts_down."""
        found = super().checkpoint_target(name)
        match = _EXPERT.match(found[0]) if found is not None else None
        if match is None:
            return found
        mlp, expert, projection = match.groups()
        stacked = "experts_down" if projection == "down" else "experts_gate_up"
        expert = int(expert)
        if expert >= self.config.num_experts:
            return f"{mlp}.experts.{expert}", None  # not a parameter: the loader names it as unexpected
        return f"{mlp}.{stacked}", (projection, expert)

    def _shard_offset(self, target: str, shard) -> int:
        if ".shared_expert." in f".{target}":  # gate and up of the shared expert's own width
            return shard * self.config.shared_expert_size
        if not isinstance(shard, tuple):
            return super()._shard_offset(target, shard)
        projection, expert = shard
        cfg = self.config
        if projection == "down":
            return expert * cfg.hidden_size
        return (2 * expert + (projection == "up")) * cfg.moe_intermediate_size

    def _shards(self, name: str) -> tuple:
        experts = range(self.config.num_experts)
        if name.endswith(".experts_gate_up"):
            return tuple((p, e) for e in experts for p in ("gate", "up"))
        if name.endswith(".experts_down"):
            return tuple(("down", e) for e in experts)
        return super()._shards(name)


class Qwen2MoeForCausalLM(Qwen3MoeForCausalLM):
    """Qwen2-MoE: the experts as Qwen3-MoE's, and a shared expert whose gate and up go in one
    projection like a dense MLP's."""

    _RENAMES = (*Qwen3MoeForCausalLM._RENAMES,
                ("shared_expert.gate_proj", "shared_expert.gate_up_proj", 0),
                ("shared_expert.up_proj", "shared_expert.gate_up_proj", 1))
