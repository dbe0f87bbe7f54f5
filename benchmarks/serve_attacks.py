"""Issue #21 items 6-9 against a live server on loopback: does a well-behaved client stay served?

Phases, each bounded by --seconds (and by the counts below), run one after another:
  quiet      no attack: the baseline latency of a well-behaved client
  idle       --idle-connections idle TCP connections and --slow-headers connections that send their
             headers a byte at a time, reopened when the server closes them (item 6)
  heavy      one client asks for everything: n=128 x 2048 tokens, then requests as large as the
             per-request bound allows, --heavy-requests at a time (item 7)
  huge       --huge-prompts concurrent prompts of --huge-mb MB each, over and over (item 8)
  kv         --kv-requests requests that outgrow the KV cache, next to three unrelated 64-token
             streams (item 9; the launched server has --num-kv-blocks blocks)
The well-behaved client sends small completions (8 tokens) from 127.0.0.1, one at a time on a fresh
connection; attackers come from 127.0.0.2 and up, as other hosts would.
Printed per phase: the well-behaved requests served and their latency p50/p99 (against quiet), the
server's 5xx responses, its RSS before and after, and the KV blocks free once it is idle again.

    python benchmarks/serve_attacks.py                        # launches `python -m api` on the demo model
    python benchmarks/serve_attacks.py --target http://127.0.0.1:8000 --server-pid 1234
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402
from serve_load import check_loopback, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CT = "/v1/completions"
SMALL = {"prompt": "def add(a, b):\n", "max_tokens": 8, "temperature": 0}
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 12)]


@dataclass(frozen=True)
class Settings:
    seconds: float = 10.0
    idle_connections: int = 1100
    slow_headers: int = 50
    heavy_requests: int = 4
    huge_prompts: int = 6
    huge_mb: float = 8.0
    kv_requests: int = 2
    request_timeout: float = 30.0


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    attacker: Counter = field(default_factory=Counter)
    server_5xx: int = 0
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    kv_free_after: int | None = None
    kv_total: int | None = None

    def row(self, quiet: "Phase") -> dict:
        lat = measure.summarize(self.latencies)
        base = measure.summarize(quiet.latencies)
        return {"phase": self.name, "served": len(self.latencies), "sent": len(self.latencies) + sum(self.errors.values()),
                "p50_ms": lat["p50"] * 1e3, "p99_ms": lat["p99"] * 1e3, "quiet_p50_ms": base["p50"] * 1e3,
                "quiet_p99_ms": base["p99"] * 1e3, "errors": dict(self.errors), "server_5xx": self.server_5xx,
                "attacker": dict(self.attacker), "rss_before_mb": self.rss_before_mb,
                "rss_after_mb": self.rss_after_mb, "kv_free_after": self.kv_free_after, "kv_total": self.kv_total}


# ---------------------------------------------------------------------- the server


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return None


def server_command(model: str, port: int, num_kv_blocks: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "api", "--model", model, "--port", str(port), "--served-model-name", "target",
            "--num-kv-blocks", str(num_kv_blocks), "--max-num-seqs", "32", "--max-queue", "64",
            "--max-body-mb", "9", "--no-speculate", "--no-access-log", "--log-level", "warning", *extra]


@contextlib.contextmanager
def launched(cmd: list[str], port: int, nofile: tuple[int, int] | None, log_path: str,
             timeout: float = 180.0) -> Iterator[tuple[int, str]]:
    """Starts the server (with `nofile` as its open-file limits), waits for /health; yields (pid, url)."""
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not up after {timeout} s; see {log_path}")
            time.sleep(0.3)
        yield proc.pid, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def server_5xx(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    return int(sum(float(v) for v in re.findall(r'^fastcodellama_http_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)',
                                                text, re.M)))


async def wait_idle(http: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(url + "/health") as r:
                health = await r.json()
            if health.get("in_flight_sequences") == 0 and health.get("running") == 0:
                return health
        await asyncio.sleep(0.2)
    return health


# ---------------------------------------------------------------------- clients


def session(source: str = "127.0.0.1", timeout: float = 30.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0), force_close=True, limit=0),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def well_behaved(url: str, phase: Phase, stop: asyncio.Event, timeout: float) -> None:
    """Small completions one after another, each on a new connection, until `stop`."""
    async with session(timeout=timeout) as http:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                async with http.post(url + CT, json=SMALL) as r:
                    await r.read()
                    if r.status == 200:
                        phase.latencies.append(time.monotonic() - t0)
                    else:
                        phase.errors[f"HTTP {r.status}"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                phase.errors[type(e).__name__] += 1
                await asyncio.sleep(0.05)


async def until(stop: asyncio.Event, work: Callable[[], Awaitable[None]], tally: Counter) -> None:
    """Repeats `work` until `stop`, counting its failures in `tally`."""
    while not stop.is_set():
        try:
            await work()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            tally[type(e).__name__] += 1
            await asyncio.sleep(0.2)


async def hold_idle(port: int, source: str, stop: asyncio.Event, tally: Counter, slow: bool) -> None:
    """One idle connection (or one sending its headers a byte every half second), reopened after a
    pause when the server closes it."""
    async def once() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        tally["opened"] += 1
        try:
            if slow:
                writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            while not stop.is_set() and not reader.at_eof():
                if slow:
                    writer.write(b"X")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(1 << 16), 0.5)
            if reader.at_eof():
                tally["closed by server"] += 1
                await asyncio.sleep(1.0)
        finally:
            writer.close()

    await until(stop, once, tally)


async def attack_idle(url: str, s: Settings, stop: asyncio.Event, tally: Counter) -> None:
    port = int(url.rsplit(":", 1)[1])
    # Most from one host, as in the issue; the rest spread over nine more.
    sources = [ATTACKERS[0] if i % 10 < 7 else ATTACKERS[1 + i % 9] for i in range(s.idle_connections)]
    tasks = [hold_idle(port, src, stop, tally, slow=False) for src in sources]
    tasks += [hold_idle(port, ATTACKERS[-1], stop, tally, slow=True) for _ in range(s.slow_headers)]
    await asyncio.gather(*tasks)


async def attack_heavy(url: str, s: Settings, stop: asyncio.Event, tally: Counter) -> None:
    async with session(ATTACKERS[0], timeout=None) as http:  # type: ignore[arg-type]
        async def ask(body: dict) -> None:
            async with http.post(url + CT, json=body) as r:
                tally[f"HTTP {r.status}"] += 1
                if r.status == 429:
                    await asyncio.sleep(0.2)
                await r.read()

        await ask({"prompt": "def main():\n", "n": 128, "max_tokens": 2048})  # the request
        tokens = min(2048, await context_of(http, url) - 16)
        body = {"prompt": "def main():\n", "n": 32, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0.8}
        await asyncio.gather(*(until(stop, lambda: ask(body), tally) for _ in range(s.heavy_requests)))


async def attack_huge(url: str, s: Settings, stop: asyncio.Event, tally: Counter) -> None:
    line = "def f(x):\n    return x + 1\n"
    body = json.dumps({"prompt": line * int(s.huge_mb * 2 ** 20 / len(line)), "max_tokens": 8}).encode()
    async with session(ATTACKERS[0], timeout=120) as http:
        async def ask() -> None:
            async with http.post(url + CT, data=body, headers={"Content-Type": "application/json"}) as r:
                tally[f"HTTP {r.status}"] += 1
                await r.read()

        await asyncio.gather(*(until(stop, ask, tally) for _ in range(s.huge_prompts)))


async def context_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/v1/models") as r:
        return (await r.json())["data"][0]["max_model_len"]


async def prompt_of(http: aiohttp.ClientSession, url: str, tokens: int) -> tuple[str, int]:
    """A prompt of about `tokens` tokens, measured by the server itself (echo, max_tokens 0)."""
    async def count(text: str) -> int:
        async with http.post(url + CT, json={"prompt": text, "max_tokens": 0, "echo": True}) as r:
            return (await r.json())["usage"]["prompt_tokens"]

    unit = "    total = total + 1\n"
    per_unit = await count(unit * 8) / 8
    text = unit * max(1, int(tokens / per_unit))
    return text, await count(text)


async def attack_kv(url: str, s: Settings, stop: asyncio.Event, tally: Counter) -> None:
    """Requests whose prompt fills most of the KV cache and that then grow past it, next to three
    unrelated streams of 64 tokens."""
    async with session(ATTACKERS[0], timeout=None) as http, session(timeout=None) as others:  # type: ignore[arg-type]
        context = await context_of(http, url)
        async with http.get(url + "/health") as r:
            health = await r.json()
        cache_tokens = health["kv_blocks_total"] * health["kv_block_size"]
        prompt, prompt_tokens = await prompt_of(http, url, min(context, cache_tokens) * 3 // 4)

        async def stream(client: aiohttp.ClientSession, text: str, tokens: int, who: str) -> None:
            body = {"prompt": text, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0, "stream": True}
            async with client.post(url + CT, json=body) as r:
                out = await r.text()
            if r.status != 200 or '"error"' in out:
                tally[f"{who}: error {r.status}"] += 1
            else:
                reasons = re.findall(r'"finish_reason":"(\w+)"', out)
                tally[f"{who}: {reasons[-1] if reasons else 'cut off'}"] += 1

        grow = context - prompt_tokens - 1
        long = [until(stop, lambda: stream(http, prompt, grow, "outgrowing"), tally) for _ in range(s.kv_requests)]
        short = [until(stop, lambda: stream(others, "def main():\n", 64, "unrelated"), tally) for _ in range(3)]
        await asyncio.gather(*long, *short)


ATTACKS = {"quiet": None, "idle": attack_idle, "heavy": attack_heavy, "huge": attack_huge, "kv": attack_kv}


# ---------------------------------------------------------------------- phases


async def run_phase(name: str, url: str, pid: int | None, s: Settings) -> Phase:
    phase = Phase(name)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as admin:
        await wait_idle(admin, url)
        phase.rss_before_mb = rss_mb(pid)
        before_5xx = await server_5xx(admin, url)
        stop = asyncio.Event()
        attack = ATTACKS[name]
        client = asyncio.create_task(well_behaved(url, phase, stop, s.request_timeout))
        attacker = None
        if attack is not None:
            attacker = asyncio.create_task(attack(url, s, stop, phase.attacker))
            await asyncio.sleep(min(1.0, s.seconds / 4))  # the attack under way before counting
            phase.latencies.clear()
            phase.errors.clear()
        await asyncio.sleep(s.seconds)
        stop.set()
        if attacker is not None:  # its requests in flight end here: the server aborts them as they disconnect
            attacker.cancel()
            failure = (await asyncio.gather(attacker, return_exceptions=True))[0]
            if failure is not None and not isinstance(failure, asyncio.CancelledError):
                phase.attacker[f"attack failed: {failure!r}"] += 1
        await asyncio.wait_for(client, s.request_timeout)
        health = await wait_idle(admin, url)
        await asyncio.sleep(1.5)  # freed memory goes back to the system after large requests
        phase.rss_after_mb = rss_mb(pid)
        phase.server_5xx = await server_5xx(admin, url) - before_5xx
        phase.kv_free_after, phase.kv_total = health.get("kv_blocks_free"), health.get("kv_blocks_total")
    return phase


async def run_all(url: str, pid: int | None, s: Settings, phases: list[str]) -> list[dict]:
    check_loopback(url)
    results = []
    quiet = None
    for name in phases:
        phase = await asyncio.wait_for(run_phase(name, url, pid, s), s.seconds + 3 * s.request_timeout + 60)
        quiet = quiet or phase
        results.append(phase.row(quiet))
        print(_line(results[-1]), flush=True)
    return results


def _line(r: dict) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"
    attacker = ", ".join(f"{k} {v}" for k, v in sorted(r["attacker"].items())) or "-"
    rss = f"{measure.fmt(r['rss_before_mb'], 0)} -> {measure.fmt(r['rss_after_mb'], 0)} MB"
    return (f"{r['phase']:>6}: well-behaved {r['served']}/{r['sent']} served, p50 {measure.fmt(r['p50_ms'], 0)} ms, "
            f"p99 {measure.fmt(r['p99_ms'], 0)} ms (quiet {measure.fmt(r['quiet_p50_ms'], 0)}/"
            f"{measure.fmt(r['quiet_p99_ms'], 0)} ms); failed: {errors}; server 5xx {r['server_5xx']}; RSS {rss}; "
            f"KV free after {r['kv_free_after']}/{r['kv_total']}; attacker: {attacker}")


def markdown(results: list[dict]) -> str:
    rows = [[r["phase"], f"{r['served']}/{r['sent']}", measure.fmt(r["p50_ms"], 0), measure.fmt(r["p99_ms"], 0),
             str(r["server_5xx"]), f"{measure.fmt(r['rss_before_mb'], 0)} -> {measure.fmt(r['rss_after_mb'], 0)}",
             f"{r['kv_free_after']}/{r['kv_total']}"] for r in results]
    header = ["phase", "well-behaved served", "p50 ms", "p99 ms", "5xx", "RSS MB", "KV free after"]
    return "\n".join(measure.markdown_table(header, rows))


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    p.add_argument("--target", help="a running server (loopback only); default: launch one")
    p.add_argument("--server-pid", type=int, help="its process id, for RSS (with --target)")
    p.add_argument("--model", default=None, help="model folder of the launched server (default: the demo model)")
    p.add_argument("--num-kv-blocks", type=int, default=100, help="KV blocks of the launched server")
    p.add_argument("--nofile", default="1024:1024", help="open-file limits SOFT:HARD of the launched server")
    p.add_argument("--server-arg", action="append", default=[], help="one more argument for the launched server")
    p.add_argument("--phases", default=",".join(ATTACKS), help="which phases, in order (quiet first)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of each phase")
    p.add_argument("--idle-connections", type=int, default=d.idle_connections)
    p.add_argument("--slow-headers", type=int, default=d.slow_headers)
    p.add_argument("--heavy-requests", type=int, default=d.heavy_requests)
    p.add_argument("--huge-prompts", type=int, default=d.huge_prompts)
    p.add_argument("--huge-mb", type=float, default=d.huge_mb)
    p.add_argument("--kv-requests", type=int, default=d.kv_requests)
    p.add_argument("--request-timeout", type=float, default=d.request_timeout)
    p.add_argument("--json", help="also write the results here")
    return p


def raise_own_file_limit(needed: int) -> None:
    """The attacker's sockets need open files in this process too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = Settings(seconds=args.seconds, idle_connections=args.idle_connections, slow_headers=args.slow_headers,
                 heavy_requests=args.heavy_requests, huge_prompts=args.huge_prompts, huge_mb=args.huge_mb,
                 kv_requests=args.kv_requests, request_timeout=args.request_timeout)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(ATTACKS)
    if unknown or not phases or phases[0] != "quiet":
        raise SystemExit(f"--phases: a comma list of {', '.join(ATTACKS)} starting with quiet")
    raise_own_file_limit(s.idle_connections + s.slow_headers + 256)
    if args.target:
        results = asyncio.run(run_all(args.target, args.server_pid, s, phases))
    else:
        from engine import DEFAULT_MODEL

        port = free_port()
        soft, _, hard = args.nofile.partition(":")
        nofile = (int(soft), int(hard or resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        cmd = server_command(args.model or DEFAULT_MODEL, port, args.num_kv_blocks, args.server_arg)
        fd, log_path = tempfile.mkstemp(prefix="serve_attacks_", suffix=".log")
        os.close(fd)
        with launched(cmd, port, nofile, log_path) as (pid, url):
            results = asyncio.run(run_all(url, pid, s, phases))
        print(f"server log: {os.path.getsize(log_path)} bytes ({log_path})")
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
