"""Loading a checkpoint into the runner: the model's storage, and what start-up imports."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import DEFAULT_MODEL
from engine.model_runner import load_model, zeroed
from engine.models.registry import read_model_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_loaded_model_holds_its_weights_in_the_asked_dtype_with_the_head_tied():
    config = read_model_config(DEFAULT_MODEL)
    assert config.tie_word_embeddings
    model = load_model(DEFAULT_MODEL, config, torch.bfloat16, torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight
    # The rotary tables are computed, in float32, after the storage is allocated.
    assert model.rotary.cos.dtype == torch.float32 and torch.equal(model.rotary.cos[0], torch.ones_like(model.rotary.cos[0]))


def test_building_an_engine_does_not_import_sympy():
    """Materializing the meta-device model must not go through torch's meta decompositions: they
    import sympy, most of a second of every command's start."""
    code = ("import sys\nfrom engine import DEFAULT_MODEL, EngineConfig\nfrom engine.llm_engine import LLMEngine\n"
            "LLMEngine(EngineConfig(model=DEFAULT_MODEL))\nprint('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_the_cpu_kv_cache_is_zeros_that_take_memory_only_where_written():
    before = _resident_bytes()
    cache = zeroed((256, 1024, 1024), torch.float32, torch.device("cpu"))  # 1 GiB
    assert _resident_bytes() - before < 64 * 2**20
    assert cache.shape == (256, 1024, 1024) and cache.dtype == torch.float32 and cache.is_contiguous()
    cache[3] = 1.0
    assert float(cache[3].sum()) == 1024 * 1024 and float(cache[2].sum()) == 0.0 and float(cache[-1].abs().max()) == 0.0
    half = zeroed((4, 8), torch.bfloat16, torch.device("cpu"))
    assert half.dtype == torch.bfloat16 and half.tolist() == [[0.0] * 8] * 4


def test_a_capture_that_fails_leaves_eager_steps_and_says_why(monkeypatch):
    from engine import LLM, SamplingParams
    from engine.model_runner import ModelRunner

    llm = LLM(num_kv_blocks=64)
    runner = llm.engine.runner
    runner.paths = dataclasses.replace(runner.paths, cuda_graphs=True)  # as a GPU's would say

    def broken(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(ModelRunner, "_capture", broken)
    assert runner._graphs() is None
    assert not runner.paths.cuda_graphs and "capture failed: RuntimeError" in runner.paths.describe()
    out = llm.generate(["def f(x):"], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_latent_attention_caches_one_plane_seen_as_keys_and_values(tmp_path, monkeypatch):
    """DeepSeek-V2's cached row is both key and value: one plane, so a memory budget holds twice the
    blocks, and the engine's tokens (siblings sharing their prompt's blocks, drafting on) are those
    of a cache that keeps the row twice."""
    from engine import LLM, SamplingParams
    from engine.model_runner import ModelRunner
    from tests.conftest import make_tiny_family

    path = make_tiny_family(str(tmp_path), "deepseek_v2")
    prompts = ["def add(a, b):\n    return", "class Stack:\n    def push(self, x):"]
    params = SamplingParams(n=3, temperature=0.8, seed=5, max_tokens=12)

    def run() -> tuple[ModelRunner, list[list[int]]]:
        llm = LLM(path, num_kv_blocks=40, block_size=4)
        outs = llm.generate(prompts, params, use_tqdm=False)
        return llm.engine.runner, [list(c.token_ids) for o in outs for c in o.outputs]

    runner, tokens = run()
    caches = runner.kv_caches
    assert caches.shape[1] == 2 and runner.kv_planes.shape[1] == 1
    assert caches[:, 0].data_ptr() == caches[:, 1].data_ptr() and caches.abs().sum() > 0
    monkeypatch.setattr(runner, "config", dataclasses.replace(runner.config, kv_cache_memory_gb=0.01))
    one_plane = runner._blocks_for_memory()
    monkeypatch.setattr(ModelRunner, "_planes", lambda self: 2)
    two_planes, twice = run()
    assert twice == tokens and two_planes.kv_planes.shape[1] == 2
    monkeypatch.setattr(two_planes, "config", runner.config)
    assert one_plane // 2 <= two_planes._blocks_for_memory() <= one_plane // 2 + 1
