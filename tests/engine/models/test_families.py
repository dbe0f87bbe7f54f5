"""The families besides plain Llama (tests/conftest.py FAMILY_MODELS): Qwen2, Qwen3 (per-head q/k
norms, head_dim apart from hidden / heads), Qwen3-MoE (mixture-of-experts MLPs, a dense layer among
them), Qwen2-MoE (a gated shared expert too), DeepSeek-Coder (Llama with linear rope scaling), Llama
3.1 (its rope scaling), Qwen2.5 with YaRN, DeepSeek-V2 (latent attention, scaled routing, ungated
shared experts), Gemma (norms scaling by 1 + weight, scaled embeddings), Gemma 3 (a window on some
layers, sandwich norms), GLM-4 (sandwich norms under its own names, GPT-J-style rotary over half of
each head), Seed-OSS (biases on q/k/v and the output), Granite (multipliers), Mistral (Llama with a
sliding window), Phi-3 (fused
checkpoint projections, partial rotary, a window; longrope), StarCoder2, GPTBigCode (StarCoder 1:
learned positions, multi-query attention) and CodeGen: tiny random models from transformers' own
classes, run by the engine over the paged cache, against transformers."""
from __future__ import annotations

import math

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import RopeScaling
from engine.attention.cpu import CpuBackend
from engine.attention.torch_ref import TorchRefBackend
from engine.models.registry import model_config, read_model_config
from engine.kernels import cpu as kernels
from engine.model_runner import load_model
from engine.models.registry import family_for
from engine.step_batch import SeqChunk, StepBatch
from fastcodellama.drafting import SpecConfig, build_proposer
from tests.conftest import FAMILY_MODELS, make_tiny_family
from tests.engine.helpers import _hf_model, assert_no_leaks

FAMILIES = tuple(FAMILY_MODELS)
BLOCK = 4
# Steps of one sequence: a prefill within StarCoder2's and Mistral's window of 8, a long chunk (the
# reference backend's per-sequence path), a verify-like chunk, then single decode tokens.
STEPS = (6, 66, 4, 1, 1, 1)


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory) -> tuple[str, str]:
    return request.param, make_tiny_family(str(tmp_path_factory.mktemp(request.param)), request.param)


