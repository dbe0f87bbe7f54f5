"""`fastcodellama generate`: complete prompts from the command line."""
from __future__ import annotations

import argparse
import json
import sys

from engine import SamplingParams
from fastcodellama.cli.options import add_engine_args, add_spec_args, build_llm


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="complete one or more prompts")
    p.add_argument("prompts", nargs="*", help="prompt texts (default: read one prompt from stdin)")
    p.add_argument("--num-samples", "-s", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per sample")
    add_engine_args(p)
    add_spec_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prompts = args.prompts or [sys.stdin.read()]
    try:
        params = SamplingParams(n=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, max_tokens=args.max_tokens, seed=args.seed, stop=tuple(args.stop))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    llm = build_llm(args)
    for prompt, out in zip(prompts, llm.generate(prompts, params)):
        for c in out.outputs:
            if args.json:
                print(json.dumps({"prompt": prompt, "index": c.index, "completion": c.text,
                                  "finish_reason": c.finish_reason, "tokens": len(c.token_ids)}))
            else:
                print(prompt + c.text)
                print(f"--- [{c.finish_reason}, {len(c.token_ids)} tokens]")
    return 0
