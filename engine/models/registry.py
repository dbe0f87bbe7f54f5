"""Which model class runs a Hugging Face checkpoint, and how its config.json is read.

A config.json is matched by its first architecture, else by its model_type; anything else is a
ValueError naming what is supported.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from engine.config import ModelConfig
from engine.loader import hf_token_ids, read_folder_json
from engine.models import hf_config
from engine.models.codegen import CodeGenForCausalLM
from engine.models.decoder import DecoderForCausalLM
from engine.models.deepseek_v2 import DeepseekV2ForCausalLM
from engine.models.gemma3 import Gemma3TextOfMultimodal
from engine.models.glm4 import Glm4ForCausalLM
from engine.models.gpt_bigcode import GPTBigCodeForCausalLM
from engine.models.llama import LlamaForCausalLM
from engine.models.phi3 import Phi3ForCausalLM
from engine.models.qwen3_moe import Qwen2MoeForCausalLM, Qwen3MoeForCausalLM
from engine.models.starcoder2 import Starcoder2ForCausalLM


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    model_class: type[DecoderForCausalLM]
    read_config: Callable[[dict], dict[str, Any]]  # config.json -> ModelConfig fields (engine/models/hf_config.py)


FAMILIES = (
    Family("llama", ("LlamaForCausalLM",), ("llama",), LlamaForCausalLM, hf_config.llama),
    Family("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), LlamaForCausalLM, hf_config.qwen2),
    Family("qwen3", ("Qwen3ForCausalLM",), ("qwen3",), LlamaForCausalLM, hf_config.qwen3),
    Family("qwen2_moe", ("Qwen2MoeForCausalLM",), ("qwen2_moe",), Qwen2MoeForCausalLM, hf_config.qwen2_moe),
    Family("qwen3_moe", ("Qwen3MoeForCausalLM",), ("qwen3_moe",), Qwen3MoeForCausalLM, hf_config.qwen3_moe),
    Family("deepseek_v2", ("DeepseekV2ForCausalLM",), ("deepseek_v2",), DeepseekV2ForCausalLM,
           hf_config.deepseek_v2),
    Family("gemma", ("GemmaForCausalLM",), ("gemma",), LlamaForCausalLM, hf_config.gemma),
    Family("gemma3", ("Gemma3ForCausalLM",), ("gemma3_text",), LlamaForCausalLM, hf_config.gemma3),
    Family("gemma3_text_of_multimodal", ("Gemma3ForConditionalGeneration",), ("gemma3",), Gemma3TextOfMultimodal,
           hf_config.gemma3_text_of_multimodal),
    Family("phi3", ("Phi3ForCausalLM",), ("phi3",), Phi3ForCausalLM, hf_config.phi3),
    Family("granite", ("GraniteForCausalLM",), ("granite",), LlamaForCausalLM, hf_config.granite),
    Family("glm4", ("Glm4ForCausalLM",), ("glm4",), Glm4ForCausalLM, hf_config.glm4),
    Family("seed_oss", ("SeedOssForCausalLM",), ("seed_oss",), LlamaForCausalLM, hf_config.seed_oss),
    Family("mistral", ("MistralForCausalLM",), ("mistral",), LlamaForCausalLM, hf_config.mistral),
    Family("starcoder2", ("Starcoder2ForCausalLM",), ("starcoder2",), Starcoder2ForCausalLM, hf_config.starcoder2),
    Family("gpt_bigcode", ("GPTBigCodeForCausalLM",), ("gpt_bigcode",), GPTBigCodeForCausalLM,
           hf_config.gpt_bigcode),
    Family("codegen", ("CodeGenForCausalLM",), ("codegen",), CodeGenForCausalLM, hf_config.codegen),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)
SUPPORTED = ", ".join(a for f in FAMILIES for a in f.architectures)


def family_for(cfg: dict) -> Family:
    """The family of a config.json dict."""
    architectures = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    for family in FAMILIES:
        if architectures and architectures[0] in family.architectures:
            return family
    for family in FAMILIES:
        if not architectures and (model_type or "llama") in family.model_types:
            return family
    named = architectures[0] if architectures else None
    raise ValueError(f"unsupported architecture {named!r} (model_type {model_type!r}); supported: {SUPPORTED}")


def model_config(cfg: dict, generation_config: dict | None = None) -> ModelConfig:
    """The ModelConfig of a config.json dict (EOS ids also from generation_config.json); raises
    ValueError for an architecture the engine cannot run, or a config it cannot read."""
    family = family_for(cfg)
    text = cfg.get("text_config") or {}  # a multimodal checkpoint's language model (Gemma 3 4B+)
    eos = (hf_token_ids(cfg.get("eos_token_id")) + hf_token_ids(text.get("eos_token_id"))
           + hf_token_ids((generation_config or {}).get("eos_token_id")))
    bos = cfg.get("bos_token_id", text.get("bos_token_id"))
    return ModelConfig(family=family.name, architecture=(cfg.get("architectures") or [family.architectures[0]])[0],
                       bos_token_id=bos, eos_token_ids=tuple(dict.fromkeys(eos)), **family.read_config(cfg))


def read_model_config(path: str) -> ModelConfig:
    """The ModelConfig of a Hugging Face model folder."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no config.json in model folder {path!r}")
    with open(config_path) as f:
        cfg = json.load(f)
    return model_config(cfg, read_folder_json(path, "generation_config.json"))


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILY_NAMES)}")


def model_class(family: str) -> type[DecoderForCausalLM]:
    return family_named(family).model_class
