"""Engine and model configuration: small frozen dataclasses, validated on creation."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "codemodel")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelConfig:
    """The Llama shape, read from a Hugging Face config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling_factor: float = 1.0  # linear rope scaling
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    @classmethod
    def from_hf_dict(cls, cfg: dict) -> "ModelConfig":
        arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
        if cfg.get("model_type", "llama") != "llama" and "Llama" not in arch:
            raise ValueError(f"unsupported model: model_type={cfg.get('model_type')!r}, architectures={arch!r}")
        heads = cfg["num_attention_heads"]
        # transformers < 5 writes rope_theta + rope_scaling; 5 writes rope_parameters.
        scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "linear" if "factor" in scaling else "default"))
        if rope_type not in ("default", "linear"):
            raise ValueError(f"unsupported rope_scaling type {rope_type!r}")
        rope_theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        eos = cfg.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling_factor=float(scaling.get("factor", 1.0)) if rope_type == "linear" else 1.0,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id", 1),
            eos_token_id=eos,
        )

    @classmethod
    def from_folder(cls, path: str) -> "ModelConfig":
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"no config.json in model folder {path!r}")
        with open(config_path) as f:
            return cls.from_hf_dict(json.load(f))


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    device: str = "auto"  # auto: cuda if available
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: from kv_cache_memory_gb
    kv_cache_memory_gb: float = 2.0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    attention_backend: str = "auto"
    num_threads: int | None = None  # CPU threads for torch and the C kernels; None leaves torch's default
    # Full KV blocks are kept by a hash of their tokens and everything before them, so a prompt
    # that starts like a cached one computes only the rest (False: every prompt in full).
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.model is None:
            object.__setattr__(self, "model", DEFAULT_MODEL)
        _check(self.dtype in ("auto", *DTYPES), f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        _check(self.block_size >= 1, "block_size must be >= 1")
        _check(self.max_num_seqs >= 1, "max_num_seqs must be >= 1")
        _check(self.max_num_batched_tokens >= self.max_num_seqs,
               "max_num_batched_tokens must be >= max_num_seqs (every running sequence needs a token per step)")
        _check(self.num_kv_blocks is None or self.num_kv_blocks >= 1, "num_kv_blocks must be >= 1")
        _check(self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return DTYPES[self.dtype]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
