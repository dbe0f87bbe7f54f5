from __future__ import annotations

import math
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
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block.sum()
        time.sleep(0.05)  # the polling thread needs the interpreter lock once while the block lives
        del block
    assert mem.as_dict()["rss_growth_mb"] > 40


def test_write_results(tmp_path):
    results = {"date": "2026-11-23T21:27:18+00:00", "x": float("nan"), "arr": np.arange(3)}
    paths = measure.write_results(str(tmp_path), "demo", results, "| a |")
    assert paths["json"].endswith("demo_20261123T212718.json")
    assert open(paths["md"]).read() == "| a |\n"
    assert '"arr": [' in open(paths["json"]).read()
