"""What the HTTP server costs the host: many streams served over a forward that costs nothing.

On a GPU the model's step is the device's; the server's Python (the engine's host step, then each
stream's chunk: the output routed to its request, its JSON, its socket) runs beside it, and where
it takes longer than the device's step the server, not the GPU, sets the throughput. Here the
server runs in a process of its own over the stub forward (engine.models.stub.StubModel: greedy
rows, full logits sampled on this CPU as a CPU engine does), and a client process opens N
streamed completions at once on loopback, each asking for T tokens (ignore_eos), reading its
server-sent events over raw sockets (a client's own parsing is not what is measured). Measured
beside it, in the server's process before it serves: the same engine stepping the same N
sequences alone (`collect="all"`, as the server takes outputs). Printed: tokens/s of each, and
the server's share of the engine's (1.0: serving costs nothing beyond the engine's step).

    python benchmarks/serve_host.py                         # 256 streams of 256 tokens, /v1/completions
    python benchmarks/serve_host.py --streams 64 --route chat
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")

import measure  # noqa: E402

ROUTES = {
    "completions": ("/v1/completions", lambda t: {"prompt": "def f():\n", "max_tokens": t}),
    "chat": ("/v1/chat/completions",
             lambda t: {"messages": [{"role": "user", "content": "def f():"}], "max_tokens": t}),
}


def serve(port: int, streams: int, tokens: int, device_ms: float = 0.0, stream_interval: int = 1) -> None:
    """The server's process: the engine alone first (its tokens/s on stdout), then the server.
    `device_ms`: each forward also waits this long with the GIL released, as a GPU's step does."""
    from aiohttp import web

    from api.config import ServerConfig
    from api.server import create_app
    from engine import DEFAULT_MODEL, EngineConfig, SamplingParams
    from engine.async_engine import AsyncEngine
    from engine.llm_engine import LLMEngine
    from engine.models.registry import read_model_config
    from engine.models.stub import StubModel
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(DEFAULT_MODEL)

    def engine() -> LLMEngine:
        config = EngineConfig(max_num_seqs=streams, max_num_batched_tokens=max(2048, streams),
                              num_kv_blocks=streams * (tokens + 64) // 16 + 64)
        model = StubModel(read_model_config(DEFAULT_MODEL), favourite=tokenizer.encode("x")[-1])
        if device_ms > 0:
            forward = model.forward

            def on_the_device(*args, **kwargs):
                time.sleep(device_ms / 1e3)  # the host thread waits for the device, the GIL released
                return forward(*args, **kwargs)

            model.forward = on_the_device
        return LLMEngine(config, model=model, tokenizer=tokenizer)

    alone = engine()
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    for i in range(streams):
        alone.add_request(f"r{i}", "def f():\n", params)
    alone.step(collect="all")  # the prompts
    t0, made = time.perf_counter(), 0
    while alone.has_unfinished():
        made += sum(len(c.token_ids) for o in alone.step(collect="all") if o.finished for c in o.outputs)
    print(json.dumps({"engine_tokens_per_s": made / (time.perf_counter() - t0)}), flush=True)
    config = ServerConfig(served_model_names=("stub",), max_connections=4 * streams + 64,
                          max_connections_per_client=4 * streams + 64, stream_interval=stream_interval)
    web.run_app(create_app(AsyncEngine(engine=engine()), config), host="127.0.0.1", port=port, print=None,
                access_log=None)


async def _one(port: int, request: bytes) -> tuple[int, float, bool]:
    """One stream: its events, when its first came, and whether it ended at its length."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    events, first, ended = 0, 0.0, False
    while line := await reader.readline():
        if line.startswith(b"data: {"):
            events += 1
            first = first or time.perf_counter()
            ended = ended or b'"finish_reason":"length"' in line
    writer.close()
    return events, first, ended


async def load(port: int, streams: int, tokens: int, route: str) -> dict:
    path, body = ROUTES[route]
    data = json.dumps({"model": "stub", "temperature": 0, "stream": True, "ignore_eos": True, **body(tokens)}).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
    t0 = time.perf_counter()
    done = await asyncio.gather(*[_one(port, request) for _ in range(streams)])
    seconds = time.perf_counter() - t0
    # Tokens from the first event on: the streams' prompts are admitted over several steps.
    start = min(first for _, first, _ in done)
    return {"seconds": seconds, "events": sum(e for e, _, _ in done), "ended": sum(end for _, _, end in done),
            "server_tokens_per_s": streams * tokens / (t0 + seconds - start)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(streams: int, tokens: int, route: str, device_ms: float = 0.0, stream_interval: int = 1) -> dict:
    port = _free_port()
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(port), "--streams",
                               str(streams), "--tokens", str(tokens), "--device-ms", str(device_ms),
                               "--stream-interval", str(stream_interval)],
                              stdout=subprocess.PIPE, text=True)
    try:
        engine = json.loads(server.stdout.readline())
        for _ in range(600):  # the server's start
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        asyncio.run(load(port, min(streams, 8), 8, route))  # warm-up
        row = asyncio.run(load(port, streams, tokens, route))
    finally:
        server.terminate()
        server.wait(timeout=30)
    row.update(engine, streams=streams, tokens=tokens, route=route, device_ms=device_ms,
               stream_interval=stream_interval)
    row["server_over_engine"] = row["server_tokens_per_s"] / row["engine_tokens_per_s"]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--route", choices=tuple(ROUTES), default="completions")
    ap.add_argument("--device-ms", type=float, default=0.0,
                    help="each forward also waits this long with the GIL released, as a GPU's step (0: not)")
    ap.add_argument("--stream-interval", type=int, default=1, help="the server's --stream-interval")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server's process, on this port
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.streams, args.tokens, args.device_ms, args.stream_interval)
        return {}
    row = run(args.streams, args.tokens, args.route, args.device_ms, args.stream_interval)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "row": row}
    md = "\n".join([
        f"# The server's host cost ({results['date']})", "", f"machine: {results['machine']}", "",
        f"{row['streams']} streamed {row['route']} of {row['tokens']} tokens at once on loopback, stub forward"
        + (f" waiting {row['device_ms']} ms a step as a device would" if row["device_ms"] else "")
        + (f", --stream-interval {row['stream_interval']}" if row["stream_interval"] > 1 else "") + " "
        "(the server in its own process; the engine alone stepped in that process before it served)", "",
        "| engine alone, tokens/s | server, tokens/s | server / engine |", "|---|---|---|",
        f"| {row['engine_tokens_per_s']:.0f} | {row['server_tokens_per_s']:.0f} | {row['server_over_engine']:.2f} |"])
    measure.write_results(args.out, "serve_host", results, md)
    return results


if __name__ == "__main__":
    main()
