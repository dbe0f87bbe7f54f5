"""ModelConfig fields from each family's config.json, as transformers 4 and 5 write them.

Each reader returns the fields that describe the network; registry.model_config adds the
family, architecture and token ids. A key the network needs and the file lacks is a ValueError.
"""
from __future__ import annotations

import math
from typing import Any

from engine.config import LatentAttention, RopeScaling

# transformers' activation names -> the engine's (gelu_new and gelu_pytorch_tanh are the same tanh formula)
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def llama(cfg: dict) -> dict[str, Any]:
    """Llama, CodeLlama, DeepSeek-Coder (linear rope scaling)."""
    heads = _need(cfg, "num_attention_heads")
    hidden = _need(cfg, "hidden_size")
    theta, scaling = _rope(cfg)
    attention_bias = bool(cfg.get("attention_bias", False))
    return dict(
        vocab_size=_need(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_need(cfg, "intermediate_size"),
        num_layers=_need(cfg, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        max_position_embeddings=_context(cfg, scaling),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        activation=_activation(cfg.get("hidden_act", "silu")),
        qkv_bias=attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def qwen2(cfg: dict) -> dict[str, Any]:
    """Qwen2 / Qwen2.5-Coder: Llama with a bias on the q, k and v projections."""
    fields = llama(dict(cfg, attention_bias=False, mlp_bias=False))
    return dict(fields, qkv_bias=True, **_qwen2_window(cfg, fields["num_layers"]))


def gemma(cfg: dict) -> dict[str, Any]:
    """Gemma / CodeGemma: Llama's layout with a GELU-gated MLP, RMSNorms scaling by 1 + weight, token
    embeddings scaled by sqrt(hidden), tied head, head_dim from the config."""
    # Gemma was trained with the tanh GELU; configs written before transformers used it say "gelu"
    # in hidden_act and name the real one in hidden_activation.
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    fields = llama(dict(cfg, hidden_act="gelu_pytorch_tanh" if act == "gelu" else act))
    return dict(fields, norm_weight_offset=1.0, embed_scale=float(fields["hidden_size"]) ** 0.5,
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)))


def gemma3(cfg: dict) -> dict[str, Any]:
    """Gemma 3 (text: Gemma3ForCausalLM): Gemma's norms and embeddings, per-head q/k norms, each
    block's output normed before its residual add (and the MLP's input by a norm of its own), the
    attention scaled by query_pre_attn_scalar, and a window on every layer but each
    sliding_window_pattern-th (layer_types where written), whose rotary has a theta of its own.
    Logit soft-capping (Gemma 2) is refused."""
    if cfg.get("attn_logit_softcapping") or cfg.get("final_logit_softcapping"):
        raise ValueError("Gemma with logit soft-capping (Gemma 2) is not supported")
    layers = _need(cfg, "num_hidden_layers")
    pattern = int(cfg.get("sliding_window_pattern") or 6)
    types = cfg.get("layer_types") or ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                       for i in range(layers)]
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params:  # transformers 5: each kind of layer's rotary on its own
        theta, scaling = _rope(dict(cfg, rope_scaling=None, rope_parameters=params["full_attention"], rope_theta=None))
        local_theta = float((params.get("sliding_attention") or {}).get("rope_theta", 10000.0))
    else:
        theta, scaling = _rope(cfg)
        local_theta = float(cfg.get("rope_local_base_freq") or 10000.0)
    fields = gemma(dict(cfg, rope_scaling=None, rope_parameters=None, rope_theta=theta))
    full = tuple(i for i, kind in enumerate(types) if kind == "full_attention")
    window = _need(cfg, "sliding_window") if len(full) < layers else None
    return dict(fields, rope_scaling=scaling, qk_norm=True, sandwich_norms=True, sliding_window=window,
                full_attention_layers=full if window is not None else (), local_rope_theta=local_theta,
                attention_scale=float(cfg.get("query_pre_attn_scalar") or fields["head_dim"]) ** -0.5)


