"""Phi-3 / Phi-4 over the paged KV cache: Llama's layout (rotary over part of each head and a
window, from the config); its checkpoint holds q/k/v and gate/up fused already, as ours are."""
from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    _RENAMES = ()
