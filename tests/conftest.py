"""Shared fixtures: tiny random Llama checkpoints built in memory (no downloads)."""
from __future__ import annotations

import glob
import os
import sysconfig

import pytest
import torch

# No test learns step costs from another (engine/paths.py): each engine starts uninformed.
os.environ["FASTCODELLAMA_STEP_COST_DIR"] = ""
# Without a GPU the Triton kernels' tests run them on CPU tensors under the interpreter, which
# triton reads when it is first imported: set here, whichever test imports it first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _stdlib_text(limit: int = 400_000) -> str:
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    text, size = [], 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            chunk = f.read()
        text.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return "\n".join(text)


def make_tiny_llama(path: str, vocab_size: int, seed: int = 0, **overrides) -> str:
    """Saves a random LlamaForCausalLM (Hugging Face format) under `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    with torch.no_grad():  # larger weights than the default init, so that outputs are far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
            p.copy_(p.bfloat16().float())  # bf16 values, like real checkpoints: the CPU linear kernel runs
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_spm_tokenizer(path, symbols: list[str], kind: str, dummy_prefix: bool = True) -> str:
    """A 400-piece sentencepiece tokenizer.model under `path` with `symbols` (of `kind`:
    user_defined_symbols or control_symbols), the dummy prefix on as CodeLlama's and Mistral's are
    (off: as Gemma's)."""
    import sentencepiece as spm

    corpus = os.path.join(path, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(_stdlib_text(60_000))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(path, "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=dummy_prefix, remove_extra_whitespaces=False,
        normalization_rule_name="identity", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        **{kind: symbols}, minloglevel=2, num_threads=1)
    os.remove(corpus)
    return str(path)


def spm_without_dummy_prefix(path: str):
    """The same sentencepiece model with its dummy prefix turned off: how a text that continues
    other text is tokenized."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(f"{path}/tokenizer.model", "rb") as f:
        proto.ParseFromString(f.read())
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


@pytest.fixture(scope="session")
def spm_tokenizer_dir(tmp_path_factory) -> str:
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    corpus.write_text(_stdlib_text())
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(d / "tokenizer"), vocab_size=512, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        control_symbols=["<PRE>", "<SUF>", "<MID>", "<EOT>"], minloglevel=2, num_threads=1)
    return str(d)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, spm_tokenizer_dir) -> str:
    """A random 2-layer Llama with GQA and a 512-piece sentencepiece tokenizer."""
    import shutil

    d = tmp_path_factory.mktemp("tiny_llama")
    make_tiny_llama(str(d), vocab_size=512)
    shutil.copy(os.path.join(spm_tokenizer_dir, "tokenizer.model"), d / "tokenizer.model")
    return str(d)


# ---------------------------------------------------------------- other families (tests/engine/models/test_families.py)

_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
# Each style's special tokens and tokenizer_config.json, like the family's published files.
BPE_STYLES = {
    "qwen": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
              "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"],
             {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "add_prefix_space": False, "errors": "replace"}),
    "deepseek": (["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>",
                  "<|EOT|>"],
                 {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<｜begin▁of▁sentence｜>",
                  "eos_token": "<｜end▁of▁sentence｜>", "add_bos_token": True, "add_eos_token": False, "legacy": True}),
    "starcoder": (["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>",
                   "<file_sep>"],
                  {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "add_prefix_space": False}),
    "gpt2": (["<|endoftext|>"],
             {"tokenizer_class": "CodeGenTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "add_prefix_space": False}),
}
BPE_SAMPLES = "s = 'héllo wörld ✓ 漢字 🐍 ñandú Ω≈ç'\nx = 12345  # éèê\n"


def make_byte_bpe_tokenizer(path: str, style: str, vocab_size: int = 420) -> str:
    """Saves a small byte-level BPE tokenizer.json (trained in memory) with `style`'s special
    tokens, pre-tokenizer and tokenizer_config.json under `path`."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials, tokenizer_config = BPE_STYLES[style]
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=style in ("starcoder", "gpt2"))
    if style == "qwen":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_QWEN_SPLIT), "isolated"), byte_level])
    elif style == "deepseek":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[\r\n]"), "isolated"),
            pre_tokenizers.Split(Regex(r"\s?[A-Za-z]+"), "isolated"),
            pre_tokenizers.Split(Regex(r"\s?[!-/:-~]+"), "isolated"), pre_tokenizers.Digits(individual_digits=True),
            byte_level])
    elif style == "starcoder":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_stdlib_text(60_000), BPE_SAMPLES * 300], trainer)
    if style == "deepseek":  # its tokenizer.json adds the BOS itself
        tok.post_processor = processors.TemplateProcessing(single=f"{specials[0]} $A", pair=f"{specials[0]} $A $B",
                                                           special_tokens=[(specials[0], tok.token_to_id(specials[0]))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, ensure_ascii=False)
    return path


# family -> (transformers config and model class names, tokenizer style, config overrides)
FAMILY_MODELS = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen", dict(tie_word_embeddings=True, rms_norm_eps=1e-6)),
    "deepseek": ("LlamaConfig", "LlamaForCausalLM", "deepseek",
                 dict(rope_scaling={"rope_type": "linear", "factor": 4.0}, rope_theta=100000.0, rms_norm_eps=1e-6)),
    # Llama 3.1's and YaRN's rope scaling, with a pretraining context the tests' positions pass
    "llama3": ("LlamaConfig", "LlamaForCausalLM", "deepseek",
               dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64}, rope_theta=500000.0, rms_norm_eps=1e-5)),
    "qwen2_yarn": ("Qwen2Config", "Qwen2ForCausalLM", "qwen",
                   dict(tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0,
                        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                                      "beta_fast": 8.0})),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "qwen",
              dict(tie_word_embeddings=True, rms_norm_eps=1e-6, head_dim=32)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen",
                  dict(tie_word_embeddings=False, rms_norm_eps=1e-6, head_dim=16, num_experts=8, num_experts_per_tok=2,
                       moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1])),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", "qwen",
                  dict(tie_word_embeddings=False, rms_norm_eps=1e-6, num_experts=8, num_experts_per_tok=2,
                       moe_intermediate_size=32, shared_expert_intermediate_size=48, norm_topk_prob=False,
                       decoder_sparse_step=1, mlp_only_layers=[])),
    # DeepSeek-Coder-V2-Lite's layout: latent attention (no query latent), YaRN with mscale, 8 experts
    # (2 a token, unrenormalized, scaled), a shared expert, the first layer dense
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", "deepseek",
                    dict(num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16,
                         qk_rope_head_dim=8, v_head_dim=16,
                         n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
                         first_k_dense_replace=1, routed_scaling_factor=1.5, norm_topk_prob=False,
                         topk_method="greedy", rms_norm_eps=1e-6, tie_word_embeddings=False,
                         rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                                       "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707})),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", "deepseek",
              dict(head_dim=32, rms_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
    # a windowed layer (its own theta) and a full one (linear rope scaling), sandwich norms, q/k norms
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "deepseek",
               dict(head_dim=16, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                    sliding_window=8, query_pre_attn_scalar=24, layer_types=["sliding_attention", "full_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "qwen",
             dict(partial_rotary_factor=0.75, sliding_window=8, pad_token_id=0, rms_norm_eps=1e-5)),
    # Phi-3.5 / Phi-4-mini's long-context scaling, served up to its pretraining context (96 here)
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM", "qwen",
                      dict(partial_rotary_factor=0.75, pad_token_id=0, rms_norm_eps=1e-5,
                           original_max_position_embeddings=96,
                           rope_scaling={"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.0],
                                         "long_factor": [1.0, 1.5, 2.5, 4.0, 8.0, 16.0]})),
    "granite": ("GraniteConfig", "GraniteForCausalLM", "starcoder",
                dict(embedding_multiplier=3.0, attention_multiplier=0.1, residual_multiplier=0.5, logits_scaling=2.0,
                     rms_norm_eps=1e-5)),
    "mistral": ("MistralConfig", "MistralForCausalLM", "deepseek", dict(sliding_window=8, rms_norm_eps=1e-5)),
    # sandwich norms under GLM's names, GPT-J-style rotary over half of each head, q/k/v biases
    "glm4": ("Glm4Config", "Glm4ForCausalLM", "qwen", dict(head_dim=16, partial_rotary_factor=0.5, rms_norm_eps=1e-5,
                                                           attention_bias=True, pad_token_id=0)),
    # q/k/v biases and one on the output projection
    "seed_oss": ("SeedOssConfig", "SeedOssForCausalLM", "qwen", dict(head_dim=16, attention_bias=True,
                                                                     attention_out_bias=True, rms_norm_eps=1e-6)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", "starcoder",
                   dict(sliding_window=8, hidden_act="gelu_pytorch_tanh", norm_epsilon=1e-5, use_bias=True)),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", "starcoder",
                    dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, n_inner=None, multi_query=True,
                         activation_function="gelu_pytorch_tanh")),
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM", "gpt2",
                dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=512, n_inner=None)),
}


