"""The `fastcodellama` command line: one module per subcommand, each with `add_parser`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes add_parser(subparsers); its parser sets `func(args) -> int`.
COMMAND_MODULES = (
    "fastcodellama.generate",
    "fastcodellama.train",
    "fastcodellama.humaneval",
    "fastcodellama.evaluate",
    "fastcodellama.select",
    "fastcodellama.bench",
    "api.serve_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcodellama", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
