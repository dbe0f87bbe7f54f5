"""The simulated device's cost tables and the busy machine its engine may learn from."""
from __future__ import annotations

import json

import pytest

from simulated_device import BusyMachine, SimClock, load_table


def _step_cost_result(path) -> str:
    curves = {"decode": [[1, 3.0], [8, 5.0], [64, 31.0]], "pairs": [[1, 3.1], [8, 9.0], [64, 52.0]],
              "verify": [[1, 2.8], [8, 4.5]]}
    path.write_text(json.dumps({"machine": "test", "kernel": curves, "reference": curves}))
    return str(path)


def test_a_step_cost_result_is_a_table_of_decode_pairs_and_verify_steps(tmp_path):
    table, described = load_table(_step_cost_result(tmp_path / "step_cost.json"))
    assert "step_cost.py" in described
    assert table.plain(8) == pytest.approx(5.0) and table.plain(64) == pytest.approx(31.0)
    assert table.extra(64, 64) == pytest.approx(21.0)  # 64 sequences with a draft token each
    assert table.extra(1, 7) == pytest.approx(1.5)  # one sequence verifying 8 tokens: 4.5 against 3.0


def test_the_busy_machine_only_adds_time_holds_its_load_a_while_and_repeats_by_seed():
    busy = BusyMachine(3)
    factors, loads = [], []
    for _ in range(600):
        factors.append(busy())
        loads.append(busy.load)
    assert all(f >= load for f, load in zip(factors, loads))
    changes = sum(a != b for a, b in zip(loads, loads[1:]))
    assert 3 <= changes <= 600 // 5 and len(set(loads)) >= 3
    again = BusyMachine(3)
    assert [again() for _ in range(600)] == factors
    other = BusyMachine(4)
    assert [other() for _ in range(600)] != factors


def test_the_clock_scores_the_table_and_tells_the_engine_the_busy_time(tmp_path):
    table, _ = load_table(_step_cost_result(tmp_path / "step_cost.json"))
    quiet, busy = SimClock(table), SimClock(table, BusyMachine(1))
    told = [(quiet(8, 8, 1.0), busy(8, 8, 1.0)) for _ in range(50)]
    assert quiet.seconds == pytest.approx(busy.seconds) == pytest.approx(50 * 0.005)
    assert quiet.host_seconds == pytest.approx(50 * 1.0)  # what the steps took here, kept apart
    assert all(q == pytest.approx(0.005) and b >= q for q, b in told) and any(b > 1.2 * q for q, b in told)


def test_a_run_scores_device_time_alone_and_with_this_hosts_time(tmp_path):
    """A greedy request replayed through the engine with drafting: every output its trace, and the
    host's step and proposer time counted beside the table's (never instead of it)."""
    from simulated_device import run
    from traces import Request

    from engine import DEFAULT_MODEL
    from engine.tokenizer import Tokenizer
    from fastcodellama.drafting import SpecConfig

    table, _ = load_table(_step_cost_result(tmp_path / "step_cost.json"))
    tokenizer = Tokenizer(DEFAULT_MODEL)
    body = tuple(tokenizer.encode("    return a + b\n" * 6, add_bos=False))
    result = run(table, "greedy", [Request("t0", "def add(a, b):\n", (body,))], 1, SpecConfig(), tokenizer)
    assert result["exact"] and result["leaked"] == 0 and result["drafted"] > 0
    assert result["host_step_s"] > 0 and result["propose_s"] > 0
    device, host = result["device_s"], result["host_step_s"] + result["propose_s"]
    assert result["tokens_per_s"] == pytest.approx(result["tokens"] / device)
    assert result["tokens_per_s_with_host"] == pytest.approx(result["tokens"] / (device + host))


def test_the_search_time_told_by_batch_size_is_read_off_its_points():
    """--search-us: one figure for every batch, or points by batch size, linear in the logarithm of
    the batch between them and the nearest beyond them; nonsense is refused."""
    import argparse

    from simulated_device import _interp_log, search_points

    assert search_points("80") == [(1, 80.0)]
    points = search_points("8@256,80@1")
    assert points == [(1, 80.0), (256, 8.0)]
    assert _interp_log(points, 1) == 80.0 and _interp_log(points, 512) == 8.0
    assert _interp_log(points, 16) == pytest.approx(44.0)  # 4 of the 8 doublings from 1 to 256: half way
    for bad in ("-1", "80@0", "x", "nan@4"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            search_points(bad)
