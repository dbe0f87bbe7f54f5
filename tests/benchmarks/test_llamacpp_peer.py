"""llama.cpp as a peer: same token ids, same greedy tokens. Skipped without llama-cpp-python or
without the cached GGUF (`python benchmarks/llamacpp_peer.py setup --install` makes both)."""
from __future__ import annotations

import os

import pytest

import llamacpp_peer as peer
from engine import DEFAULT_MODEL, LLM, SamplingParams
from engine.tokenizer import Tokenizer

PROMPTS = ["def fib(n):\n", "import os\n\n\ndef walk(path):\n", "  indented(x)  # tail\n", "héllo = 'wörld'\n"]


@pytest.fixture(scope="module")
def gguf() -> str:
    if not peer.available():
        pytest.skip("llama-cpp-python is not installed")
    path = peer.gguf_path(DEFAULT_MODEL)
    if not os.path.isfile(path):
        pytest.skip(f"no cached GGUF at {path}: run benchmarks/llamacpp_peer.py setup")
    return path


def test_staged_folder_states_the_prefix_space(tmp_path):
    staged = peer._stage_with_prefix_space(DEFAULT_MODEL, str(tmp_path / "m"))
    import json

    assert json.load(open(os.path.join(staged, "tokenizer_config.json")))["add_prefix_space"] is False
    assert os.path.realpath(os.path.join(staged, "model.safetensors")) == os.path.realpath(
        os.path.join(DEFAULT_MODEL, "model.safetensors"))


def test_llamacpp_tokenizer_gives_our_ids(gguf):
    agree = peer.token_agreement(gguf, DEFAULT_MODEL, PROMPTS)
    assert agree["identical"] == len(PROMPTS), agree["first_difference"]


def test_greedy_tokens_equal_ours_plain_batched_and_prompt_lookup(gguf):
    tok = Tokenizer(DEFAULT_MODEL)
    prompts = [tok.encode(p) for p in PROMPTS[:2]]
    ours = [o.outputs[0].token_ids for o in LLM(DEFAULT_MODEL, kv_cache_memory_gb=0.05).generate(
        prompts, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True), use_tqdm=False)]
    batched = peer.LlamaCppBatched(gguf, max_seqs=2, max_len=64)
    try:
        assert batched.generate(prompts, 1, 16) == ours
        sampled = batched.generate(prompts[:1], 2, 8, temperature=0.8, top_p=0.95, seed=1)
        assert [len(s) for s in sampled] == [8, 8]
    finally:
        batched.close()
    lookup = peer.LlamaCppPromptLookup(gguf, 64)
    stats = peer.RunStats()
    assert [lookup.generate_one(p, 16, stats=stats) for p in prompts] == ours
    assert stats.tokens == 32 and 1 <= stats.forwards <= 30
