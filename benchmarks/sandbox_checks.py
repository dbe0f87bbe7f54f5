"""How fast the sandbox checks completions: checks per second and the machine's CPU per check.

Each check is `check_program` (fastcodellama/evaluation/sandbox.py) of a HumanEval problem with a
completion, as `evaluate` and `humaneval` run them: its own namespaces, private root, uid, seccomp
and Landlock, the test run outside it. The completions are the problems' canonical solutions (they
pass: every test runs) and a wrong one each (`return None`: they fail), or the samples of a file
the job wrote (--samples). Each worker count runs in a thread pool after one warm-up check (which
starts the evaluator's forking interpreter); CPU per check is the whole machine's busy time over
the run (from /proc/stat: the checks' processes are not this one's children), divided by the checks.

    python benchmarks/sandbox_checks.py                                # 1 and 4 workers
    python benchmarks/sandbox_checks.py --samples samples.jsonl --workers 4

Two versions of the code side by side: run it alternately with PYTHONPATH set to each checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402

from fastcodellama.evaluation.evaluate import problem_check  # noqa: E402
from fastcodellama.evaluation.problems import load_problems  # noqa: E402
from fastcodellama.evaluation.sandbox import Check, check_program  # noqa: E402

WRONG = "    return None\n"


def checks_of(problems: int, samples: str | None) -> list[Check]:
    """The checks to run: a samples file's, or each of the first problems with its canonical
    solution and with a wrong completion."""
    found = load_problems()
    if samples:
        with open(samples, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [problem_check(found[r["task_id"]], r["completion"]) for r in rows]
    chosen = list(found.values())[:problems]
    return [problem_check(p, completion) for p in chosen for completion in (p.canonical_solution, WRONG)]


def run(checks: list[Check], workers: int, timeout: float) -> dict:
    check_program(checks[0], timeout)  # the evaluator's forking interpreter starts here, not in the timing
    busy, start = measure.busy_cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda c: check_program(c, timeout), checks))
    wall, busy = time.perf_counter() - start, measure.busy_cpu_seconds() - busy
    return {"workers": workers, "checks": len(checks), "wall_s": wall, "checks_per_s": len(checks) / wall,
            "cpu_ms_per_check": 1e3 * busy / len(checks), "statuses": dict(Counter(r.status for r in results))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,4", help="comma-separated worker counts")
    ap.add_argument("--problems", type=int, default=40, help="problems, each checked twice (without --samples)")
    ap.add_argument("--samples", default=None, help="a samples file (task_id, completion) to check instead")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    checks = checks_of(args.problems, args.samples)
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        row = run(checks, workers, args.timeout)
        rows.append(row)
        print(f"{workers} workers: {row['checks_per_s']:.1f} checks/s, {row['cpu_ms_per_check']:.1f} ms of CPU a "
              f"check, {row['statuses']}", flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": rows}
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    source = results["args"]["samples"] or f"{results['args']['problems']} problems, canonical and wrong"
    lines = [f"# Sandbox checks ({results['date']})", "", f"machine: {results['machine']}", "",
             f"checks: {source}; CPU: the whole machine's busy time per check", ""]
    lines += measure.markdown_table(
        ["workers", "checks", "checks/s", "CPU ms a check", "statuses"],
        [[r["workers"], r["checks"], f"{r['checks_per_s']:.1f}", f"{r['cpu_ms_per_check']:.1f}",
          ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))] for r in results["rows"]])
    measure.write_results(out_dir, "sandbox_checks", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
