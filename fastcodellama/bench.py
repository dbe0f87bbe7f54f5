"""`fastcodellama bench`: the side-by-side pass@k throughput benchmark (benchmarks/passk_throughput.py).

benchmarks/ is not an installed package: the command runs the script of the source tree this package
lives in (an editable or in-place install), with the script's own options.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from types import ModuleType

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "passk_throughput.py")


def load_script() -> ModuleType:
    """benchmarks/passk_throughput.py as a module, with benchmarks/ on sys.path for its siblings."""
    if not os.path.isfile(SCRIPT):
        raise FileNotFoundError(f"{SCRIPT} not found: `fastcodellama bench` needs the source tree "
                                "(pip install -e .), not a wheel install")
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    loaded = sys.modules.get("passk_throughput")
    if loaded is not None and os.path.samefile(getattr(loaded, "__file__", "") or os.devnull, SCRIPT):
        return loaded
    spec = importlib.util.spec_from_file_location("passk_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="pass@k throughput side by side: HF generate, prompt lookup, engine, +fastcodellama, llama.cpp",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        load_script().build_parser(parser)
    except Exception as e:  # a missing or broken script must not take the other commands down
        parser.set_defaults(bench_error=f"{type(e).__name__}: {e}")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if getattr(args, "bench_error", None):
        print(f"fastcodellama bench: {args.bench_error}", file=sys.stderr)
        return 2
    return load_script().main_with(args)
