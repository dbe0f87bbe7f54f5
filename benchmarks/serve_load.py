"""Serving latency under load: one aiohttp client, the same load and metrics for every server.

Loads, per target server (one server at a time):
  Poisson arrivals at each --rates value (requests/s, open loop: arrivals do not wait for replies);
  a closed-loop sweep over --concurrency (that many clients, each sending its next request when the
  last one is answered).
Each point sends at most --requests requests and stops issuing new ones after --max-seconds.
Metrics (streamed completions): time to first token (TTFT), time per output token after the first
(TPOT = (end - first token) / (tokens - 1)), inter-token latency (ITL: the gaps between streamed
chunks; with copy drafts one chunk may carry several tokens), p50/p90/p99; request and token
throughput; errors. Tokens are the server's `usage` when it sends one, else the text re-tokenized
with --tokenizer (the same model's tokenizer for every server).

Targets are loopback only. Either start them yourself and name them:
    python benchmarks/serve_load.py --target fastcodellama=http://127.0.0.1:8000 --target llama.cpp=http://127.0.0.1:8001
or let the script start each, run its load, and stop it (free ports on 127.0.0.1):
    python benchmarks/serve_load.py --launch fastcodellama --launch llama.cpp --rates 1,4 --concurrency 1,8
`--launch llama.cpp` runs `python -m llama_cpp.server` on the GGUF of --model (benchmarks/llamacpp_peer.py).
Writes JSON, markdown and a PNG plot under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator
from urllib.parse import urlparse

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402


@dataclass
class RequestResult:
    ok: bool
    start: float
    end: float
    ttft: float | None = None
    tokens: int = 0
    itl: list[float] = field(default_factory=list)  # gaps between content chunks
    error: str | None = None
    finish_reason: str | None = None  # None: the stream ended without one (cut off)
    usage_reported: bool = False  # tokens from the server's usage, not re-tokenized

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.ttft is None or self.tokens < 2:
            return None
        return (self.end - self.start - self.ttft) / (self.tokens - 1)


@dataclass(frozen=True)
class Load:
    prompts: tuple[str, ...]
    max_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    requests: int = 32
    max_seconds: float = 60.0
    request_timeout: float = 120.0
    seed: int = 0


def check_loopback(url: str) -> None:
    """The load goes to this machine only."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"{url}: only loopback targets (127.0.0.0/8, ::1, localhost) are allowed")


class TokenCounter:
    """Counts completion tokens of a text when the server sends no usage."""

    def __init__(self, tokenizer_dir: str | None) -> None:
        self._tok = None
        if tokenizer_dir:
            from engine.tokenizer import Tokenizer

            self._tok = Tokenizer(tokenizer_dir)

    def __call__(self, text: str) -> int:
        if self._tok is None:
            return len(text.split())
        return len(self._tok.encode(text, add_bos=False))


async def served_model(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/v1/models") as r:
        r.raise_for_status()
        return (await r.json())["data"][0]["id"]


async def one_request(http: aiohttp.ClientSession, url: str, model: str, prompt: str, load: Load, seed: int,
                      count: TokenCounter) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": load.max_tokens, "temperature": load.temperature,
            "top_p": load.top_p, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    res = RequestResult(ok=False, start=start, end=start)
    text, usage, last = [], None, None
    try:
        timeout = aiohttp.ClientTimeout(total=load.request_timeout)
        async with http.post(f"{url}/v1/completions", json=body, timeout=timeout) as r:
            if r.status != 200:
                res.error = f"HTTP {r.status}: {(await r.text())[:200]}"
                return res
            async for raw in r.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    res.error = str(event["error"])[:200]
                    return res
                if event.get("usage"):
                    usage = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    res.finish_reason = choice.get("finish_reason") or res.finish_reason
                piece = "".join(c.get("text") or "" for c in event.get("choices") or [])
                if piece:
                    now = time.perf_counter()
                    if last is None:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
                    text.append(piece)
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"[:200]
        return res
    finally:
        res.end = time.perf_counter()
    res.tokens = usage if usage is not None else count("".join(text))
    res.usage_reported = usage is not None
    res.ok = res.ttft is not None or res.tokens == 0
    if not res.ok:
        res.error = "no content"
    return res


async def poisson(http, url: str, model: str, load: Load, rate: float, count: TokenCounter) -> list[RequestResult]:
    """Open loop: requests arrive with exponential gaps of mean 1/rate, whatever the replies do."""
    rng = random.Random(load.seed)
    t0 = time.perf_counter()
    tasks, at = [], 0.0
    for i in range(load.requests):
        if at > load.max_seconds:
            break
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        prompt = load.prompts[i % len(load.prompts)]
        tasks.append(asyncio.create_task(one_request(http, url, model, prompt, load, load.seed + i, count)))
        at += rng.expovariate(rate)
    return list(await asyncio.gather(*tasks))


async def closed_loop(http, url: str, model: str, load: Load, concurrency: int, count: TokenCounter) -> list[RequestResult]:
    """`concurrency` clients, each sending its next request when the last is answered."""
    t0 = time.perf_counter()
    issued = 0
    results: list[RequestResult] = []

    async def client() -> None:
        nonlocal issued
        while issued < load.requests and time.perf_counter() - t0 < load.max_seconds:
            i = issued
            issued += 1
            results.append(await one_request(http, url, model, load.prompts[i % len(load.prompts)], load,
                                             load.seed + i, count))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def summarize(results: list[RequestResult]) -> dict:
    ok = [r for r in results if r.ok]
    if results:
        span = max(r.end for r in results) - min(r.start for r in results)
    else:
        span = 0.0
    tokens = sum(r.tokens for r in ok)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "error").split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    finish: dict[str, int] = {}
    for r in ok:
        finish[str(r.finish_reason)] = finish.get(str(r.finish_reason), 0) + 1
    return {"requests": len(results), "ok": len(ok), "errors": sum(errors.values()), "error_kinds": errors,
            "finish_reasons": finish, "tokens_from_usage": sum(r.usage_reported for r in ok),
            "duration_s": span, "request_throughput": len(ok) / span if span > 0 else 0.0,
            "token_throughput": tokens / span if span > 0 else 0.0, "output_tokens": tokens,
            "ttft_s": measure.summarize([r.ttft for r in ok if r.ttft is not None]),
            "tpot_s": measure.summarize([r.tpot for r in ok if r.tpot is not None]),
            "itl_s": measure.summarize([g for r in ok for g in r.itl]),
            "e2e_s": measure.summarize([r.end - r.start for r in ok])}


