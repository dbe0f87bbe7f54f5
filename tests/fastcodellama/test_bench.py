"""`fastcodellama bench` forwards to benchmarks/passk_throughput.py."""
from __future__ import annotations

import glob
import json

from fastcodellama import bench
from fastcodellama.cli import build_parser, main


def test_bench_parses_the_scripts_options():
    args = build_parser().parse_args(["bench", "--problems", "3", "--samples", "2", "--systems", "engine",
                                      "--slow-problems", "1", "--no-plot"])
    assert args.func is bench.run
    assert (args.problems, args.samples, args.systems, args.slow_problems, args.no_plot) == (3, 2, "engine", 1, True)
    assert args.max_tokens == 128 and args.workloads == "forced,greedy,passk"


def test_bench_runs_end_to_end(tmp_path):
    rc = main(["bench", "--problems", "1", "--max-tokens", "4", "--workloads", "greedy",
               "--systems", "engine,engine+fastcodellama", "--kv-cache-gb", "0.05", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = glob.glob(str(tmp_path / "passk_throughput_*.json"))
    rows = json.load(open(path))["workloads"]["greedy"]
    assert rows["engine"]["tokens"] == rows["engine+fastcodellama"]["tokens"] == 4
    assert rows["engine+fastcodellama"]["vs_engine_outputs"]["identical"] == 1
    assert rows["engine"]["peak_rss_mb"] > 0 and rows["engine"]["batch"] == "1"


def test_bench_rejects_empty_sizes(capsys):
    assert main(["bench", "--problems", "0", "--no-plot"]) == 2


def test_bench_help_in_a_fresh_interpreter():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "fastcodellama", "bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--slow-problems" in proc.stdout and "llama.cpp" in proc.stdout


def test_a_missing_script_breaks_only_bench(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "SCRIPT", str(tmp_path / "gone.py"))
    monkeypatch.delitem(__import__("sys").modules, "passk_throughput", raising=False)
    args = build_parser().parse_args(["bench"])
    assert bench.run(args) == 2 and "gone.py" in capsys.readouterr().err
    assert build_parser().parse_args(["serve", "--port", "0"]).port == 0