def _ids(n: int, seed: int = 1) -> list[int]:
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _engine_logits(model, backend, ids: list[int]) -> torch.Tensor:
    """Every row's logits, computed step by step (STEPS) over a fresh paged cache."""
    cfg = model.config
    num_blocks = -(-len(ids) // BLOCK) + 2
    caches = torch.zeros(cfg.num_layers, 2, num_blocks, cfg.num_kv_heads, BLOCK, cfg.head_dim)
    table = tuple(reversed(range(num_blocks)))  # blocks out of order
    out, start = [], 0
    for n in STEPS:
        batch = StepBatch.build([SeqChunk(tuple(ids[start:start + n]), start, table, 0)], BLOCK, torch.device("cpu"))
        out.append(model.compute_logits(model(batch, caches, backend)))
        start += n
    return torch.cat(out)


def _assert_reference_matches_transformers(path: str, mc) -> None:
    """Every step's logits (STEPS), the engine's modules with the torch reference attention, within
    1e-4 of transformers' (float32)."""
    reference = load_model(path, mc, torch.float32, torch.device("cpu")).eval().requires_grad_(False)
    ids = _ids(sum(STEPS))
    with torch.no_grad():
        expected = _hf_model(path)(torch.tensor([ids])).logits[0]
    assert (_engine_logits(reference, TorchRefBackend(), ids) - expected).abs().max().item() < 1e-4


def _models(path: str):
    """The engine's model twice: plain modules with the torch reference attention, and with the
    CPU kernels (pack_for_cpu) and the CPU attention backend."""
    mc = read_model_config(path)
    reference = load_model(path, mc, torch.float32, torch.device("cpu")).eval().requires_grad_(False)
    packed = load_model(path, mc, torch.float32, torch.device("cpu")).eval().requires_grad_(False)
    num_packed = packed.pack_for_cpu() if kernels.available() else 0
    return reference, packed, num_packed


def test_config_reads_the_family(family_dir):
    family, path = family_dir
    mc = read_model_config(path)
    expected = {"qwen2": ("qwen2", True, "rms", 16, "neox", None),
                "qwen3": ("qwen3", False, "rms", 32, "neox", None),
                "qwen3_moe": ("qwen3_moe", False, "rms", 16, "neox", None),
                "qwen2_moe": ("qwen2_moe", True, "rms", 16, "neox", None),
                "deepseek": ("llama", False, "rms", 16, "neox", None),
                "llama3": ("llama", False, "rms", 16, "neox", None),
                "qwen2_yarn": ("qwen2", True, "rms", 16, "neox", None),
                "deepseek_v2": ("deepseek_v2", False, "rms", 8, "gptj", None),
                "gemma": ("gemma", False, "rms", 32, "neox", None),
                "gemma3": ("gemma3", False, "rms", 16, "neox", 8),
                "granite": ("granite", False, "rms", 16, "neox", None),
                "mistral": ("mistral", False, "rms", 16, "neox", 8),
                "glm4": ("glm4", True, "rms", 8, "gptj", None),
                "seed_oss": ("seed_oss", True, "rms", 16, "neox", None),
                "phi3": ("phi3", False, "rms", 12, "neox", 8),
                "phi3_longrope": ("phi3", False, "rms", 12, "neox", None),
                "starcoder2": ("starcoder2", True, "layer", 16, "neox", 8),
                "gpt_bigcode": ("gpt_bigcode", True, "layer", 16, "neox", None),
                "codegen": ("codegen", False, "layer", 8, "gptj", None)}[family]
    assert (mc.family, mc.qkv_bias, mc.norm, mc.rotary_dim, mc.rotary_style, mc.sliding_window) == expected
    assert mc.qk_norm == (family in ("qwen3", "qwen3_moe", "gemma3"))
    if family == "gemma3":  # layer 1 full (its rope scaled linearly), layer 0 windowed with a theta of its own
        assert (mc.full_attention_layers, mc.local_rope_theta, mc.rope_theta) == ((1,), 10000.0, 1e6)
        assert mc.rope_scaling == RopeScaling("linear", 2.0) and mc.sandwich_norms and mc.backend_window is None
        assert mc.attention_scale == pytest.approx(24 ** -0.5)  # query_pre_attn_scalar
    else:
        assert not mc.full_attention_layers and mc.local_rope_theta is None
        assert mc.sandwich_norms == (family == "glm4")
    assert mc.o_bias == (family in ("seed_oss", "starcoder2", "gpt_bigcode"))
    if family == "qwen3_moe":  # 8 experts, 2 per token; layer 1 dense (mlp_only_layers)
        assert (mc.num_experts, mc.experts_per_token, mc.moe_intermediate_size, mc.norm_topk_prob,
                mc.dense_layers) == (8, 2, 32, True, (1,))
    if family == "qwen2_moe":  # every layer a mixture with a shared expert of width 48
        assert (mc.num_experts, mc.dense_layers, mc.shared_expert_size, mc.norm_topk_prob) == (8, (), 48, False)
    if family == "deepseek_v2":  # latent attention cached as one head of rotary part + latent; layer 0 dense
        assert (mc.num_kv_heads, mc.head_dim, mc.latent_attention.kv_lora_rank) == (1, 8 + 32, 32)
        assert (mc.num_experts, mc.dense_layers, mc.shared_expert_gated, mc.routed_scale) == (8, (0,), False, 1.5)
        mscale = 0.1 * 0.707 * math.log(4.0) + 1  # YaRN's mscale_all_dim, squared into the softmax scale
        assert mc.attention_scale == pytest.approx((16 + 8) ** -0.5 * mscale ** 2)
    assert mc.shared_expert_size == {"qwen2_moe": 48, "deepseek_v2": 32}.get(family, 0)
    assert (mc.latent_attention is not None) == (family == "deepseek_v2")
    assert mc.position_embedding == ("learned" if family == "gpt_bigcode" else "rope")
    if family == "granite":
        assert (mc.embed_scale, mc.attention_scale, mc.residual_scale, mc.logits_scale) == (3.0, 0.1, 0.5, 2.0)
    gemma = family in ("gemma", "gemma3")
    assert (mc.norm_weight_offset, mc.activation) == ((1.0, "gelu_tanh") if gemma else (0.0, mc.activation))
    assert mc.embed_scale == {"gemma": 8.0, "gemma3": 8.0, "granite": 3.0}.get(family, 1.0)
    if family == "gpt_bigcode":  # StarCoder's multi-query attention: one K/V head
        assert mc.num_kv_heads == 1
    if family == "qwen2":  # config.json's EOS, then the extra one generation_config.json lists
        assert len(mc.eos_token_ids) == 2 and mc.eos_token_id == mc.eos_token_ids[0]
    if family == "deepseek":
        assert mc.rope_scaling == RopeScaling("linear", 4.0)
    if family == "llama3":
        assert mc.rope_scaling == RopeScaling("llama3", 8.0, 64, 1.0, 4.0)
    if family == "qwen2_yarn":  # attention factor 0.1 ln(4) + 1
        assert mc.rope_scaling == RopeScaling("yarn", 4.0, 32, beta_fast=8.0, attention_factor=0.1 * math.log(4.0) + 1)


def test_logits_match_transformers(family_dir):
    """(a) prefill, chunk and decode logits over the paged cache equal transformers' (float32), on
    the reference path and on the CPU-kernel path; (d) the two paths agree."""
    family, path = family_dir
    reference, packed, num_packed = _models(path)
    ids = _ids(sum(STEPS))
    with torch.no_grad():
        expected = _hf_model(path)(torch.tensor([ids])).logits[0]
    ref = _engine_logits(reference, TorchRefBackend(), ids)
    assert (ref - expected).abs().max().item() < 1e-4
    if not kernels.available():
        return
    cfg = reference.config
    sparse = cfg.num_layers - len(cfg.dense_layers) if cfg.num_experts else 0
    # qkv and o (latent attention: q, kv_a, kv_b and o) and two MLP projections per dense layer, the
    # attention's and the router per sparse one (and a shared expert's two projections and gate,
    # DeepSeek's without the gate); the head
    attention = 4 if cfg.latent_attention is not None else 2
    shared = (3 if cfg.shared_expert_gated else 2) * sparse if cfg.shared_expert_size else 0
    assert num_packed == (attention + 2) * cfg.num_layers - sparse + shared + 1
    assert (packed.cpu_stack is not None) == (family in ("deepseek", "llama3"))  # plain Llama's only
    fast = _engine_logits(packed, CpuBackend(), ids)
    assert (fast - ref).abs().max().item() < 1e-4
    assert (fast - expected).abs().max().item() < 1e-4


def _hf_greedy(path: str, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy generate() with EOS an ordinary token, like the engine's ignore_eos
    (min_new_tokens would instead forbid every EOS id); the attention mask is given, as the
    prompt's first id (a BOS or <|endoftext|>, id 0 here) would otherwise be taken for padding."""
    ids = torch.tensor([prompt_ids])
    out = _hf_model(path).generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, eos_token_id=[], pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):\n",
           "s = 'héllo wörld ✓ 漢字'\ns = 'héllo",
           "for i in range(10):\n    print(i)\nfor i in range(10):\n"]


