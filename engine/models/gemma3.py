"""The language model of Gemma 3's multimodal checkpoints (Gemma3ForConditionalGeneration: 4B,
12B, 27B) as a text model: their text weights sit under language_model.model. (as transformers
writes them) or model.language_model.; the vision tower and its projector are not loaded."""
from __future__ import annotations

from engine.models.llama import LlamaForCausalLM

_TEXT = ("language_model.model.", "model.language_model.")
_IMAGES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


class Gemma3TextOfMultimodal(LlamaForCausalLM):
    def checkpoint_target(self, name: str) -> tuple[str, int | None] | None:
        if name.startswith(_IMAGES):
            return None
        for prefix in _TEXT:
            if name.startswith(prefix):
                name = self._PREFIX + name[len(prefix):]
                break
        return super().checkpoint_target(name.replace("language_model.lm_head.", "lm_head.", 1))
