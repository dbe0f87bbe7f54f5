"""The pass@k benchmark's own logic, on the embedded model with tiny sizes (the slow peers are not run)."""
from __future__ import annotations

import json

import pytest

import llamacpp_peer
import passk_throughput as pt
from engine import DEFAULT_MODEL
from engine.tokenizer import Tokenizer

PROMPTS = ["def fib(n):\n", "import os\n\n\ndef walk(path):\n"]


@pytest.fixture(scope="module")
def greedy() -> pt.Workload:
    tok = Tokenizer(DEFAULT_MODEL)
    return pt.Workload("greedy", [tok.encode(p) for p in PROMPTS], 1, 12, 0.0, 1.0, batch1=True)


def test_hf_and_engine_agree_greedy_with_eos_not_stopping(greedy):
    plain = pt.run_engine(DEFAULT_MODEL, greedy, speculate=False, kv_cache_gb=0.05)
    hf = pt.run_hf_generate(DEFAULT_MODEL, greedy, batch=16)
    assert plain["tokens"] == hf["tokens"] == 2 * 12  # exactly max_tokens each
    cmp = pt.compare_outputs(plain["outputs"], hf["outputs"])
    assert cmp["sequences"] == 2 and cmp["mean_common_prefix"] >= 6  # float order may flip a late near-tie


def test_compare_outputs():
    c = pt.compare_outputs([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]])
    assert c == {"sequences": 2, "identical": 1, "mean_common_prefix": 2.0, "first_divergence": 1}
    assert pt.compare_outputs([[1]], [[1]])["first_divergence"] is None


def test_recording_proposer_counts_accepts_and_delegates():
    calls = []

    class Inner:
        def record(self, seq_id, draft, n):
            calls.append((seq_id, n))

        def propose(self, queries, budget):
            return ["d"]

    rec = pt.RecordingProposer(Inner())
    rec.record(1, "x", 3)
    rec.record(2, "y", 3)
    rec.record(2, "y", 0)
    assert rec.accepted_hist == {3: 2, 0: 1} and calls == [(1, 3), (2, 3), (2, 0)]
    assert rec.propose([], 4) == ["d"]


def test_llamacpp_drafter_histogram():
    d = llamacpp_peer._CountingDrafter(lambda ids: ids[:0])
    d.calls = [(10, 5), (14, 5), (15, 0)]  # 3 decode forwards: +4 tokens (3 accepted), +1 (0), no draft
    forwards, hist = d.finish(20)
    assert forwards == 3 and hist == {3: 1, 0: 1}


def test_report_ratios_tables_and_plot(tmp_path):
    def row(tps, **kw):
        return {"tokens": 100, "wall_s": 100 / tps, "tokens_per_s": tps, "batch": "4", "subset": "2 prompts x 2",
                "outputs": [[1, 2]], "peak_rss_mb": 10.0, **kw}

    results = {"machine": "test box", "date": "2026-01-02T03:04:05+00:00", "model": DEFAULT_MODEL, "args": {},
               "notes": ["llama.cpp rows skipped"], "workloads": {"greedy": {
                   "hf_generate": row(50.0), "engine": row(100.0),
                   "engine+fastcodellama": row(300.0, accepted_hist={0: 2, 5: 3}, mean_accepted_per_verify=3.0,
                                               vs_engine_outputs={"sequences": 2, "identical": 1,
                                                                  "mean_common_prefix": 4.0, "first_divergence": 3}),
                   "llama.cpp": row(200.0)}}}
    paths = pt.report(results, str(tmp_path), plot=True)
    md = open(paths["md"]).read()
    assert "| greedy | engine+fastcodellama | 4 | 2 prompts x 2 | 100 | 0.3 | 300.0 | 3.00x | 6.00x | 1.50x |" in md
    assert "greedy/engine+fastcodellama: 1 of 2 sequences differ" in md and "- llama.cpp rows skipped" in md
    saved = json.load(open(paths["json"]))
    assert "outputs" not in saved["workloads"]["greedy"]["engine"]
    if "png" in paths:
        assert open(paths["png"], "rb").read(4) == b"\x89PNG"
