"""The KV cache's size (engine/kv_budget.py): given, the CPU's default, or what a GPU's share of
its memory leaves, with the arithmetic checked on a CodeLlama-7B shape and an 80 GB card."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from engine import DEFAULT_MODEL, EngineConfig
from engine.kv_budget import CPU_DEFAULT_GB, MARGIN_BYTES, activation_bytes, kv_cache_bytes
from engine.models.registry import read_model_config
from engine.model_runner import ModelRunner

GIB = 2**30
CODELLAMA_7B = dict(vocab_size=32016, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                    num_kv_heads=32, head_dim=128)


@pytest.fixture
def shape_7b():
    return dataclasses.replace(read_model_config(DEFAULT_MODEL), **CODELLAMA_7B)


def test_a_given_size_and_the_cpus_default_are_taken_as_they_are(shape_7b):
    assert kv_cache_bytes(EngineConfig(kv_cache_memory_gb=3.5), shape_7b, 2, (10 * GIB, 80 * GIB)) == int(3.5 * GIB)
    assert kv_cache_bytes(EngineConfig(), shape_7b, 4, None) == int(CPU_DEFAULT_GB * GIB)


def test_a_gpu_gives_its_share_less_the_weights_and_a_steps_activations(shape_7b):
    total, weights = 80 * GIB, int(13.5 * GIB)
    config = EngineConfig(gpu_memory_utilization=0.9, max_num_batched_tokens=2048)
    reserve = activation_bytes(shape_7b, 2048, 2) + MARGIN_BYTES
    got = kv_cache_bytes(config, shape_7b, 2, (total - weights, total))
    assert got == int(0.9 * total) - weights - reserve
    # A 7B cache row is 0.5 MiB: about 110,000 tokens, where 2 GB held 4,096.
    assert 100_000 < got // (2 * 32 * 4096 * 2) < 120_000
    assert GIB < reserve < 3 * GIB  # a 2048-row step: hidden states, MLP products, float32 logits
    # Memory other processes hold is not the engine's to take; nor is more of the card when asked for less.
    assert kv_cache_bytes(config, shape_7b, 2, (total - weights - 10 * GIB, total)) == got - 10 * GIB
    smaller = kv_cache_bytes(EngineConfig(gpu_memory_utilization=0.5), shape_7b, 2, (total - weights, total))
    assert smaller == got - int(0.4 * total)
    # Larger steps keep more room for their activations.
    wider = kv_cache_bytes(EngineConfig(max_num_batched_tokens=8192), shape_7b, 2, (total - weights, total))
    assert wider < got


def test_a_gpu_with_nothing_left_for_the_cache_says_what_to_change(shape_7b):
    with pytest.raises(ValueError, match="gpu-memory-utilization.*max-num-batched-tokens.*kv-cache-memory-gb"):
        kv_cache_bytes(EngineConfig(gpu_memory_utilization=0.17), shape_7b, 2, (int(66.5 * GIB), 80 * GIB))


@pytest.mark.parametrize("bad", [dict(gpu_memory_utilization=0.0), dict(gpu_memory_utilization=1.5),
                                 dict(kv_cache_memory_gb=0.0), dict(kv_cache_memory_gb=-1.0)])
def test_sizes_that_make_no_sense_are_refused(bad):
    with pytest.raises(ValueError):
        EngineConfig(**bad)


def test_the_runner_sizes_its_cache_so_and_says_it(caplog):
    with caplog.at_level(logging.INFO, logger="engine"):
        runner = ModelRunner(EngineConfig(kv_cache_memory_gb=0.01), read_model_config(DEFAULT_MODEL))
    mc = runner.model_config
    per_block = 2 * mc.num_layers * 16 * mc.num_kv_heads * mc.head_dim * 4  # float32 on the CPU
    assert runner.num_blocks == int(0.01 * GIB) // per_block
    assert f"KV cache: {runner.num_blocks} blocks of 16 tokens" in caplog.text
