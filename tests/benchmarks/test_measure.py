from __future__ import annotations

import math
import mmap
import time

import numpy as np
import pytest

import measure


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    xs = rng.exponential(size=37).tolist()
    for q in (0, 50, 90, 99, 100):
        assert measure.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_summarize_and_empty():
    s = measure.summarize([1.0, 2.0, 3.0, 4.0])
    assert (s["p50"], s["mean"], s["n"]) == (2.5, 2.5, 4)
    empty = measure.summarize([])
    assert empty["n"] == 0 and math.isnan(empty["p99"]) and measure.fmt(empty["p99"]) == "-"


def test_peak_memory_sees_a_transient_allocation():
    with measure.PeakMemory(interval=0.002) as mem:
        # 256 MiB of fresh pages, written: resident whatever the heap held before, and far more than
        # what the threads earlier tests left behind may free meanwhile.
        block = mmap.mmap(-1, 256 * 2**20)
        np.frombuffer(block, dtype=np.uint8)[:] = 1
        # The polling thread must run once while the block lives: on a busy machine (OpenMP workers
        # spinning after the tests before) that can take longer than a fixed sleep. Wait for it, up to
        # a bound: if it never sees the block, the assertion below fails.
        deadline = time.monotonic() + 5.0
        while mem.peak_rss - mem.start_rss < 40 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.01)
        block.close()
    assert mem.as_dict()["rss_growth_mb"] > 40


def test_write_results(tmp_path):
    results = {"date": "2026-11-23T21:27:18+00:00", "x": float("nan"), "arr": np.arange(3)}
    paths = measure.write_results(str(tmp_path), "demo", results, "| a |")
    assert paths["json"].endswith("demo_20261123T212718.json")
    assert open(paths["md"]).read() == "| a |\n"
    assert '"arr": [' in open(paths["json"]).read()
