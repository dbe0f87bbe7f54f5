"""Ray scale-out: the pass@k job's throughput by number of replicas, against the single-process job.

Each row runs the same job (HumanEval prompts, the embedded model by default, Codex stops) into a
fresh samples file: single process with 1 and with R threads, then on a local Ray with 1..R
replicas of 1 thread each. Generation time only: the model load and the replicas' start-up are
left out of tokens/s (start-up is reported beside). Every row's samples are checked against the
single-process job's (as multisets of task, completion, finish reason, tokens).

    python benchmarks/ray_scaling.py --problems 20 --samples 10 --max-tokens 64 --replicas 1,2
Writes JSON and markdown under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import torch

from fastcodellama.cli.main import build_parser
from fastcodellama.job.ray_runner import generate_samples_on_ray
from fastcodellama.ray_cluster import connect
from fastcodellama.cli.humaneval import job_params
from fastcodellama.job.runner import generate_samples
from fastcodellama.job.tasks import load_tasks
from fastcodellama.cli.options import build_llm
from fastcodellama.cli.options import replica_spec
from fastcodellama.ray_cluster import RayConfig

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def job_args(opts: argparse.Namespace, output: str, threads: int) -> argparse.Namespace:
    model = ["--model", opts.model] if opts.model else []
    return build_parser().parse_args([
        "humaneval", "--limit", str(opts.problems), "--passk", str(opts.samples), "--max-tokens", str(opts.max_tokens),
        "--output_data_fn", output, "--no-evaluate", "--threads", str(threads), *model])


def samples(path: str) -> Counter:
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    return Counter((r["task_id"], r["completion"], r["finish_reason"], r["num_tokens"]) for r in rows)


def single_process(opts: argparse.Namespace, output: str, threads: int) -> dict:
    args = job_args(opts, output, threads)
    start = time.perf_counter()
    llm = build_llm(args)
    startup = time.perf_counter() - start
    stats = generate_samples(llm, load_tasks(None, args.limit), job_params(args), output, progress=False)
    torch.set_num_threads(1)
    return {"system": f"single process, {threads} thread(s)", "replicas": 0, "threads": threads, "startup_s": startup,
            "tokens": stats.tokens, "wall_s": stats.wall, "tokens_per_s": stats.tokens / stats.wall}


def on_ray(opts: argparse.Namespace, output: str, replicas: int) -> dict:
    args = job_args(opts, output, 1)
    stats, report = generate_samples_on_ray(load_tasks(None, args.limit), job_params(args), output, replica_spec(args),
                                            RayConfig(replicas=replicas), progress=False)
    return {"system": f"ray, {replicas} replica(s) x 1 thread", "replicas": replicas, "threads": replicas,
            "startup_s": report.startup_s, "tokens": stats.tokens, "wall_s": stats.wall,
            "tokens_per_s": stats.tokens / stats.wall, "tasks_by_replica": report.tasks_by_replica}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--replicas", default="1,2", help="replica counts to run, e.g. 1,2,4")
    ap.add_argument("--model", default=None, help="default: the embedded model")
    ap.add_argument("--out", default=RESULTS)
    opts = ap.parse_args()
    counts = [int(r) for r in opts.replicas.split(",")]
    connect(None, local_cpus=max(counts))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "single1.jsonl")
        rows.append(single_process(opts, reference, 1))
        if max(counts) > 1:
            output = os.path.join(tmp, "singleN.jsonl")
            rows.append(single_process(opts, output, max(counts)))
            rows[-1]["same_samples"] = samples(output) == samples(reference)
        for replicas in counts:
            output = os.path.join(tmp, f"ray{replicas}.jsonl")
            rows.append(on_ray(opts, output, replicas))
            rows[-1]["same_samples"] = samples(output) == samples(reference)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
               "workload": f"{opts.problems} problems x {opts.samples} samples, max {opts.max_tokens} tokens, "
                           f"T 0.8, top-p 0.95, Codex stops, copy drafts on", "rows": rows}
    write(results, opts.out)


def write(results: dict, out_dir: str) -> None:
    lines = [f"# Ray scaling ({results['date']})", "", f"machine: {results['machine']}",
             f"workload: {results['workload']}", "",
             "| system | threads in all | start-up s | tokens | wall s | tokens/s | vs single 1 thread | same samples |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['system']} | {r['threads']} | {r['startup_s']:.1f} | {r['tokens']} | "
                     f"{r['wall_s']:.1f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{r.get('same_samples', 'reference')} |")
    os.makedirs(out_dir, exist_ok=True)
    stamp = results["date"].replace(":", "").replace("-", "")[:15]
    with open(os.path.join(out_dir, f"ray_scaling_{stamp}.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, f"ray_scaling_{stamp}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