def glm4(cfg: dict) -> dict[str, Any]:
    """GLM-4 (the 0414 checkpoints: GLM-4-9B, GLM-4-32B, GLM-Z1): Llama with a bias on q, k and v
    (attention_bias; none on the output projection), each block's output normed before its residual
    add and the MLP's input by a norm of its own (Gemma 3's sandwich, without the 1 + weight), and
    GPT-J-style rotary over the first partial_rotary_factor of each head (half where unsaid, as
    transformers defaults it); gate and up fused in the checkpoint itself."""
    fields = llama(dict(cfg, attention_bias=False))
    return dict(fields, qkv_bias=bool(cfg.get("attention_bias", True)), sandwich_norms=True,
                rotary_dim=_rotary_dim(cfg, fields["head_dim"], 0.5), rotary_style="gptj")


def seed_oss(cfg: dict) -> dict[str, Any]:
    """Seed-OSS (ByteDance's Seed-OSS-36B): Llama with a bias on q, k and v (attention_bias), on the
    output projection only where attention_out_bias says so, head_dim from the config."""
    fields = llama(dict(cfg, attention_bias=False))
    return dict(fields, qkv_bias=bool(cfg.get("attention_bias", True)),
                o_bias=bool(cfg.get("attention_out_bias", False)))


def gemma3_text_of_multimodal(cfg: dict) -> dict[str, Any]:
    """The language model of Gemma 3's multimodal checkpoints (4B, 12B, 27B), from text_config:
    text in, text out (images are not read)."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise ValueError("Gemma3ForConditionalGeneration config.json has no text_config")
    return gemma3(dict(text, tie_word_embeddings=cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True))))


def granite(cfg: dict) -> dict[str, Any]:
    """Granite 3: Llama with multipliers on the embeddings, the attention logits (in place of
    1 / sqrt(head_dim)), each residual branch, and (dividing) the logits."""
    fields = llama(cfg)
    return dict(fields, embed_scale=float(cfg.get("embedding_multiplier", 1.0)),
                attention_scale=float(cfg["attention_multiplier"]) if cfg.get("attention_multiplier") else None,
                residual_scale=float(cfg.get("residual_multiplier", 1.0)),
                logits_scale=float(cfg.get("logits_scaling", 1.0)))


def qwen3(cfg: dict) -> dict[str, Any]:
    """Qwen3 (dense): Llama with an RMSNorm over each head of q and k, head_dim from the config."""
    fields = llama(dict(cfg, mlp_bias=False))
    return dict(fields, qk_norm=True, **_qwen2_window(cfg, fields["num_layers"]))


def qwen3_moe(cfg: dict) -> dict[str, Any]:
    """Qwen3-MoE: Qwen3 with mixture-of-experts MLPs (_moe_fields)."""
    fields = qwen3(cfg)
    return dict(fields, **_moe_fields(cfg, fields["num_layers"]))


def _moe_fields(cfg: dict, layers: int) -> dict[str, Any]:
    """The Qwen mixtures' fields: experts, their width, the dense layers (mlp_only_layers, and
    those off the decoder_sparse_step: a layer i is sparse where (i + 1) is a multiple of it)."""
    step = cfg.get("decoder_sparse_step") or 1
    dense_only = set(cfg.get("mlp_only_layers") or ())
    # transformers 5 writes num_local_experts where the published configs say num_experts
    return dict(num_experts=_need(cfg, "num_experts", "num_local_experts"),
                experts_per_token=_need(cfg, "num_experts_per_tok"),
                moe_intermediate_size=_need(cfg, "moe_intermediate_size"),
                norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                dense_layers=tuple(i for i in range(layers) if i in dense_only or (i + 1) % step))


def qwen2_moe(cfg: dict) -> dict[str, Any]:
    """Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases) with
    mixture-of-experts MLPs as Qwen3-MoE's, plus a gated shared expert in each."""
    fields = qwen2(cfg)
    moe = _moe_fields(cfg, fields["num_layers"])
    return dict(fields, **moe, shared_expert_size=int(cfg.get("shared_expert_intermediate_size") or 0))


