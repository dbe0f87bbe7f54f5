"""Share of completions whose prompt + completion parses as Python (a sanity figure for small models).

    python benchmarks/parse_rate.py samples.jsonl [--problems FILE]
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

from fastcodellama.evaluation.problems import load_problems, read_jsonl


def parses(source: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(source)
        return True
    except (SyntaxError, ValueError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("samples")
    ap.add_argument("--problems", default=None)
    args = ap.parse_args()
    problems = load_problems(args.problems)
    rows = list(read_jsonl(args.samples))
    ok = sum(parses(problems[r["task_id"]].prompt + r["completion"]) for r in rows)
    print(f"{ok}/{len(rows)} completions parse as Python ({ok / max(1, len(rows)):.1%})")


if __name__ == "__main__":
    main()
