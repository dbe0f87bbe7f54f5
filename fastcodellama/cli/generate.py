"""`fastcodellama generate`: complete prompts from the command line."""
from __future__ import annotations

import argparse
import json
import sys

from fastcodellama.cli import checks
from fastcodellama.cli.checks import CliError
from fastcodellama.cli.options import add_engine_args, add_spec_args, build_llm, engine_config, spec_config
from fastcodellama.cli.values import non_negative_float, non_negative_int, positive_int, probability
from fastcodellama.progress import Phases


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="complete one or more prompts")
    p.add_argument("prompts", nargs="*", help="prompt texts (default: read one prompt from stdin)")
    p.add_argument("--num-samples", "-s", type=positive_int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=non_negative_float, default=0.0)
    p.add_argument("--top-p", type=probability, default=1.0)
    p.add_argument("--top-k", type=non_negative_int, default=0)
    p.add_argument("--max-tokens", type=positive_int, default=128)
    p.add_argument("--seed", type=non_negative_int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per sample")
    add_engine_args(p)
    add_spec_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks.model_folder(args.model)
    if any(not s for s in args.stop):
        raise CliError("--stop wants a non-empty string")
    prompts = args.prompts or [sys.stdin.read()]
    if not all(p.strip() for p in prompts):
        raise CliError("a prompt is empty; give the prompt text as an argument or on stdin")
    phases = Phases()
    with phases("loading torch and the engine"):
        import engine.llm  # noqa: F401  (seconds: torch)
        from engine import SamplingParams
    checks.model_architecture(args.model)
    try:
        engine_config(args).torch_device(), spec_config(args)  # a GPU where torch sees none: one line now
        params = SamplingParams(n=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, max_tokens=args.max_tokens, seed=args.seed, stop=tuple(args.stop))
    except ValueError as e:
        raise CliError(str(e)) from None
    with phases(f"loading model {args.model}"):
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
