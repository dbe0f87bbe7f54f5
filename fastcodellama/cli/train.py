"""`fastcodellama train`: trains (or fine-tunes) a small Llama on code, on CPU (fastcodellama.training)."""
from __future__ import annotations

import argparse
import sys

from fastcodellama.training.train import PRESETS, Trainer


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
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8, help="rows of --seq-len tokens per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=0, help="0: no step limit (use --max-minutes)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="wall-clock budget; training stops cleanly and saves (the cosine schedule follows it)")
    p.add_argument("--eval-every", type=int, default=200, help="steps between validation losses")
    p.add_argument("--eval-rows", type=int, default=64, help="validation rows of --seq-len tokens")
    p.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: by time only)")
    p.add_argument("--save-minutes", type=float, default=10.0, help="minutes between checkpoints (0: off)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fim-rate", type=float, default=0.25, help="share of chunks in fill-in-the-middle form")
    p.add_argument("--tokenizer-sample-mb", type=float, default=8.0,
                   help="MB of corpus lines the sentencepiece tokenizer is trained on (from scratch only)")


def run(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
    except ValueError as e:
        print(f"fastcodellama train: {e}", file=sys.stderr)
        return 2
    return Trainer(args).train()


def _check_args(args: argparse.Namespace) -> None:
    if not args.init and not args.preset:
        raise ValueError("give --preset (train from scratch) or --init DIR (fine-tune)")
    if args.max_steps <= 0 and args.max_minutes <= 0:
        raise ValueError("give --max-steps and/or --max-minutes")
    if not 0.0 <= args.fim_rate <= 1.0:
        raise ValueError("--fim-rate must be in [0, 1]")
    if args.seq_len < 8 or args.batch_size < 1:
        raise ValueError("--seq-len must be >= 8 and --batch-size >= 1")
