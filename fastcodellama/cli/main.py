"""The `fastcodellama` command line: one module per subcommand, each with `add_parser`."""
from __future__ import annotations

import argparse
import sys

from fastcodellama.cli import evaluate, generate, humaneval, select, serve, train

COMMANDS = (generate, humaneval, evaluate, select, serve, train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcodellama", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
