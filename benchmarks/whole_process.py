"""What the user sees: the whole `fastcodellama humaneval` command, start-up included, with copy
drafting (`--type fastcodellama`) against plain decoding (`--type base`).

Each job runs once per type as a warm-up (the first command of a machine compiles the C kernels),
then alternately, the order swapped each round, so that both types share the machine's drifts.
Reported per job: the median wall time of each type and their ratio (base / fastcodellama: above
1.0 drafting saves the user time), and each round's pair.

    python benchmarks/whole_process.py                          # the README's job, 20-problem pass@1 and pass@10
    python benchmarks/whole_process.py --jobs readme --rounds 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402

TYPES = ("base", "fastcodellama")
JOBS: dict[str, list[str]] = {
    # README.md, command 1 (evaluated in the sandbox, as a newcomer runs it)
    "readme": ["--limit", "20", "--passk", "10", "--max-tokens", "128"],
    "pass1-20": ["--limit", "20", "--passk", "1", "--max-tokens", "256", "--no-evaluate"],
    "pass10-20": ["--limit", "20", "--passk", "10", "--temperature", "0.8", "--max-tokens", "256", "--no-evaluate"],
}


def run_once(job: str, kind: str, workdir: str) -> float:
    """Seconds the command took, start to exit; a failed command stops the benchmark."""
    out = os.path.join(workdir, f"{job}-{kind}.jsonl")
    cmd = [sys.executable, "-m", "fastcodellama", "humaneval", *JOBS[job], "--type", kind,
           "--output_data_fn", out, "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def measure_job(job: str, rounds: int, workdir: str) -> dict:
    for kind in TYPES:
        run_once(job, kind, workdir)
    times: dict[str, list[float]] = {k: [] for k in TYPES}
    for r in range(rounds):
        for kind in (TYPES if r % 2 == 0 else TYPES[::-1]):
            times[kind].append(run_once(job, kind, workdir))
        print(f"{job} round {r + 1}: base {times['base'][-1]:.2f} s, fastcodellama "
              f"{times['fastcodellama'][-1]:.2f} s", flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"job": job, "args": JOBS[job], "seconds": times, "median_s": median,
            "ratio": median["base"] / median["fastcodellama"],
            "pairs": [b / f for b, f in zip(times["base"], times["fastcodellama"])]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": []}
    with tempfile.TemporaryDirectory() as workdir:
        for job in args.jobs.split(","):
            results["rows"].append(measure_job(job, args.rounds, workdir))
    lines = [f"# Whole process: `fastcodellama humaneval` ({results['date']})", "", f"machine: {results['machine']}",
             "", "Wall time of the command, start-up included; median of the alternating rounds after one "
             "warm-up run of each type. ratio = base / fastcodellama (above 1.0: drafting saves time).", ""]
    lines += measure.markdown_table(
        ["job", "arguments", "base s", "fastcodellama s", "ratio", "pairs"],
        [[r["job"], " ".join(r["args"]), f"{r['median_s']['base']:.2f}", f"{r['median_s']['fastcodellama']:.2f}",
          f"{r['ratio']:.2f}x", " ".join(f"{p:.2f}" for p in r["pairs"])] for r in results["rows"]])
    text = "\n".join(lines) + "\n"
    measure.write_results(args.out, "whole_process", results, text)
    return results


if __name__ == "__main__":
    main()
