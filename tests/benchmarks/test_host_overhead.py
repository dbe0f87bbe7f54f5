"""benchmarks/host_overhead.py: each run steps a real engine (stub forward) the number of steps
asked, times every phase, and takes outputs the way --collect says."""
from __future__ import annotations

import pytest

import host_overhead
from traces import Request
from engine import DEFAULT_MODEL
from engine.llm_engine import LLMEngine
from engine.tokenizer import Tokenizer


def _requests(tokenizer: Tokenizer) -> list[Request]:
    """Two requests of three recorded samples each (of different lengths), as traces give them."""
    body = tuple(tokenizer.encode("    return a + b\n" * 4, add_bos=False))
    return [Request(f"t{i}", "def add(a, b):\n", (body, body[:7], body[:20])) for i in range(2)]


@pytest.mark.parametrize("collect", ["all", "finished"])
def test_a_run_times_its_steps_and_takes_outputs_as_asked(monkeypatch, collect):
    seen = []
    step = LLMEngine.step

    def recording(self, collect="all"):
        seen.append(collect)
        return step(self, collect)

    monkeypatch.setattr(LLMEngine, "step", recording)
    tokenizer = Tokenizer(DEFAULT_MODEL)
    row = host_overhead.run(4, True, _requests(tokenizer), tokenizer, steps=6, warmup=2, collect=collect)
    assert row["steps"] == 6 and seen == [collect] * 8
    for clock in host_overhead.CLOCKS:
        phases = row[clock]["phases_ms"]
        assert {"schedule", "step batch", "sampler", "outputs", "propose"} <= set(phases)
        assert row[clock]["host_without_sampler_ms"] > 0
