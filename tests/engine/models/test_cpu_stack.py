"""The decoder stack in one C call against the modules it replaces (engine/models/cpu_stack.py)."""
from __future__ import annotations

import random

import pytest
import torch

from engine.attention.cpu import KERNEL_QUERY, CpuMeta
from engine.config import DEFAULT_MODEL, EngineConfig
from engine.models.registry import read_model_config
from engine.kernels import cpu as kernels
from engine.model_runner import ModelRunner
from engine.models.cpu_stack import CpuDecoderStack
from engine.models.linear import SMALL_ROWS
from engine.step_batch import SeqChunk, StepBatch
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler: CPU kernels not built")

BLOCK = 8


def _runner(path: str, **overrides) -> ModelRunner:
    make_tiny_llama(path, vocab_size=256, seed=5, **overrides)
    cfg = EngineConfig(model=path, num_kv_blocks=400, block_size=BLOCK, device="cpu")
    return ModelRunner(cfg, read_model_config(path))


def _short_batch(rng: random.Random) -> StepBatch:
    """Decode, verify and prefill chunks; some sequences share their prompt's blocks (siblings)."""
    free = list(range(400))
    rng.shuffle(free)
    chunks = []
    for _ in range(5):
        prompt = [free.pop() for _ in range(rng.randint(0, 4))]
        for _ in range(rng.choice([1, 3])):
            ctx = rng.randint(len(prompt) * BLOCK + 1, len(prompt) * BLOCK + 120)
            q_len = min(ctx - len(prompt) * BLOCK, rng.choice([1, 1, 4, 9, 200]))
            own = -(-ctx // BLOCK) - len(prompt)
            table = tuple(prompt) + tuple(free.pop() for _ in range(own))
            tokens = tuple(rng.randrange(3, 256) for _ in range(q_len))
            chunks.append(SeqChunk(tokens, ctx - q_len, table, 0))
    return StepBatch.build(chunks, BLOCK, torch.device("cpu"))


@pytest.mark.parametrize("overrides", [
    {},
    dict(num_key_value_heads=4, rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=1e6),
    dict(num_key_value_heads=1, hidden_size=96, num_attention_heads=3, intermediate_size=200, num_hidden_layers=3),
])
def test_stack_equals_the_modules(tmp_path, overrides):
    runner = _runner(str(tmp_path), **overrides)
    model = runner.model
    stack = model.cpu_stack
    assert stack is not None
    torch.manual_seed(0)
    runner.kv_caches.copy_(torch.randn_like(runner.kv_caches))  # earlier tokens' K/V
    batch = _short_batch(random.Random(len(overrides)))
    meta = runner.backend.prepare(batch)
    x = model.embed_tokens(batch.input_ids)
    assert stack.takes(batch, meta, x)
    results = []
    for use_stack in (True, False):
        model.cpu_stack = stack if use_stack else None
        caches = runner.kv_caches.clone()
        hidden = model(batch, caches, runner.backend)
        results.append((hidden, caches))
    (fast, fast_caches), (ref, ref_caches) = results
    assert fast.shape == ref.shape == (batch.num_tokens, model.config.hidden_size)
    assert (fast - ref).abs().max().item() < 1e-4
    torch.testing.assert_close(fast_caches, ref_caches, rtol=1e-5, atol=1e-5)  # K/V values reach ~10
    assert not torch.equal(fast_caches, runner.kv_caches)  # the step's K/V were written


def test_stack_takes_only_short_steps(tmp_path):
    runner = _runner(str(tmp_path))
    stack = runner.model.cpu_stack
    x = torch.zeros(1, 64)
    prefill = StepBatch.build([SeqChunk(tuple(range(3, 103)), 0, tuple(range(13)), 99)], BLOCK, torch.device("cpu"))
    assert stack.takes(prefill, runner.backend.prepare(prefill), x)
    n = KERNEL_QUERY + 1  # past what the attention kernel takes: SDPA, so the modules
    long_prefill = StepBatch.build([SeqChunk((5,) * n, 0, tuple(range(-(-n // BLOCK))), n - 1)], BLOCK,
                                   torch.device("cpu"))
    assert not stack.takes(long_prefill, runner.backend.prepare(long_prefill), x)
    many = StepBatch.build([SeqChunk((5,), 3, (i,), 0) for i in range(SMALL_ROWS + 1)], BLOCK, torch.device("cpu"))
    assert not stack.takes(many, runner.backend.prepare(many), x)
    decode = StepBatch.build([SeqChunk((5,), 3, (0,), 0)], BLOCK, torch.device("cpu"))
    meta = runner.backend.prepare(decode)
    assert isinstance(meta, CpuMeta) and stack.takes(decode, meta, x)
    assert not stack.takes(decode, object(), x)  # another backend's metadata
    assert not stack.takes(decode, meta, x.double())


def test_no_stack_unless_every_projection_is_packed(tmp_path):
    runner = _runner(str(tmp_path))
    model = runner.model
    with torch.no_grad():  # a weight bf16 cannot hold exactly: that layer keeps F.linear
        model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    model.pack_for_cpu()
    assert model.layers[1].mlp.down_proj.packed is None
    assert model.cpu_stack is None and CpuDecoderStack.build(model) is None


def test_only_plain_llama_layers_run_in_the_stack():
    """The kernel computes Llama's layer: a config with anything else (sandwich norms: GLM-4's,
    Gemma 3's) keeps the modules, whatever else it shares with Llama."""
    import dataclasses

    from engine.models.cpu_stack import plain_llama

    mc = read_model_config(DEFAULT_MODEL)
    assert plain_llama(mc)
    for change in (dict(sandwich_norms=True), dict(qkv_bias=True), dict(rotary_style="gptj"), dict(qk_norm=True)):
        assert not plain_llama(dataclasses.replace(mc, **change)), change
