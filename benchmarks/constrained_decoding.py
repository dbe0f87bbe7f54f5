"""What holding the output to JSON costs: plain sampling, JSON mode (one JSON object) and a JSON
schema, on the same prompts, in turn in one process, round after round.

The embedded model writes code, not JSON: its own choice is often refused, and each refusal finds
the first allowed token of the row's order on the host (engine/json_choice.py, engine/json_object.py,
engine/json_schema.py). A model that follows the constraint is refused seldom and pays far less;
this is the cost where the model fights it. Printed: seconds per 1,000 generated tokens (the
median round), and each constrained mode over plain.

    python benchmarks/constrained_decoding.py
    python benchmarks/constrained_decoding.py --rounds 5 --samples 8 --max-tokens 128
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
import measure  # noqa: E402

from engine import DEFAULT_MODEL, LLM, SamplingParams  # noqa: E402
from engine.json_schema import compile_schema  # noqa: E402

PROMPTS = ["# the forecast request\nrequest = ", "def weather():\n    return ", 'config = {"a": 1}\nsame = ', "data = "]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer"},
                                           "units": {"enum": ["C", "F"]}},
          "required": ["city", "days", "units"], "additionalProperties": False}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (4 prompts)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    llm = LLM(DEFAULT_MODEL, num_kv_blocks=1024, block_size=16)
    modes = {"plain": {}, "json_object": {"json_object": True},
             "json_schema": {"json_object": True, "json_schema": compile_schema(SCHEMA)}}
    per_1k: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(args.rounds):
        for mode, extra in modes.items():
            params = SamplingParams(max_tokens=args.max_tokens, temperature=0.8, seed=r, n=args.samples, **extra)
            start = time.perf_counter()
            outputs = llm.generate(PROMPTS, params, use_tqdm=False)
            seconds = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
            per_1k[mode].append(seconds / tokens * 1000)
    median = {mode: statistics.median(v) for mode, v in per_1k.items()}
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args),
               "seconds_per_1k_tokens": per_1k, "median": median}
    lines = [f"# Constrained decoding on the demo model ({results['date']})", "",
             f"machine: {results['machine']}", "",
             f"{len(PROMPTS)} prompts x {args.samples} samples, up to {args.max_tokens} tokens, T=0.8, "
             f"{args.rounds} rounds, the modes in turn.", ""]
    lines += measure.markdown_table(
        ["mode", "s per 1,000 tokens (median)", "rounds", "over plain"],
        [[mode, f"{median[mode]:.3f}", " ".join(f"{v:.3f}" for v in per_1k[mode]),
          f"{median[mode] / median['plain']:.2f}x"] for mode in modes])
    measure.write_results(args.out, "constrained_decoding", results, "\n".join(lines))
    return results


if __name__ == "__main__":
    main()
