"""What building a server's outputs costs the host as its streams grow long.

A server takes every changed request's output at every step (`collect="all"`), the HumanEval job
only the finished ones. Two engines on the stub forward (engine.models.stub.StubModel: a forward
that costs nothing, greedy rows), each with the same streams of the same length, one collecting
every output and one the finished only, step in turn; each step's CPU time is kept by quarter of
the outputs' length. Their difference is what the outputs cost: were any part of an output copied
whole at each step (its tokens, their logprobs), it would grow with the streams' length, and the
last quarter's difference would be several times the first's.

    python benchmarks/long_streams.py                       # 256 streams of 1,900 tokens
    python benchmarks/long_streams.py --streams 64 --logprobs
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")

import measure  # noqa: E402

from engine import DEFAULT_MODEL, EngineConfig, SamplingParams  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.models.registry import read_model_config  # noqa: E402
from engine.models.stub import StubModel  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

COLLECT = ("all", "finished")
QUARTERS = 4


def build(streams: int, tokens: int, logprobs: bool, tokenizer: Tokenizer) -> LLMEngine:
    config = EngineConfig(max_num_seqs=streams, max_num_batched_tokens=max(2048, streams),
                          num_kv_blocks=streams * (tokens + 64) // 16 + 64)
    model = StubModel(read_model_config(DEFAULT_MODEL), favourite=tokenizer.encode("x")[-1])
    engine = LLMEngine(config, model=model, tokenizer=tokenizer)
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, logprobs=logprobs)
    for i in range(streams):
        engine.add_request(f"r{i}", "def f():\n", params)
    return engine


def run(streams: int, tokens: int, logprobs: bool) -> dict:
    tokenizer = Tokenizer(DEFAULT_MODEL)
    engines = {c: build(streams, tokens, logprobs, tokenizer) for c in COLLECT}
    seconds = {c: [0.0] * QUARTERS for c in COLLECT}
    steps = {c: [0] * QUARTERS for c in COLLECT}
    for step in range(tokens + 1):
        quarter = min(QUARTERS - 1, QUARTERS * step // tokens)
        for collect, engine in engines.items():
            if not engine.has_unfinished():
                continue
            t0 = time.process_time()
            engine.step(collect=collect)
            seconds[collect][quarter] += time.process_time() - t0
            steps[collect][quarter] += 1
    ms = {c: [1e3 * s / max(1, n) for s, n in zip(seconds[c], steps[c])] for c in COLLECT}
    outputs = [a - f for a, f in zip(ms["all"], ms["finished"])]
    return {"streams": streams, "tokens": tokens, "logprobs": logprobs, "step_ms": ms, "outputs_ms": outputs}


def markdown(results: dict) -> str:
    r = results["row"]
    lines = [f"# Outputs of long streams ({results['date']})", "", f"machine: {results['machine']}", "",
             f"{r['streams']} streams of {r['tokens']} tokens, greedy, logprobs {'on' if r['logprobs'] else 'off'}, "
             "stub forward; CPU ms per step by quarter of the outputs' length, the two engines stepped in turn", "",
             "| quarter | every output (a server) | finished only (the job) | outputs' cost |", "|---|---|---|---|"]
    for q in range(QUARTERS):
        lines.append(f"| {q + 1} | {r['step_ms']['all'][q]:.3f} | {r['step_ms']['finished'][q]:.3f} | "
                     f"{r['outputs_ms'][q]:.3f} |")
    first, last = r["outputs_ms"][0], r["outputs_ms"][-1]
    lines += ["", f"outputs' cost, last quarter / first: {last / first:.2f}" if first > 0 else ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=1900, help="each stream's length (the embedded model's context: 2,048)")
    ap.add_argument("--logprobs", action="store_true", help="streams that ask for their tokens' logprobs")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args),
               "row": run(args.streams, args.tokens, args.logprobs)}
    measure.write_results(args.out, "long_streams", results, markdown(results))
    return results


if __name__ == "__main__":
    main()