async def run_target(name: str, url: str, load: Load, rates: list[float], concurrency: list[int],
                     count: TokenCounter) -> dict:
    check_loopback(url)
    points = []
    async with aiohttp.ClientSession() as http:
        model = await served_model(http, url)
        await one_request(http, url, model, load.prompts[0], load, -1, count)  # warm-up, not counted
        for rate in rates:
            print(f"[{name}] poisson {rate}/s ...", file=sys.stderr, flush=True)
            res = await poisson(http, url, model, load, rate, count)
            points.append({"mode": "poisson", "rate": rate, **summarize(res)})
        for c in concurrency:
            print(f"[{name}] closed loop x{c} ...", file=sys.stderr, flush=True)
            res = await closed_loop(http, url, model, load, c, count)
            points.append({"mode": "closed", "concurrency": c, **summarize(res)})
    return {"name": name, "url": url, "model": model, "points": points}


# ---------------------------------------------------------------------- starting servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, model: str, port: int, gguf: str | None = None, no_speculate: bool = False) -> list[str]:
    if kind == "fastcodellama":
        cmd = [sys.executable, "-m", "fastcodellama", "serve", "--model", model, "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
        return cmd + (["--no-speculate"] if no_speculate else [])
    if kind == "llama.cpp":
        import llamacpp_peer as peer

        return [sys.executable, "-m", "llama_cpp.server", "--model", gguf or peer.convert(model),
                "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(peer.threads()),
                "--n_threads_batch", str(peer.threads()), "--n_ctx", "2048",
                "--model_alias", os.path.basename(os.path.normpath(model)),
                "--interrupt_requests", "False"]  # its default cuts a streaming request off when the next one arrives
    raise ValueError(f"unknown server kind {kind!r}: fastcodellama or llama.cpp")


@contextlib.contextmanager
def launched(cmd: list[str], port: int, timeout: float = 180.0) -> Iterator[str]:
    """Starts the server, waits until GET /v1/models answers, yields its URL; stops it after."""
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    log = open(os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not up after {timeout} s: {' '.join(cmd)}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------- report


def report(results: dict, out_dir: str, plot: bool = True) -> dict[str, str]:
    load = results["load"]
    lines = [f"# serving load ({results['date']})", "", f"machine: {results['machine']}",
             f"load: {load['requests']} requests per point at most, {load['max_seconds']} s at most; "
             f"max_tokens {load['max_tokens']}, temperature {load['temperature']}, top_p {load['top_p']}, "
             f"{len(load['prompts'])} HumanEval prompts; streamed", ""]
    for t in results["targets"]:
        lines.append(f"- {t['name']}: {t.get('command') or t['url']}")
    lines.append("")
    header = ["server", "load", "ok/sent", "errors", "finish length/stop/cut", "req/s", "tok/s", "TTFT p50/p90/p99 ms",
              "TPOT p50/p90/p99 ms", "ITL p50/p90/p99 ms"]
    rows = []
    for t in results["targets"]:
        for p in t["points"]:
            what = f"poisson {p['rate']:g}/s" if p["mode"] == "poisson" else f"closed x{p['concurrency']}"
            fin = p.get("finish_reasons", {})
            rows.append([t["name"], what, f"{p['ok']}/{p['requests']}", p["errors"],
                         f"{fin.get('length', 0)}/{fin.get('stop', 0)}/{fin.get('None', 0)}",
                         measure.fmt(p["request_throughput"], 2), measure.fmt(p["token_throughput"]),
                         _ms(p["ttft_s"]), _ms(p["tpot_s"]), _ms(p["itl_s"])])
    lines += measure.markdown_table(header, rows)
    lines += ["", "finish: samples that hit max_tokens / stopped at EOS / ended without a finish_reason (cut off). "
              "Tokens are the server's usage where it reports one, else the streamed text re-tokenized with the "
              "model's tokenizer."]
    text = "\n".join(lines)
    slim = dict(results, load={k: v for k, v in load.items() if k != "prompts"} | {"prompts": len(load["prompts"])})
    return measure.write_results(out_dir, "serve_load", slim, text,
                                 (lambda path: plot_results(results, path)) if plot else None)


def _ms(s: dict) -> str:
    return "/".join(measure.fmt(s[q] * 1000 if s[q] == s[q] else None, 1) for q in ("p50", "p90", "p99"))


def plot_results(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for i, t in enumerate(results["targets"]):
        color = f"C{i}"  # one color per server: solid p50, dashed tail
        po = [p for p in t["points"] if p["mode"] == "poisson"]
        cl = [p for p in t["points"] if p["mode"] == "closed"]
        if po:
            xs = [p["rate"] for p in po]
            axes[0].plot(xs, [p["ttft_s"]["p50"] * 1000 for p in po], marker="o", color=color, label=f"{t['name']} p50")
            axes[0].plot(xs, [p["ttft_s"]["p99"] * 1000 for p in po], marker="x", linestyle="--", color=color,
                         label=f"{t['name']} p99")
        if cl:
            xs = [p["concurrency"] for p in cl]
            axes[1].plot(xs, [p["token_throughput"] for p in cl], marker="o", color=color, label=t["name"])
            axes[2].plot(xs, [p["tpot_s"]["p50"] * 1000 for p in cl], marker="o", color=color, label=f"{t['name']} p50")
            axes[2].plot(xs, [p["tpot_s"]["p90"] * 1000 for p in cl], marker="x", linestyle="--", color=color,
                         label=f"{t['name']} p90")
    axes[0].set(xlabel="offered load (requests/s, Poisson)", ylabel="time to first token (ms)", title="TTFT")
    axes[1].set(xlabel="concurrent clients (closed loop)", ylabel="output tokens/s", title="token throughput")
    axes[2].set(xlabel="concurrent clients (closed loop)", ylabel="ms per output token", title="TPOT")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(results["machine"][:140], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from engine import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", default=[], metavar="NAME=URL", help="a running server (loopback)")
    ap.add_argument("--launch", action="append", default=[], choices=["fastcodellama", "llama.cpp"],
                    help="start this server, load it, stop it (repeatable; one at a time)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model folder the launched servers serve")
    ap.add_argument("--gguf", default=None, help="GGUF for --launch llama.cpp (default: convert --model, cached)")
    ap.add_argument("--no-speculate", action="store_true", help="launch fastcodellama without copy drafts")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder for counting tokens (default --model)")
    ap.add_argument("--rates", default="1,2,4", help="Poisson arrival rates, requests/s (comma list; '' for none)")
    ap.add_argument("--concurrency", default="1,4,16", help="closed-loop clients (comma list; '' for none)")
    ap.add_argument("--requests", type=int, default=32, help="requests per point at most")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop issuing requests of a point after this")
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--prompts", type=int, default=16, help="HumanEval prompts, used in turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=measure.RESULTS)
    ap.add_argument("--no-plot", action="store_true")
    return ap


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    targets = []
    for spec in args.target:
        name, sep, url = spec.partition("=")
        if not sep:
            print(f"--target wants NAME=URL, got {spec!r}", file=sys.stderr)
            return 2
        check_loopback(url)
        targets.append((name, url.rstrip("/"), None))
    targets += [(kind, None, kind) for kind in args.launch]
    if not targets:
        print("give --target NAME=URL or --launch fastcodellama|llama.cpp", file=sys.stderr)
        return 2
    from fastcodellama.job.tasks import load_tasks

    load = Load(prompts=tuple(t["prompt"] for t in load_tasks(None, args.prompts)), max_tokens=args.max_tokens,
                temperature=args.temperature, top_p=args.top_p, requests=args.requests,
                max_seconds=args.max_seconds, request_timeout=args.request_timeout, seed=args.seed)
    count = TokenCounter(args.tokenizer or args.model)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "load": asdict(load), "targets": []}
    for name, url, kind in targets:
        if kind is None:
            out = asyncio.run(run_target(name, url, load, _floats(args.rates), [int(c) for c in _floats(args.concurrency)], count))
        else:
            port = free_port()
            cmd = server_command(kind, args.model, port, args.gguf, args.no_speculate)
            with launched(cmd, port) as url:
                out = asyncio.run(run_target(name, url, load, _floats(args.rates),
                                             [int(c) for c in _floats(args.concurrency)], count))
            out["command"] = " ".join(["python", *cmd[1:]])
        results["targets"].append(out)
    paths = report(results, args.out, plot=not args.no_plot)
    print("\nwrote " + ", ".join(paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
