"""The `fastcodellama` command line: one module per subcommand, each with `add_parser` and `run`.

Nothing heavy loads here: parsing and checking the command line takes well under a second, so
`--help`, `--version` and mistakes in the arguments answer at once. Every mistake a user can make
ends in one line on stderr and a non-zero exit status, never a traceback (FASTCODELLAMA_DEBUG=1
shows the traceback of an unexpected error); Ctrl-C exits with status 130.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from fastcodellama.cli import evaluate, generate, humaneval, select, serve, train
from fastcodellama.cli.checks import CliError, Interrupted

COMMANDS = (generate, humaneval, evaluate, select, serve, train)

OVERVIEW = """\
fastcodellama samples code from code LLMs fast: HumanEval pass@k with copy-draft speculative
decoding (drafts copied from the prompt, the sample itself and its sibling samples, verified in
one batched forward, so the output is exactly what plain decoding gives).
Without --model it runs the embedded 6.8M-parameter demo model on the CPU; it writes
Python-looking code but solves almost no HumanEval problem: point --model at a checkpoint
folder (CodeLlama, Qwen2.5-Coder, Qwen3, Qwen3-Coder, DeepSeek-Coder, Codestral, CodeGemma, Phi-4,
GLM-4, Seed-OSS, StarCoder, WizardCoder, CodeGen) for real pass@k."""

EXAMPLES = """\
examples:
  fastcodellama generate "def fib(n):" --max-tokens 64
  fastcodellama humaneval --limit 20 --passk 10 --max-tokens 128 --output_data_fn samples.jsonl
  fastcodellama evaluate samples.jsonl --k 1,10
  fastcodellama select samples.jsonl --submit 1
  fastcodellama serve --port 8000            (OpenAI and Copilot compatible, see README)

`fastcodellama COMMAND --help` lists a command's options.
Python: from fastcodellama import complete; print(complete("def fib(n):"))"""


def version() -> str:
    from fastcodellama import __version__

    return __version__


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad argument in one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fastcodellama", description=OVERVIEW, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastcodellama {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    prog = "fastcodellama"
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version, a bad argument: already printed
            return e.code if isinstance(e.code, int) else 2
        prog = f"fastcodellama {args.command}"
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an unforeseen failure: still one line, the traceback on demand
        if os.environ.get("FASTCODELLAMA_DEBUG"):
            raise
        detail = " ".join(str(e).split()) or "(no message)"
        print(f"{prog}: error: {type(e).__name__}: {detail} (FASTCODELLAMA_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
