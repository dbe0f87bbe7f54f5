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


def _replayed(engine: LLMEngine, requests: list[Request]) -> dict[str, list[list[int]]]:
    for i, r in enumerate(requests):
        engine.add_request(f"r{i}", r.prompt, host_overhead.replay_params("passk", r))
    done = {}
    while engine.has_unfinished():
        for o in engine.step(collect="finished"):
            done[o.request_id] = [c.token_ids for c in o.outputs]
    return done


@pytest.mark.parametrize("drafting", [False, True])
def test_device_logits_keep_one_column_and_replay_the_same_tokens(drafting):
    """--logits device: the host never holds a vocabulary's row, and the traces come out as they do
    with full rows (the sampler forces each recorded token either way)."""
    tokenizer = Tokenizer(DEFAULT_MODEL)
    requests = _requests(tokenizer)
    device = host_overhead.build_engine(4, drafting, tokenizer, "device")
    widths = []
    compute = device.runner.model.compute_logits
    device.runner.model.compute_logits = lambda hidden: widths.append(compute(hidden).shape[1]) or compute(hidden)
    host = host_overhead.build_engine(4, drafting, tokenizer, "host")
    got = _replayed(device, requests)
    assert set(widths) == {1}
    assert got == _replayed(host, requests)
    assert [tuple(ids) for ids in got["r0"]] == [c + (device.eos_id,) for c in requests[0].continuations]


def test_drafting_every_step_drafts_one_token_a_copy_where_the_adaptive_policy_may_not():
    """--fixed-k: the host's cost of a step where every sequence with a copy drafts (a GPU's large
    batch), not only of what this machine's costs make the adaptive policy draft."""
    tokenizer = Tokenizer(DEFAULT_MODEL)
    engine = host_overhead.build_engine(4, True, tokenizer, "device", fixed_k=1)
    drafts = []
    propose = engine._propose
    engine._propose = lambda: drafts.append(propose()) or drafts[-1]
    _replayed(engine, _requests(tokenizer))
    assert any(drafts) and all(len(d.tokens) == 1 for step in drafts for d in step.values())
    row = host_overhead.run(4, True, _requests(tokenizer), tokenizer, steps=6, warmup=2, logits="device", fixed_k=1)
    assert row["system"] == "every step, k=1" and row["drafted"] > 0


def test_gpu_costs_tell_the_engine_each_steps_time_from_the_table():
    """--table: the adaptive policy learns the GPU's step costs (not this host's clock), so it drafts
    as on that GPU; the host's time of those steps is what the row reports."""
    tokenizer = Tokenizer(DEFAULT_MODEL)
    engine = host_overhead.build_engine(4, True, tokenizer, "device", table=host_overhead.GPU_TABLE)
    told = []
    observe = engine.step_cost.observe
    engine.step_cost.observe = lambda seqs, rows, seconds: told.append((seqs, rows, seconds)) or observe(seqs, rows, seconds)
    _replayed(engine, _requests(tokenizer))
    table = host_overhead.load_table(host_overhead.GPU_TABLE)[0]
    assert told and all(seconds == pytest.approx(table(seqs, seqs + rows, 0.0)) for seqs, rows, seconds in told)
    row = host_overhead.run(4, True, _requests(tokenizer), tokenizer, steps=6, warmup=2, logits="device",
                            table=host_overhead.GPU_TABLE)
    assert row["system"] == "drafting, GPU costs" and row["steps"] == 6