def test_greedy_matches_transformers_with_and_without_drafts(family_dir):
    """(b) the engine's greedy ids equal transformers' generate(); (c) copy drafts change nothing."""
    family, path = family_dir
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    plain = LLM(path, num_kv_blocks=96, block_size=BLOCK)
    outs = plain.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        ids = plain.tokenizer.encode(prompt)
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == _hf_greedy(path, ids, 16), (family, prompt)
        assert len(out.outputs[0].token_ids) == 16
    spec = LLM(path, proposer=build_proposer(SpecConfig(policy="fixed")), num_kv_blocks=96, block_size=BLOCK)
    drafted = spec.generate(PROMPTS, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in drafted] == [o.outputs[0].token_ids for o in outs]
    assert spec.engine.stats().spec.total_drafted > 0
    assert_no_leaks(spec.engine)


def test_loader_names_what_is_wrong(family_dir):
    family, path = family_dir
    model = load_model(path, read_model_config(path), torch.float32, torch.device("cpu"))
    gpt = family in ("codegen", "gpt_bigcode")
    prefix = "transformer." if gpt else "model."
    embed = prefix + ("wte.weight" if gpt else "embed_tokens.weight")
    with pytest.raises(ValueError, match="unexpected tensor"):
        model.load_hf_weights([(prefix + "layers.0.self_attn.nonsense.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_hf_weights([(embed, torch.zeros(3, 3))])
    with pytest.raises(ValueError, match="missing"):
        model.load_hf_weights([(embed, model.embed_tokens.weight.detach().clone())])


@pytest.mark.parametrize("cfg", [
    {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64},
    {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"},
    {"model_type": "gpt_neox"},
])
def test_unsupported_architecture_is_a_one_line_value_error(cfg):
    with pytest.raises(ValueError) as e:
        model_config(cfg)
    message = str(e.value)
    assert "\n" not in message and "unsupported architecture" in message
    assert "Qwen2ForCausalLM" in message and "CodeGenForCausalLM" in message


def test_missing_key_is_a_value_error():
    with pytest.raises(ValueError, match="num_attention_heads"):
        model_config({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64})
    assert family_for({"model_type": "starcoder2"}).name == "starcoder2"


def test_qwen2_sliding_window_from_max_window_layers_on():
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 64, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "use_sliding_window": True,
           "sliding_window": 16, "max_window_layers": 2}
    some = model_config(cfg)
    assert (some.sliding_window, some.full_attention_layers, some.backend_window) == (16, (0, 1), None)
    every = model_config(dict(cfg, max_window_layers=0))
    assert (every.sliding_window, every.full_attention_layers) == (16, ())
    assert model_config(dict(cfg, use_sliding_window=False)).sliding_window is None
    assert model_config(dict(cfg, max_window_layers=4)).sliding_window is None


def test_qwen2_with_a_window_on_its_later_layers_matches_transformers(tmp_path):
    """Past the window of 8, layer 0 attends to every key and layer 1 to its window only."""
    path = make_tiny_family(str(tmp_path), "qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    mc = read_model_config(path)
    assert (mc.sliding_window, mc.full_attention_layers) == (8, (0,))
    _assert_reference_matches_transformers(path, mc)


def test_mistral_window_only_where_it_slides():
    cfg = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 64, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 32768}
    assert model_config(dict(cfg, sliding_window=4096)).sliding_window == 4096  # Mistral-7B-v0.1
    assert model_config(dict(cfg, sliding_window=32768)).sliding_window is None
    assert model_config(dict(cfg, sliding_window=None)).sliding_window is None  # Codestral, Mistral-7B-v0.3
    assert model_config(cfg).family == "mistral"


def test_gpt_bigcode_with_a_kv_head_per_query_head(tmp_path):
    """multi_query false: c_attn holds each head's q, k and v rows in turn (convert reorders them)."""
    path = make_tiny_family(str(tmp_path), "gpt_bigcode", multi_query=False)
    mc = read_model_config(path)
    assert mc.num_kv_heads == mc.num_heads == 4
    _assert_reference_matches_transformers(path, mc)


def test_phi3_rotary_share_window_and_long_context_scaling():
    cfg = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 64, "hidden_size": 128,
           "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
           "max_position_embeddings": 16384}
    phi4 = model_config(dict(cfg, sliding_window=None))  # Phi-4: whole heads rotated, no window
    assert (phi4.family, phi4.rotary_dim, phi4.sliding_window) == ("phi3", 32, None)
    # Phi-4-mini's rotary share, Phi-3-mini-4k's window
    mini = model_config(dict(cfg, partial_rotary_factor=0.75, sliding_window=2047))
    assert (mini.rotary_dim, mini.sliding_window) == (24, 2047)
    # the 128k models' scaling: served up to the pretraining context, the attention factor from the two contexts
    long = model_config(dict(cfg, original_max_position_embeddings=4096,
                             rope_scaling={"type": "longrope", "short_factor": [1.0] * 16, "long_factor": [2.0] * 16}))
    assert (long.rope_scaling.kind, long.max_position_embeddings, long.rope_scaling.factor) == ("longrope", 4096, 4.0)
    assert long.rope_scaling.attention_factor == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(4096)))
    with pytest.raises(ValueError, match="long_factor"):
        model_config(dict(cfg, rope_scaling={"type": "longrope", "short_factor": [1.0] * 16}))
    with pytest.raises(ValueError, match="1 factors for 16 rotated pairs"):  # the model's rotary is 32 dims wide
        _model_shell(model_config(dict(cfg, rope_scaling={"type": "longrope", "short_factor": [1.0],
                                                          "long_factor": [1.0]})))


