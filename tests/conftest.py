"""Shared fixtures: tiny random Llama checkpoints built in memory (no downloads)."""
from __future__ import annotations

import glob
import os
import sysconfig

import pytest
import torch


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
