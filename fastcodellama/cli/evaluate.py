"""`fastcodellama evaluate`: functional correctness (pass@k) of sampled completions, each sample
run in its own sandbox against its task's tests."""
from __future__ import annotations

import argparse
import os
import sys

from fastcodellama.cli.options import add_ray_args, ray_config
from fastcodellama.evaluation.evaluate import evaluate_samples, format_report
from fastcodellama.evaluation.ray_sandbox import RaySandboxes


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k wants comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k wants positive integers, got {text!r}")
    return ks


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="pass@k of sampled completions, each run in a sandbox",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="jsonl with task_id and completion per line")
    parser.add_argument("--problems", default=None, help="problems jsonl(.gz) (default: HumanEval)")
    parser.add_argument("--k", type=_parse_ks, default=[1, 10, 100], help="e.g. 1,10,100 (default)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel sandboxes")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per sample (default 3)")
    add_ray_args(parser, replicas=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_all = None
    if args.ray is not None:
        try:
            check_all = RaySandboxes(ray_config(args).address, workers_per_node=args.workers)
        except RuntimeError as e:
            print(f"fastcodellama evaluate: {e}", file=sys.stderr)
            return 2
    try:
        report = evaluate_samples(args.samples, args.problems, args.k, args.workers, args.timeout,
                                  check_all=check_all)
    except (OSError, ValueError) as e:
        print(f"fastcodellama evaluate: {e}", file=sys.stderr)
        return 2
    print(format_report(report, args.k))
    return 0
