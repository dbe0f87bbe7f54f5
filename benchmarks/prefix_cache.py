"""What the prefix cache saves an editor: a stream of requests, each the previous one's prompt
a few keystrokes longer (an editor sends the whole file before the cursor on every keystroke).

Two measurements, with the prefix cache on and off, side by side in one run:
  engine  prompt tokens the model computed over the whole stream (EngineStats.prompt_tokens_computed);
  server  time to first token of each request over real HTTP on loopback (/v1/completions,
          streamed), one request after the other as an editor sends them.

    python benchmarks/prefix_cache.py                     # 50 requests over a stdlib source file
    python benchmarks/prefix_cache.py --requests 100 --step-chars 20
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402

from engine import DEFAULT_MODEL, LLM, EngineConfig, SamplingParams  # noqa: E402


def editor_prompts(requests: int, step_chars: int, start_chars: int) -> list[str]:
    """The file before the cursor, growing by `step_chars` per request (a real source file)."""
    source = inspect.getsource(json.encoder)
    return [source[:start_chars + i * step_chars] for i in range(requests)]


def engine_run(prompts: list[str], caching: bool, max_tokens: int) -> dict:
    llm = LLM(DEFAULT_MODEL, enable_prefix_caching=caching)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    for prompt in prompts:  # one after the other, as an editor sends them
        llm.generate(prompt, params, use_tqdm=False)
    stats = llm.engine.stats()
    prompt_tokens = sum(len(llm.tokenizer.encode(p)) for p in prompts)
    return {"caching": caching, "prompt_tokens": prompt_tokens, "computed": stats.prompt_tokens_computed,
            "from_cache": stats.tokens_cached, "wall_s": time.perf_counter() - start}


async def server_run(prompts: list[str], caching: bool, max_tokens: int) -> dict:
    import aiohttp

    from api.config import ServerConfig
    from api.server import build_engine
    from api.testing import running_server

    engine = build_engine(EngineConfig(enable_prefix_caching=caching))
    ttft: list[float] = []
    async with running_server(engine, ServerConfig(served_model_names=("codemodel",), port=0)) as srv, \
            aiohttp.ClientSession() as session:
        for prompt in prompts:
            body = {"model": "codemodel", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "stream": True}
            start = time.perf_counter()
            async with session.post(f"{srv.url}/v1/completions", json=body) as r:
                first = None
                async for line in r.content:
                    if first is None and line.startswith(b"data: {"):
                        first = time.perf_counter() - start
                ttft.append(first if first is not None else time.perf_counter() - start)
    return {"caching": caching, "ttft_ms_mean": 1e3 * statistics.fmean(ttft), "ttft_ms_p50": 1e3 * statistics.median(ttft),
            "ttft_ms_p90": 1e3 * measure.percentile(ttft, 90), "ttft_ms": [round(1e3 * t, 2) for t in ttft]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--step-chars", type=int, default=40, help="characters typed between two requests")
    ap.add_argument("--start-chars", type=int, default=2000, help="the file before the cursor at the first request")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    prompts = editor_prompts(args.requests, args.step_chars, args.start_chars)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "engine": [], "server": []}
    for caching in (False, True, False, True):  # alternating: the machine's drift falls on both
        results["engine"].append(engine_run(prompts, caching, args.max_tokens))
        results["server"].append(asyncio.run(server_run(prompts, caching, args.max_tokens)))
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    a = results["args"]
    lines = [f"# Prefix cache on an editor's stream ({results['date']})", "", f"machine: {results['machine']}",
             f"{a['requests']} requests, each the previous prompt + {a['step_chars']} characters of "
             f"json/encoder.py (from {a['start_chars']}), {a['max_tokens']} tokens each, embedded model", "",
             "| prefix cache | prompt tokens | computed | taken from the cache | TTFT mean ms | p50 | p90 |",
             "|---|---|---|---|---|---|---|"]
    for e, s in zip(results["engine"], results["server"]):
        lines.append(f"| {'on' if e['caching'] else 'off'} | {e['prompt_tokens']} | {e['computed']} | {e['from_cache']} | "
                     f"{s['ttft_ms_mean']:.1f} | {s['ttft_ms_p50']:.1f} | {s['ttft_ms_p90']:.1f} |")
    measure.write_results(out_dir, "prefix_cache", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
