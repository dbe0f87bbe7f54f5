"""benchmarks/host_ab_checkouts.py: the other checkout's whole engine runs beside this one's in one
process, under names of its own, and leaves nothing behind."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

import host_ab_checkouts
import host_overhead
from engine import DEFAULT_MODEL
from engine.tokenizer import Tokenizer
from tests.benchmarks.test_host_overhead import _requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_base_engine_is_the_other_checkouts_and_both_give_the_same_tokens(tmp_path, monkeypatch):
    for pkg in host_ab_checkouts.PACKAGES:
        shutil.copytree(os.path.join(ROOT, pkg), tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    # The base checkout's drafting package builds no proposer: its engine decodes plainly.
    with open(tmp_path / "fastcodellama" / "drafting" / "__init__.py", "a") as f:
        f.write("\n\ndef build_proposer(config=None, search_time=None):\n    return None\n")
    monkeypatch.setattr(host_overhead, "busy_requests", lambda requests, batch: _requests(Tokenizer(DEFAULT_MODEL)))
    row = host_ab_checkouts.run(str(tmp_path), batch=4, fixed_k=1, steps=6, warmup=2)
    assert row["drafted"]["base"] == 0 and row["drafted"]["new"] > 0
    assert row["same_tokens"] and row["steps"] == 6 and row["base_ms"] > 0 and row["new_ms"] > 0
    # (the ratio of the seconds, not of the milliseconds: equal up to rounding)
    assert row["mean_ratio"] == pytest.approx(row["new_mean_ms"] / row["base_mean_ms"], rel=1e-12)
    assert not [m for m in sys.modules if m.split(".")[0] in ("engine_base", "fastcodellama_base")]


def test_the_copies_import_their_own_packages(tmp_path):
    host_ab_checkouts.copy_base(ROOT, str(tmp_path))
    text = (tmp_path / "engine_base" / "llm_engine.py").read_text()
    assert "from engine_base." in text and "from engine." not in text and "from fastcodellama." not in text


def test_gpu_costs_run_the_adaptive_policy_on_the_tables_clock_with_the_search_cost_it_is_told(tmp_path, monkeypatch):
    """--gpu-costs: both sides decide from the GPU's table and the same search cost, not from how
    long their own searches took, so that they draft alike."""
    for pkg in host_ab_checkouts.PACKAGES:
        shutil.copytree(os.path.join(ROOT, pkg), tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(host_overhead, "busy_requests", lambda requests, batch: _requests(Tokenizer(DEFAULT_MODEL)))
    told = []
    sim_clock = host_ab_checkouts.SimClock
    monkeypatch.setattr(host_ab_checkouts, "SimClock", lambda table: told.append(table) or sim_clock(table))
    row = host_ab_checkouts.run(str(tmp_path), batch=4, fixed_k=0, steps=12, warmup=2, search_us=7.0, search_rounds=2)
    assert len(told) == 2 and row["gpu_costs_search_us"] == 7.0
    assert row["search_queries"] > 0 and row["base_search_ms"] > 0 and row["new_search_ms"] > 0  # --search
    assert row["same_tokens"] and row["drafted"]["base"] == row["drafted"]["new"] > 0
