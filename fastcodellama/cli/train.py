"""`fastcodellama train`: trains (or fine-tunes) a small Llama on code, on CPU (fastcodellama.training)."""
from __future__ import annotations

import argparse
import os

from fastcodellama.cli import checks
from fastcodellama.cli.checks import CliError
from fastcodellama.cli.values import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from fastcodellama.training.train import AUTO_WARMUP_SHARE, AUTO_WARMUP_STEPS, PRESETS, Trainer


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the embedded code model (CPU)", description=__doc__)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="stdlib", help="'stdlib' (this interpreter's standard library) "
                   "or a jsonl file of {\"code\": ...} lines")
    p.add_argument("--validation", default=None, help="jsonl validation file (default with --data stdlib: "
                   "its held-out files; otherwise 2%% of --data)")
    p.add_argument("--output", required=True, help="checkpoint folder (Hugging Face format)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", default=None, help="fine-tune this Hugging Face checkpoint folder")
    start.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="train from scratch with this shape (tiny: the embedded model; micro: tests)")
    p.add_argument("--seq-len", type=positive_int, default=512)
    p.add_argument("--batch-size", type=positive_int, default=8, help="rows of --seq-len tokens per step")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=non_negative_int, default=None,
                   help=f"linear warm-up steps (default: {AUTO_WARMUP_STEPS} steps or {AUTO_WARMUP_SHARE * 100:g}%% of "
                        "the run, whichever ends first)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.1)
    p.add_argument("--grad-clip", type=positive_float, default=1.0)
    p.add_argument("--max-steps", type=non_negative_int, default=0, help="0: no step limit (use --max-minutes)")
    p.add_argument("--max-minutes", type=non_negative_float, default=0.0,
                   help="wall-clock budget; training stops cleanly and saves (the cosine schedule follows it)")
    p.add_argument("--eval-every", type=non_negative_int, default=200, help="steps between validation losses")
    p.add_argument("--eval-rows", type=positive_int, default=64, help="validation rows of --seq-len tokens")
    p.add_argument("--save-every", type=non_negative_int, default=0,
                   help="steps between checkpoints (0: by time only)")
    p.add_argument("--save-minutes", type=non_negative_float, default=10.0,
                   help="minutes between checkpoints (0: off)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--fim-rate", type=fraction, default=0.25, help="share of chunks in fill-in-the-middle form")
    p.add_argument("--tokenizer-sample-mb", type=positive_float, default=8.0,
                   help="MB of corpus lines the sentencepiece tokenizer is trained on (from scratch only)")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        return Trainer(args).train()
    except ValueError as e:  # bad data, a checkpoint it cannot fine-tune
        raise CliError(str(e)) from None


def _check_args(args: argparse.Namespace) -> None:
    """Everything the run is given, before anything loads (CliError)."""
    if not args.init and not args.preset:
        raise CliError("give --preset (train from scratch) or --init DIR (fine-tune)")
    if args.max_steps <= 0 and args.max_minutes <= 0:
        raise CliError("give --max-steps and/or --max-minutes")
    if args.seq_len < 8:
        raise CliError("--seq-len must be >= 8")
    if args.init:
        checks.model_folder(args.init, "--init", default="the model to fine-tune")
        if not os.path.isfile(os.path.join(args.init, "tokenizer.model")):
            raise CliError(f"--init {args.init} has no sentencepiece tokenizer.model (fine-tuning needs one)")
    if args.data != "stdlib":
        checks.readable_file(args.data, "training data (--data)")
    if args.validation:
        checks.readable_file(args.validation, "validation data (--validation)")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CliError(f"--output {args.output} is a file; give a folder")