def make_tiny_family(path: str, family: str, vocab_size: int = 512, seed: int = 0, **overrides) -> str:
    """Saves a random model of `family` (Hugging Face format, transformers' own classes) with a
    byte-level BPE tokenizer of that family's style under `path`. Weights are scaled up and
    rounded to bf16 values like make_tiny_llama's; biases and norm weights are random too, so that
    a wrong one shows."""
    import json

    import transformers
    from tokenizers import Tokenizer

    config_name, model_name, style, family_overrides = FAMILY_MODELS[family]
    make_byte_bpe_tokenizer(path, style)
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    specials = BPE_STYLES[style][0]
    eos = tok.token_to_id(BPE_STYLES[style][1]["eos_token"])
    bos = tok.token_to_id(specials[0])
    cfg = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos)
    if family not in ("codegen", "gpt_bigcode"):  # those name their sizes in their own way
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512)
    cfg.update(family_overrides)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**cfg))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:  # matrices, and stacks of them (experts)
                p.mul_(8.0)
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            else:  # norm weights
                p.copy_(1.0 + torch.randn_like(p) * 0.2)
            p.copy_(p.bfloat16().float())
    model.save_pretrained(path, safe_serialization=True)
    if family == "qwen2":  # several EOS ids, as Qwen2.5-Coder's generation_config.json lists them
        file = os.path.join(path, "generation_config.json")
        with open(file) as f:
            gen = json.load(f)
        gen["eos_token_id"] = [eos, tok.token_to_id("<|im_end|>")]
        with open(file, "w") as f:
            json.dump(gen, f)
    return path