def _model_shell(mc):
    """The model's modules for a config, without weights (what a load builds first)."""
    from engine.models.registry import model_class

    with torch.device("meta"):
        return model_class(mc.family)(mc)


def test_longrope_models_run_their_pretraining_context_as_transformers_does(tmp_path):
    """Phi-3.5 / Phi-4-mini's scaling: the short factors and the attention factor, decoding up to
    the pretraining context (96 positions) as transformers' generate() does; a longer prompt is
    refused with the context named."""
    path = make_tiny_family(str(tmp_path), "phi3_longrope")
    ids = LLM(path).tokenizer.encode(PROMPTS[0])
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    for proposer in (None, build_proposer(SpecConfig(policy="fixed"))):
        llm = LLM(path, proposer=proposer, num_kv_blocks=96, block_size=BLOCK)
        out = llm.generate([PROMPTS[0]], params, use_tqdm=False)[0].outputs[0]
        assert len(ids) + len(out.token_ids) == 96 and out.finish_reason == "length"
        assert out.token_ids == _hf_greedy(path, ids, 96 - len(ids))
    with pytest.raises(ValueError, match="context is 96 tokens"):
        llm.generate(["x " * 200], params, use_tqdm=False)


def test_rope_scaling_is_read_as_transformers_4_and_5_write_it():
    """Llama 3.1's and YaRN's parameters, from rope_scaling (transformers 4) or rope_parameters
    (5, theta inside); the pretraining context from the scaling, else the config (Phi-3 keeps it
    there); YaRN's attention factor from mscale and mscale_all_dim, or its factor from the two
    contexts (DeepSeek-V3); what is missing or unknown named."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 128,
           "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
           "max_position_embeddings": 131072}
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    v4 = model_config(dict(cfg, rope_theta=500000.0, rope_scaling=llama3))
    v5 = model_config(dict(cfg, rope_parameters=dict(llama3, rope_theta=500000.0)))
    assert v4.rope_scaling == v5.rope_scaling == RopeScaling("llama3", 8.0, 8192, 1.0, 4.0)
    assert v4.rope_theta == v5.rope_theta == 500000.0
    yarn = model_config(dict(cfg, original_max_position_embeddings=4096,
                             rope_scaling={"type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.5}))
    assert (yarn.rope_scaling.original_max_positions, yarn.rope_scaling.beta_fast, yarn.rope_scaling.beta_slow) == (4096, 32, 1)
    assert yarn.rope_scaling.attention_factor == pytest.approx((0.1 * math.log(4) + 1) / (0.05 * math.log(4) + 1))
    v3 = model_config(dict(cfg, rope_scaling={"type": "yarn", "factor": None, "original_max_position_embeddings": 4096}))
    assert v3.rope_scaling.factor == 32.0 and v3.rope_scaling.attention_factor == pytest.approx(0.1 * math.log(32) + 1)
    with pytest.raises(ValueError, match="high_freq_factor"):
        model_config(dict(cfg, rope_scaling={k: v for k, v in llama3.items() if k != "high_freq_factor"}))
    with pytest.raises(ValueError, match="'dynamic'.*llama3, yarn"):
        model_config(dict(cfg, rope_scaling={"type": "dynamic", "factor": 2.0}))


def test_latent_attention_with_a_query_latent_matches_transformers(tmp_path):
    """DeepSeek-V2's larger layout: queries through a latent of q_lora_rank (q_a_proj, a norm,
    q_b_proj), and a config without rope scaling; logits of every step equal transformers'."""
    path = make_tiny_family(str(tmp_path), "deepseek_v2", q_lora_rank=24, rope_scaling=None)
    mc = read_model_config(path)
    assert mc.latent_attention.q_lora_rank == 24 and mc.rope_scaling == RopeScaling()
    assert mc.attention_scale == pytest.approx((16 + 8) ** -0.5)  # no YaRN, no mscale
    _assert_reference_matches_transformers(path, mc)


