"""benchmarks/overlap_steps.py: the simulated device runs one step at a time for the table's time,
a read-back waits for its step, and with overlap on the engine queues steps ahead beside it."""
from __future__ import annotations

import time

import pytest

import overlap_steps
from engine import DEFAULT_MODEL
from engine.tokenizer import Tokenizer
from tests.benchmarks.test_host_overhead import _requests

STEP_S = 0.004


def _table(seqs: int, rows: int, measured_s: float) -> float:
    return STEP_S


def test_the_device_runs_one_step_at_a_time_and_a_read_back_waits_for_its_step():
    device = overlap_steps.SimulatedDevice(_table)
    start = time.perf_counter()
    first, second = device.queue(1, 1), device.queue(1, 1)  # the second waits for the first
    assert second - first == pytest.approx(STEP_S) and first >= start + STEP_S
    overlap_steps.SimulatedDevice.wait_until(second)
    assert time.perf_counter() >= start + 2 * STEP_S


def test_the_device_is_busy_while_its_steps_run_and_idle_between_them():
    device = overlap_steps.SimulatedDevice(_table)
    device.runs = [(10.0, 11.0), (12.0, 13.0), (13.0, 15.0)]
    assert device.busy(10.0, 15.0) == pytest.approx(0.8)
    assert device.busy(10.5, 12.5) == pytest.approx(0.5)  # steps cut at the window's edges
    assert device.busy(15.0, 20.0) == 0.0 and device.busy(3.0, 3.0) == 0.0


def test_overlapped_runs_queue_steps_ahead():
    tokenizer = Tokenizer(DEFAULT_MODEL)
    rows = {overlap: overlap_steps.run(4, False, overlap, _requests(tokenizer), tokenizer, _table, steps=8, warmup=2)
            for overlap in ("off", "on")}
    assert rows["off"]["overlapped"] == 0 and rows["on"]["overlapped"] > 0
    for row in rows.values():
        assert row["steps"] == 8 and row["tokens_per_s"] > 0 and 0.0 < row["device_busy"] <= 1.0


def test_drafting_is_set_against_plain_decoding_at_each_batch_on_both_sides():
    rows = [{"batch": 4, "drafting": False, "on_tokens_per_s": 100.0, "off_tokens_per_s": 90.0, "on_busy": 1.0},
            {"batch": 4, "drafting": True, "on_tokens_per_s": 150.0, "off_tokens_per_s": 180.0, "on_busy": 0.75},
            {"batch": 8, "drafting": True, "on_tokens_per_s": 1.0, "off_tokens_per_s": 1.0,
             "on_busy": 1.0}]  # no plain run: left out
    assert overlap_steps.drafting_over_plain(rows) == [[4, "1.500", "2.000", "2.000"]]
