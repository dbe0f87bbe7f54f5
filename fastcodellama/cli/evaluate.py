"""`fastcodellama evaluate`: functional correctness (pass@k) of sampled completions, each sample
run in its own sandbox against its task's tests."""
from __future__ import annotations

import argparse
import sys
import time

from fastcodellama.cli import checks
from fastcodellama.cli.options import add_ray_args, ray_config
from fastcodellama.cli.values import positive_float, positive_int
from fastcodellama.evaluation.sandbox import SandboxUnavailable, default_workers, unsafe_no_sandbox
from fastcodellama.progress import Phases


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
    parser.add_argument("--workers", type=positive_int, default=default_workers(),
                        help="parallel sandboxes (default: twice the cores)")
    parser.add_argument("--timeout", type=positive_float, default=3.0, help="seconds per sample (default 3)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run completions even where the sandbox cannot isolate them (no namespaces, "
                             "unprivileged uid or seccomp): they then run with only what is left, possibly as you")
    add_ray_args(parser, replicas=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    checks.readable_file(args.samples, "samples file")
    if args.problems:
        checks.readable_file(args.problems, "problems file (--problems)")
    checks.output_file(f"{args.samples}_results.jsonl", "the results file beside the samples,")
    from fastcodellama.evaluation.evaluate import evaluate_samples, format_report
    from fastcodellama.evaluation.problems import load_problems
    from fastcodellama.evaluation.ray_sandbox import RaySandboxes

    phases = Phases()
    check_all = None
    if args.ray is not None:
        try:
            check_all = RaySandboxes(ray_config(args).address, workers_per_node=args.workers)
        except RuntimeError as e:
            print(f"fastcodellama evaluate: {e}", file=sys.stderr)
            return 2
    try:
        with phases("loading problems"):
            problems = load_problems(args.problems)
        with unsafe_no_sandbox(args.unsafe_no_sandbox):
            report = evaluate_samples(args.samples, problems, args.k, args.workers, args.timeout,
                                      check_all=check_all)
    except (OSError, ValueError, SandboxUnavailable) as e:
        print(f"fastcodellama evaluate: {e}", file=sys.stderr)
        return 2
    print(format_report(report, args.k))
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0
