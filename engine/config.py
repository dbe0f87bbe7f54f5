"""Engine and model configuration: small frozen dataclasses, validated on creation."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported by the methods that need it, not here: the command line reads these names and
# EngineConfig's defaults for its --help without loading torch (seconds of a start).
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "codemodel")

DTYPES = ("float32", "float16", "bfloat16")  # EngineConfig.dtype, besides "auto": torch's names
GRAPH_CAPTURE = ("start-up", "first-use")  # EngineConfig.cuda_graph_capture
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")  # EngineConfig.attention_backend
DEVICE = re.compile(r"auto|(cpu|cuda)(:\d+)?")  # EngineConfig.device
OVERLAP = ("auto", "on", "off")  # EngineConfig.overlap_steps


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class RopeScaling:
    """How the rotary embedding's frequencies are stretched for contexts past the pretraining
    length: "default" (none), "linear" (positions divided by factor), "llama3" (Llama 3.1's: low
    frequencies divided by factor, high ones kept, a smooth blend between), "yarn" (YaRN: a ramp
    between divided and kept frequencies over the dims) or "longrope" (Phi-3's: each frequency
    divided by its own short factor; the model's context is then its pretraining context, see
    engine/models/hf_config.py). yarn and longrope scale cos and sin by attention_factor."""

    kind: str = "default"
    factor: float = 1.0
    original_max_positions: int = 0  # the pretraining context (llama3, yarn, longrope)
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn: rotations past which dims are kept
    beta_slow: float = 1.0  # yarn: rotations below which dims are divided
    truncate: bool = True  # yarn: the ramp's ends rounded to whole dims
    attention_factor: float = 1.0  # yarn, longrope: cos and sin scaled by it
    short_factor: tuple[float, ...] = ()  # longrope: one per rotated pair of dims

    def __post_init__(self) -> None:
        _check(self.kind in ("default", "linear", "llama3", "yarn", "longrope"),
               f"rope scaling must be default, linear, llama3, yarn or longrope, got {self.kind!r}")
        _check(self.factor > 0 and self.attention_factor > 0, "rope scaling: factor and attention_factor must be > 0")
        _check(self.kind not in ("llama3", "yarn", "longrope") or self.original_max_positions >= 1,
               f"rope scaling {self.kind}: original_max_position_embeddings must be >= 1")
        _check(self.kind != "longrope" or (len(self.short_factor) >= 1 and min(self.short_factor) > 0),
               "rope scaling longrope: short_factor must be a list of factors > 0")
        _check(self.kind != "llama3" or self.high_freq_factor > self.low_freq_factor > 0,
               "rope scaling llama3: high_freq_factor must exceed low_freq_factor > 0")


@dataclass(frozen=True)
class LatentAttention:
    """DeepSeek-V2's multi-head latent attention: keys and values of every head come out of one
    normalized latent of kv_lora_rank per token (kv_b_proj), and a rotary part of qk_rope_head_dim
    shared by all heads; the KV cache keeps only those (engine/models/mla.py). Queries come from
    q_proj, or through a latent of q_lora_rank (q_a_proj, a norm, q_b_proj) where set."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None

    def __post_init__(self) -> None:
        _check(min(self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim) >= 1
               and self.qk_rope_head_dim % 2 == 0 and (self.q_lora_rank is None or self.q_lora_rank >= 1),
               "latent attention: ranks and head dims must be >= 1, the rotary head dim even")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder's shape and variant, read from a Hugging Face folder by
    engine.models.registry.read_model_config, which lists the architectures."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling = RopeScaling()
    family: str = "llama"  # the registry's name for the model class
    architecture: str = "LlamaForCausalLM"  # as config.json names it
    norm: str = "rms"  # "rms": RMSNorm; "layer": LayerNorm with bias
    activation: str = "silu"  # "silu", "gelu" or "gelu_tanh"
    gated_mlp: bool = True  # down(act(gate) * up) like Llama; else fc_out(act(fc_in))
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    rotary_dim: int | None = None  # rotated dims at the start of each head; None: all of them
    rotary_style: str = "neox"  # "neox": dim i pairs with i + rotary_dim/2; "gptj": 2i with 2i + 1
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm(x)) with one norm (CodeGen)
    qk_norm: bool = False  # an RMSNorm over each head of q and of k before the rotary embedding (Qwen3)
    # Gemma: every RMSNorm scales by (norm_weight_offset + weight), computed in float32 before the
    # cast back; token embeddings are multiplied by embed_scale (sqrt(hidden)) in their own dtype.
    norm_weight_offset: float = 0.0
    embed_scale: float = 1.0
    # Granite: attention logits scaled by attention_scale instead of 1 / sqrt(head_dim) (None), each
    # layer's attention and MLP outputs by residual_scale before their residual adds, and the
    # logits divided by logits_scale.
    attention_scale: float | None = None
    residual_scale: float = 1.0
    logits_scale: float = 1.0
    # "rope": rotary embedding of q and k; "learned": a table of absolute positions added to the
    # token embeddings, no rotary (GPTBigCode: StarCoder 1, WizardCoder, SantaCoder).
    position_embedding: str = "rope"
    # Mixture of experts (Qwen3-MoE), 0 experts: dense. Every layer not in dense_layers has an MLP
    # of num_experts SwiGLU experts of width moe_intermediate_size, experts_per_token per token.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # the chosen experts' weights renormalized to sum to 1
    dense_layers: tuple[int, ...] = ()
    shared_expert_size: int = 0  # Qwen2-MoE: a SwiGLU expert of this width every token goes through, gated
    shared_expert_gated: bool = True  # DeepSeek-V2's shared experts are not
    routed_scale: float = 1.0  # the chosen experts' weights times this (DeepSeek's routed_scaling_factor)
    latent_attention: LatentAttention | None = None  # DeepSeek-V2: num_kv_heads 1, head_dim the cached latent's
    sliding_window: int | None = None  # a query sees at most this many keys, itself included
    # With a window, the layers that see every key all the same (Gemma 3's every sixth); the
    # windowed ones may rotate with a theta of their own (local_rope_theta, no scaling).
    full_attention_layers: tuple[int, ...] = ()
    local_rope_theta: float | None = None
    # Gemma 3: each block's output normed before its residual add, and the MLP's input by a norm of its own
    sandwich_norms: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)

    def __post_init__(self) -> None:
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.head_dim)
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "max_position_embeddings")
        for name in sizes:
            _check(getattr(self, name) >= 1, f"model config: {name} must be >= 1, got {getattr(self, name)}")
        _check(self.num_heads % self.num_kv_heads == 0,
               f"model config: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        _check(self.norm in ("rms", "layer"), f"model config: norm must be rms or layer, got {self.norm!r}")
        _check(self.activation in ("silu", "gelu", "gelu_tanh"),
               f"model config: activation must be silu, gelu or gelu_tanh, got {self.activation!r}")
        _check(self.num_experts == 0 or (1 <= self.experts_per_token <= self.num_experts
                                         and self.moe_intermediate_size >= 1),
               f"model config: a mixture of {self.num_experts} experts needs 1 <= experts_per_token "
               f"(got {self.experts_per_token}) <= num_experts and moe_intermediate_size >= 1")
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))
        object.__setattr__(self, "full_attention_layers", tuple(int(i) for i in self.full_attention_layers))
        _check(not self.full_attention_layers or self.sliding_window is not None,
               "model config: full_attention_layers needs a sliding_window for the other layers")
        _check(self.position_embedding in ("rope", "learned"),
               f"model config: position_embedding must be rope or learned, got {self.position_embedding!r}")
        _check(self.rotary_style in ("neox", "gptj"),
               f"model config: rotary_style must be neox or gptj, got {self.rotary_style!r}")
        _check(0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0,
               f"model config: rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}")
        _check(self.sliding_window is None or self.sliding_window >= 1, "model config: sliding_window must be >= 1")
        _check(self.rope_theta > 0 and self.norm_eps > 0, "model config: rope_theta and norm eps must be > 0")

    @property
    def backend_window(self) -> int | None:
        """The window the step's attention backend is built with: the model's, unless only some
        layers have it (the model then runs those through a windowed reference where a context
        passes the window)."""
        return None if self.full_attention_layers else self.sliding_window

    @property
    def eos_token_id(self) -> int | None:
        """The first EOS id (what a single-EOS caller uses)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    device: str = "auto"  # auto: cuda if available
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: from kv_cache_memory_gb
    # None: on a GPU, what gpu_memory_utilization leaves once the weights and a step's activations
    # are counted; on the CPU, 2 (engine/kv_budget.py).
    kv_cache_memory_gb: float | None = None
    gpu_memory_utilization: float = 0.9  # the share of the GPU's memory the engine may hold, all told
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    attention_backend: str = "auto"
    num_threads: int | None = None  # CPU threads for torch and the C kernels; None leaves torch's default
    # Full KV blocks are kept by a hash of their tokens and everything before them, so a prompt
    # that starts like a cached one computes only the rest (False: every prompt in full).
    enable_prefix_caching: bool = True
    # Time decode and verify steps at start-up (benchmarks); otherwise step costs are learned from
    # the steps the engine runs anyway, and kept per machine and build (engine/step_cost.py).
    cost_sweep: bool = False
    # On a GPU, decode and verify steps replay captured CUDA graphs (engine/cuda_graphs.py), up to
    # this many rows (sequences plus their draft tokens) in a step.
    cuda_graphs: bool = True
    cuda_graph_max_rows: int = 512
    # When the graphs are captured: "start-up" (every bucket before the first step: no step waits
    # on a capture, what a server wants) or "first-use" (the largest and the smallest at start-up,
    # each other bucket at the first step that needs it: a job pays for the buckets it uses only).
    cuda_graph_capture: str = "first-use"
    # Whether a plain decode step is queued on the device before the host has the previous step's
    # tokens, the host then applying those while the device runs (engine/llm_engine.py): "auto"
    # on a GPU only (a CPU's forward holds the cores the host would use).
    overlap_steps: str = "auto"

    def __post_init__(self) -> None:
        if self.model is None:
            object.__setattr__(self, "model", DEFAULT_MODEL)
        _check(self.dtype in ("auto", *DTYPES), f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        _check(self.block_size >= 1, "block_size must be >= 1")
        _check(self.max_num_seqs >= 1, "max_num_seqs must be >= 1")
        _check(self.max_num_batched_tokens >= self.max_num_seqs,
               "max_num_batched_tokens must be >= max_num_seqs (every running sequence needs a token per step)")
        _check(self.num_kv_blocks is None or self.num_kv_blocks >= 1, "num_kv_blocks must be >= 1")
        _check(self.kv_cache_memory_gb is None or self.kv_cache_memory_gb > 0, "kv_cache_memory_gb must be > 0")
        _check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization must be in (0, 1]")
        _check(self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1")
        _check(self.cuda_graph_max_rows >= 1, "cuda_graph_max_rows must be >= 1")
        _check(self.cuda_graph_capture in GRAPH_CAPTURE,
               f"cuda_graph_capture must be {' or '.join(GRAPH_CAPTURE)}, got {self.cuda_graph_capture!r}")
        _check(self.overlap_steps in OVERLAP, f"overlap_steps must be auto, on or off, got {self.overlap_steps!r}")
        _check(isinstance(self.device, str) and DEVICE.fullmatch(self.device) is not None,
               f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def torch_device(self) -> torch.device:
        """The device the model runs on; raises ValueError where this machine has no such device
        (checked here, not when configured: a Ray driver configures its GPU workers from a CPU)."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
                raise ValueError(f"device {self.device}: no GPU is visible to this torch ({torch.__version__}, {build})")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ValueError(f"device {self.device}: this machine has {torch.cuda.device_count()} visible GPU(s)")
        return device

    def torch_dtype(self) -> torch.dtype:
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)