def deepseek_v2(cfg: dict) -> dict[str, Any]:
    """DeepSeek-V2 / DeepSeek-Coder-V2 (Lite): latent attention (engine/models/mla.py) whose
    rotary part turns interleaved pairs, YaRN's mscale folded into the softmax scale too; mixtures
    of experts routed by a softmax, greedy top-k, scaled, with ungated shared experts, the first
    first_k_dense_replace layers dense. Group-limited routing (the 236B models) is refused."""
    heads = _need(cfg, "num_attention_heads")
    hidden = _need(cfg, "hidden_size")
    rope, nope = _need(cfg, "qk_rope_head_dim"), _need(cfg, "qk_nope_head_dim")
    mla = LatentAttention(_need(cfg, "kv_lora_rank"), nope, rope, _need(cfg, "v_head_dim"), cfg.get("q_lora_rank"))
    theta, scaling = _rope(cfg)
    if (cfg.get("topk_method") or "greedy") != "greedy" or (cfg.get("scoring_func") or "softmax") != "softmax":
        raise ValueError(f"DeepSeek-V2 routing {cfg.get('topk_method')!r} / {cfg.get('scoring_func')!r} is not "
                         "supported; supported: greedy top-k of a softmax")
    if (cfg.get("moe_layer_freq") or 1) != 1:
        raise ValueError("DeepSeek-V2 with moe_layer_freq other than 1 is not supported")
    layers = _need(cfg, "num_hidden_layers")
    experts = int(cfg.get("n_routed_experts") or 0)
    width = int(cfg.get("moe_intermediate_size") or 0)
    bias = bool(cfg.get("attention_bias", False))
    return dict(
        vocab_size=_need(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_need(cfg, "intermediate_size"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=1,  # the cached latent, one per token
        head_dim=rope + mla.kv_lora_rank,
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=rope,
        rotary_style="gptj",
        attention_scale=(nope + rope) ** -0.5 * _mscale_squared(scaling, cfg),
        activation=_activation(cfg.get("hidden_act", "silu")),
        qkv_bias=bias,
        o_bias=bias,
        num_experts=experts,
        experts_per_token=int(cfg.get("num_experts_per_tok") or 0) if experts else 0,
        moe_intermediate_size=width,
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        dense_layers=tuple(range(min(int(cfg.get("first_k_dense_replace") or 0), layers))) if experts else (),
        shared_expert_size=width * int(cfg.get("n_shared_experts") or 0) if experts else 0,
        shared_expert_gated=False,
        routed_scale=float(cfg.get("routed_scaling_factor") or 1.0),
        latent_attention=mla,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _mscale_squared(scaling: RopeScaling, cfg: dict) -> float:
    """YaRN's mscale of mscale_all_dim, squared: what DeepSeek's softmax scale is multiplied by."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    weight = params.get("mscale_all_dim")
    if scaling.kind != "yarn" or not weight:
        return 1.0
    return _yarn_mscale(scaling.factor, float(weight)) ** 2


def mistral(cfg: dict) -> dict[str, Any]:
    """Mistral / Codestral: Llama's layout, with a sliding window where the config sets one
    (Mistral-7B-v0.1's 4096; later checkpoints null)."""
    fields = llama(dict(cfg, attention_bias=False, mlp_bias=False))
    return dict(fields, sliding_window=_window(cfg, fields["max_position_embeddings"]))


def starcoder2(cfg: dict) -> dict[str, Any]:
    """StarCoder2: LayerNorm, a plain GELU MLP, biases everywhere but the head, sliding window."""
    heads = _need(cfg, "num_attention_heads")
    hidden = _need(cfg, "hidden_size")
    theta, scaling = _rope(cfg)
    bias = bool(cfg.get("use_bias", True))
    return dict(
        vocab_size=_need(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_need(cfg, "intermediate_size"),
        num_layers=_need(cfg, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        norm_eps=cfg.get("norm_epsilon", 1e-5),
        rope_theta=theta,
        rope_scaling=scaling,
        norm="layer",
        activation=_activation(cfg.get("hidden_act", "gelu_pytorch_tanh")),
        gated_mlp=False,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        sliding_window=cfg.get("sliding_window"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def phi3(cfg: dict) -> dict[str, Any]:
    """Phi-3 / Phi-4: Llama's layout with q/k/v and gate/up fused in the checkpoint itself, rotary
    over the first partial_rotary_factor of each head (Phi-4-mini's 0.75), a sliding window where
    the config sets one (Phi-3-mini-4k's 2047); the 128k models (longrope) up to their pretraining
    context (see _context)."""
    fields = llama(dict(cfg, attention_bias=False, mlp_bias=False))
    return dict(fields, rotary_dim=_rotary_dim(cfg, fields["head_dim"], 1.0),
                sliding_window=_window(cfg, fields["max_position_embeddings"]))


def gpt_bigcode(cfg: dict) -> dict[str, Any]:
    """GPTBigCode: learned absolute positions, LayerNorm, a GELU MLP, biases everywhere but the
    head, one K/V head where multi_query (StarCoder), else as many as query heads."""
    hidden = _need(cfg, "n_embd", "hidden_size")
    heads = _need(cfg, "n_head", "num_attention_heads")
    if hidden % heads:
        raise ValueError(f"GPTBigCode needs n_head ({heads}) dividing n_embd ({hidden})")
    if not cfg.get("scale_attn_weights", True):
        raise ValueError("GPTBigCode without scale_attn_weights (unscaled attention) is not supported")
    return dict(
        _gpt2_sizes(cfg, hidden, heads),
        num_kv_heads=1 if cfg.get("multi_query", True) else heads,
        rope_theta=10000.0,  # unused: no rotary
        norm="layer",
        activation=_activation(cfg.get("activation_function", "gelu_pytorch_tanh")),
        gated_mlp=False,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        position_embedding="learned",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


CODEGEN_MP_NUM = 4  # CodeGen's fused qkv_proj is laid out for 4 model-parallel shards


def codegen(cfg: dict) -> dict[str, Any]:
    """CodeGen: parallel attention and MLP from one LayerNorm, partial GPT-J-style rotary."""
    hidden = _need(cfg, "n_embd", "hidden_size")
    heads = _need(cfg, "n_head", "num_attention_heads")
    if heads % CODEGEN_MP_NUM or hidden % heads:
        raise ValueError(f"CodeGen needs heads ({heads}) a multiple of {CODEGEN_MP_NUM} dividing n_embd ({hidden})")
    return dict(
        _gpt2_sizes(cfg, hidden, heads),
        num_kv_heads=heads,
        rope_theta=10000.0,
        norm="layer",
        activation=_activation(cfg.get("activation_function", "gelu_new")),
        gated_mlp=False,
        mlp_bias=True,
        lm_head_bias=True,
        rotary_dim=cfg.get("rotary_dim") or None,
        rotary_style="gptj",
        parallel_residual=True,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _gpt2_sizes(cfg: dict, hidden: int, heads: int) -> dict[str, Any]:
    """The sizes GPT-2-style configs (GPTBigCode, CodeGen) name their own way."""
    return dict(
        vocab_size=_need(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=cfg.get("n_inner") or 4 * hidden,
        num_layers=_need(cfg, "n_layer", "num_hidden_layers"),
        num_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=cfg.get("n_positions") or cfg.get("max_position_embeddings") or 2048,
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
    )


def _rotary_dim(cfg: dict, head_dim: int, default: float) -> int:
    """The rotated dims at the start of each head: partial_rotary_factor of it (at the top level as
    transformers 4 writes it, in rope_parameters as 5 does; `default` where unsaid), made even."""
    factor = (cfg.get("partial_rotary_factor") or (cfg.get("rope_parameters") or {}).get("partial_rotary_factor")
              or default)
    rotary = int(head_dim * float(factor))
    return rotary - rotary % 2


def _window(cfg: dict, max_positions: int) -> int | None:
    """The config's sliding window where it slides: one as long as the positions never does, and
    the fast paths without a window then apply."""
    window = cfg.get("sliding_window")
    return window if window and window < max_positions else None


def _need(cfg: dict, *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    raise ValueError(f"config.json has no {keys[0]!r}")


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _rope(cfg: dict) -> tuple[float, RopeScaling]:
    """(theta, scaling). transformers < 5 writes rope_theta + rope_scaling; 5 writes
    rope_parameters (theta inside). The pretraining context of llama3 and yarn comes from the
    scaling, else the config (Phi-3 keeps it there), else max_position_embeddings."""
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "linear" if "factor" in scaling else "default"))
    if kind not in ("default", "linear", "llama3", "yarn", "longrope"):
        raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: default, linear, llama3, yarn, longrope")
    theta = float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if kind == "default":
        return theta, RopeScaling()
    original = int(scaling.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
                   or cfg.get("max_position_embeddings", 2048))
    factor = scaling.get("factor")
    if factor is None and kind in ("yarn", "longrope"):  # DeepSeek-V3 and Phi-3 name the contexts, not their ratio
        factor = cfg.get("max_position_embeddings", original) / original
    if kind == "longrope":
        return theta, _longrope(float(factor), original, scaling)
    if factor is None:
        raise ValueError(f"rope_scaling {kind} needs a factor")
    if kind == "linear":
        return theta, RopeScaling("linear", float(factor))
    if kind == "llama3":
        return theta, RopeScaling("llama3", float(factor), original, float(_need(scaling, "low_freq_factor")),
                                  float(_need(scaling, "high_freq_factor")))
    return theta, RopeScaling("yarn", float(factor), original, beta_fast=float(scaling.get("beta_fast") or 32),
                              beta_slow=float(scaling.get("beta_slow") or 1),
                              truncate=bool(scaling.get("truncate", True)),
                              attention_factor=_yarn_attention_factor(float(factor), scaling))


def _longrope(factor: float, original: int, scaling: dict) -> RopeScaling:
    """Phi-3's short per-frequency factors; its scale on cos and sin: the config's, else
    sqrt(1 + ln(factor) / ln(original context)) past a factor of 1 (the 128k context's factor,
    though the engine serves the pretraining context: see _context)."""
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    _need(scaling, "long_factor")
    return RopeScaling("longrope", factor, original, attention_factor=float(attention),
                       short_factor=tuple(float(f) for f in _need(scaling, "short_factor")))


def _context(cfg: dict, scaling: RopeScaling) -> int:
    """The positions the engine serves: max_position_embeddings, but for longrope its pretraining
    context. Past it transformers switches to the long factors and recomputes the whole sequence
    with them (Phi3ForCausalLM's generation drops its cache there), which the engine's KV cache
    does not do; within it both use the short factors only."""
    if scaling.kind == "longrope":
        return scaling.original_max_positions
    return cfg.get("max_position_embeddings", 2048)


def _yarn_attention_factor(factor: float, scaling: dict) -> float:
    """YaRN's scale on cos and sin: the config's, else 0.1 ln(factor) + 1 (a ratio of two such
    terms, weighted by mscale and mscale_all_dim, where the config gives both)."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    if scaling.get("mscale") and scaling.get("mscale_all_dim"):
        return _yarn_mscale(factor, float(scaling["mscale"])) / _yarn_mscale(factor, float(scaling["mscale_all_dim"]))
    return _yarn_mscale(factor, 1.0)


def _yarn_mscale(factor: float, weight: float) -> float:
    """YaRN's 0.1 * weight * ln(factor) + 1, for a factor past 1 (else 1)."""
    return 1.0 if factor <= 1 else 0.1 * weight * math.log(factor) + 1.0


def _qwen2_window(cfg: dict, num_layers: int) -> dict[str, Any]:
    """The window and the layers without it: none when no layer slides (Qwen2.5-Coder ships with
    use_sliding_window false), else the layers from max_window_layers on (layer_types where
    written) have it."""
    if not cfg.get("use_sliding_window", False):
        return dict(sliding_window=None)
    types = cfg.get("layer_types") or [
        "sliding_attention" if i >= cfg.get("max_window_layers", num_layers) else "full_attention"
        for i in range(num_layers)]
    full = tuple(i for i, t in enumerate(types) if t == "full_attention")
    if len(full) == num_layers:
        return dict(sliding_window=None)
    return dict(sliding_window=_need(cfg, "sliding_window"), full_attention_layers=full)