def test_gemma3_configs_as_the_published_checkpoints_write_them():
    """gemma-3-1b's config.json (transformers 4): one rope_theta for the full layers, the windowed
    layers' in rope_local_base_freq, every sliding_window_pattern-th layer full; soft-capping refused."""
    cfg = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 64, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 13, "num_attention_heads": 4, "num_key_value_heads": 1,
           "head_dim": 16, "max_position_embeddings": 32768, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
           "rope_scaling": None, "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": 16,
           "final_logit_softcapping": None, "attn_logit_softcapping": None}
    mc = model_config(cfg)
    assert (mc.family, mc.full_attention_layers, mc.sliding_window) == ("gemma3", (5, 11), 512)
    assert (mc.rope_theta, mc.local_rope_theta, mc.rope_scaling) == (1e6, 1e4, RopeScaling())
    scaled = model_config(dict(cfg, rope_scaling={"rope_type": "linear", "factor": 8.0}))  # the 4B and larger
    assert scaled.rope_scaling == RopeScaling("linear", 8.0)
    with pytest.raises(ValueError, match="soft-capping"):
        model_config(dict(cfg, final_logit_softcapping=30.0))


def test_glm4_and_seed_oss_configs_as_transformers_4_writes_them():
    """GLM-4-0414's keys (partial_rotary_factor at the top, three EOS ids) and Seed-OSS's (an
    output bias only where attention_out_bias says so), at their published shapes."""
    glm = {"architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "vocab_size": 151552, "hidden_size": 4096,
           "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2,
           "head_dim": 128, "max_position_embeddings": 32768, "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
           "attention_bias": True, "rms_norm_eps": 1.5625e-07, "tie_word_embeddings": False,
           "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329}
    mc = model_config(glm)
    assert (mc.family, mc.rotary_dim, mc.rotary_style, mc.qkv_bias, mc.o_bias) == ("glm4", 64, "gptj", True, False)
    assert mc.sandwich_norms and not mc.mlp_bias and mc.eos_token_ids == (151329, 151336, 151338)
    assert model_config({k: v for k, v in glm.items() if k != "partial_rotary_factor"}).rotary_dim == 64
    assert model_config(dict(glm, partial_rotary_factor=1.0)).rotary_dim == 128
    seed = {"architectures": ["SeedOssForCausalLM"], "model_type": "seed_oss", "vocab_size": 155136,
            "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 80,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 524288, "rope_theta": 1e7,
            "attention_bias": True, "attention_out_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-6}
    mc = model_config(seed)
    assert (mc.family, mc.qkv_bias, mc.o_bias, mc.head_dim, mc.rope_theta) == ("seed_oss", True, False, 128, 1e7)
    assert not mc.sandwich_norms and mc.rotary_dim == 128 and mc.rotary_style == "neox"


def test_the_language_model_of_a_multimodal_gemma3_checkpoint_runs_as_text(tmp_path):
    """Gemma3ForConditionalGeneration (4B and larger): the text weights under language_model.model.,
    the vision tower and projector skipped, the sizes from text_config; text-only logits and greedy
    ids equal transformers' multimodal class given the same ids."""
    import transformers
    from tokenizers import Tokenizer as HFTokenizer

    from tests.conftest import BPE_STYLES, make_byte_bpe_tokenizer

    path = str(tmp_path)
    make_byte_bpe_tokenizer(path, "deepseek")
    tok = HFTokenizer.from_file(f"{path}/tokenizer.json")
    text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=16, max_position_embeddings=512,
                layer_types=["sliding_attention", "full_attention"], rms_norm_eps=1e-6,
                bos_token_id=tok.token_to_id(BPE_STYLES["deepseek"][0][0]),
                eos_token_id=tok.token_to_id(BPE_STYLES["deepseek"][1]["eos_token"]))
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    image_token_index=511, boi_token_index=509, eoi_token_index=510)
    torch.manual_seed(0)
    hf = transformers.Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_((p * 8.0 if p.dim() >= 2 else 1.0 + torch.randn_like(p) * 0.2).bfloat16().float())
    hf.save_pretrained(path, safe_serialization=True)
    mc = read_model_config(path)
    assert (mc.family, mc.full_attention_layers, mc.sliding_window, mc.hidden_size) == (
        "gemma3_text_of_multimodal", (1,), 8, 64)
    model = load_model(path, mc, torch.float32, torch.device("cpu")).eval().requires_grad_(False)
    ids = _ids(sum(STEPS))
    with torch.no_grad():
        expected = hf.eval()(input_ids=torch.tensor([ids])).logits[0]
    assert (_engine_logits(model, TorchRefBackend(), ids) - expected).abs().max().item() < 1e-4
    prompt_ids = LLM(path).tokenizer.encode(PROMPTS[0])
    out = LLM(path, num_kv_blocks=96, block_size=BLOCK).generate(
        [PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == _hf_greedy(path, prompt_ids, 16)


def test_gemma3_windowed_layers_keep_the_steps_backend_kind(tmp_path):
    """Past the window, Gemma 3's windowed layers attend through a twin of the step's backend with
    the window: the Triton kernels stay on them (here under the Triton interpreter), the C kernel
    (no window) hands them to the reference; the logits are the reference's either way."""
    pytest.importorskip("triton")
    from engine.attention.triton_attention import TritonBackend

    path = make_tiny_family(str(tmp_path), "gemma3")
    mc = read_model_config(path)
    model = load_model(path, mc, torch.float32, torch.device("cpu")).eval().requires_grad_(False)
    ids = _ids(sum(STEPS))
    reference = _engine_logits(model, TorchRefBackend(), ids)
    triton = TritonBackend()
    assert (_engine_logits(model, triton, ids) - reference).abs().max().item() < 1e-4
    twin = model._attention_for(StepBatch.build([SeqChunk((1,), 30, (0, 1, 2, 3, 4, 5, 6, 7), 0)], BLOCK,
                                                torch.device("cpu")), triton)
    assert isinstance(twin, TritonBackend) and twin.sliding_window == 8 and triton.sliding_window is None
    cpu_twin = model._attention_for(StepBatch.build([SeqChunk((1,), 30, tuple(range(8)), 0)], BLOCK,
                                                    torch.device("cpu")), CpuBackend())
    assert isinstance(cpu_twin, TorchRefBackend) and cpu_twin.sliding_window == 8


def test_deepseek_coder_v2_lite_head_dims_through_both_backends(tmp_path):
    """DeepSeek-Coder-V2-Lite's own widths (a latent of 512, rotary 64, 128-wide nope and value
    parts: cached rows of 576) on a small model: the reference and the C attention kernel over those
    rows equal transformers' logits."""
    path = make_tiny_family(str(tmp_path), "deepseek_v2", kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                            v_head_dim=128, num_attention_heads=2, num_key_value_heads=2)
    reference, packed, _ = _models(path)
    assert reference.config.head_dim == 576
    ids = _ids(sum(STEPS))
    with torch.no_grad():
        expected = _hf_model(path)(torch.tensor([ids])).logits[0]
    assert (_engine_logits(reference, TorchRefBackend(), ids) - expected).abs().max().item() < 1e-4
    if kernels.available():
        assert (_engine_logits(packed, CpuBackend(), ids) - expected).abs().max().item() < 1e-4
