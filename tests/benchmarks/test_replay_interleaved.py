"""benchmarks/replay_interleaved.py: two engines, plain and drafting, replay the same recorded
samples stepping in turn; each output equals its trace, no block is left held, and each engine's
time is its own steps' time."""
from __future__ import annotations

import pytest
import replay_interleaved
from engine import DEFAULT_MODEL
from engine.tokenizer import Tokenizer
from fastcodellama.drafting import SpecConfig
from tests.benchmarks.in_turn_recording import record_steps
from tests.benchmarks.test_host_overhead import _requests


def test_both_engines_replay_every_trace_exactly_stepping_in_turn(monkeypatch):
    steps = record_steps(monkeypatch, replay_interleaved.TimedEngine, lambda e: e.drafting)
    requests = _requests(Tokenizer(DEFAULT_MODEL))
    plain, draft = replay_interleaved.run(DEFAULT_MODEL, requests, "greedy", 2)
    for row in (plain, draft):
        assert row["replay_exact"] and row["leaked_blocks"] == 0
        assert row["tokens"] == sum(len(c) + 1 for r in requests for c in r.continuations)  # + EOS
        assert 0 < row["wall_s"] and row["tokens_per_s"] == row["tokens"] / row["wall_s"]
    assert not plain["drafting"] and draft["drafting"]
    # In turn, the order swapped each round, while both have work; the one left alone goes on.
    both = min(steps.count(False), steps.count(True))
    assert steps[:4] == [False, True, True, False] and both >= 2
    assert all({steps[2 * i], steps[2 * i + 1]} == {False, True} for i in range(both))


def test_fixed_draft_lengths_step_in_the_same_turns_and_set_the_best_in_hindsight(monkeypatch):
    kinds = record_steps(monkeypatch, replay_interleaved.TimedEngine,
                         lambda e: "plain" if not e.drafting else f"k={e.spec.k}" if e.spec else "adaptive")
    requests = _requests(Tokenizer(DEFAULT_MODEL))
    plain, draft = replay_interleaved.run(DEFAULT_MODEL, requests, "greedy", 2, fixed_k=(2, 5))
    assert kinds[:8] == ["plain", "adaptive", "k=2", "k=5", "k=5", "k=2", "adaptive", "plain"]
    assert draft["fixed_exact"]
    rates = draft["fixed_tokens_per_s"]
    assert set(rates) == {"plain", "fixed k=2", "fixed k=5"} and rates["plain"] == plain["tokens_per_s"]
    assert rates[draft["best_fixed"]] == max(rates.values())
    assert draft["vs_best_fixed"] == draft["tokens_per_s"] / max(rates.values())


def test_a_fixed_draft_length_reads_the_step_cost_file_but_never_writes_it(monkeypatch, tmp_path):
    """The fixed lengths are baselines in hindsight: what their steps teach must not seed the
    adaptive engine under test, which shares their file. The adaptive engine writes its own."""
    monkeypatch.setenv("FASTCODELLAMA_STEP_COST_DIR", str(tmp_path))
    requests = _requests(Tokenizer(DEFAULT_MODEL))
    fixed = replay_interleaved.TimedEngine(DEFAULT_MODEL, requests, "greedy", 2, True, SpecConfig(policy="fixed", k=2))
    while not fixed.done:
        fixed.step()
    assert fixed.engine.stats().spec.total_drafted > 0 and list(tmp_path.iterdir()) == []
    adaptive = replay_interleaved.TimedEngine(DEFAULT_MODEL, requests, "greedy", 2, True)
    while not adaptive.done:
        adaptive.step()
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]  # written once it ran out of work


def test_the_control_is_a_second_fixed_engine_set_against_the_same_best_without_itself(monkeypatch):
    kinds = record_steps(monkeypatch, replay_interleaved.TimedEngine,
                         lambda e: "plain" if not e.drafting else f"k={e.spec.k}" if e.spec else "adaptive")
    requests = _requests(Tokenizer(DEFAULT_MODEL))
    plain, draft = replay_interleaved.run(DEFAULT_MODEL, requests, "greedy", 2, fixed_k=(2,), control=2)
    assert kinds[:4] == ["plain", "adaptive", "k=2", "k=2"]  # the control steps in the same turns
    assert draft["fixed_exact"]  # its outputs checked like every fixed engine's
    rates = draft["fixed_tokens_per_s"]
    assert set(rates) == {"plain", "fixed k=2"}  # the best is chosen without the control
    assert draft["control_k"] == 2
    assert 0.0 < draft["control_vs_best_fixed"] != draft["vs_best_fixed"]


def test_the_control_must_be_one_of_the_fixed_lengths(capsys):
    with pytest.raises(SystemExit):
        replay_interleaved.main(["--fixed-k", "1,2", "--control", "4"])
    assert "--control 4 must be one of --fixed-k" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be one of the fixed draft lengths"):
        replay_interleaved.run(DEFAULT_MODEL, [], "greedy", 2, fixed_k=(), control=1)
