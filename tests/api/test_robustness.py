"""Disconnects, auth, the bounded queue, timeouts, failures that stay local, and SIGTERM."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

import api
from engine import EngineConfig
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, sse_events, wait_idle

CT = "/v1/completions"
ENGINE = dict(num_kv_blocks=128, block_size=8, max_num_seqs=8, max_num_batched_tokens=128)


def long_request(stream: bool, tokens: int = 400, **extra) -> dict:
    """Takes seconds on the tiny model: min_tokens keeps EOS away."""
    return {"prompt": "def main():\n", "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "stream": stream, **extra}


def make_server(model_dir: str, speculate: bool = True, engine: dict | None = None, **config):
    eng = build_engine(EngineConfig(model=model_dir, **(engine or ENGINE)), **({} if speculate else {"spec": None}))
    return running_server(eng, ServerConfig(served_model_names=("tiny",), port=0, **config))


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def health(http, url) -> dict:
    async with http.get(f"{url}/health") as r:
        return await r.json()


async def until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_disconnects_free_the_kv_cache(tiny_model_dir, http):
    async with make_server(tiny_model_dir) as srv:
        url = srv.url + CT
        streams = []
        for _ in range(4):  # streaming clients that leave after their first chunk
            session = aiohttp.ClientSession()
            resp = await session.post(url, json=long_request(True))
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            streams.append((session, resp))
        waiting = [asyncio.create_task(http.post(url, json=long_request(False))) for _ in range(3)]

        await until(lambda: _in_flight(http, srv.url, 7))
        assert (await health(http, srv.url))["kv_blocks_used"] > 0
        for session, resp in streams:
            resp.close()
            await session.close()
        for task in waiting:  # non-streaming clients that give up
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        t0 = time.monotonic()
        await wait_idle(http, srv.url, timeout=5)
        assert time.monotonic() - t0 < 5
        async with http.post(url, json={"prompt": "x", "max_tokens": 2}) as r:  # and it still serves
            assert r.status == 200


async def test_api_key(tiny_model_dir, http):
    async with make_server(tiny_model_dir, speculate=False, api_key="s3cret") as srv:
        body = {"prompt": "x", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            async with http.post(srv.url + CT, json=body, headers=headers) as r:
                assert r.status == 401
                error = (await r.json())["error"]
                assert error["type"] == "authentication_error" and r.headers["WWW-Authenticate"].startswith("Bearer")
        for path in ("/metrics", "/v1/models", "/copilot_internal/v2/token", "/openapi.json"):
            async with http.get(srv.url + path) as r:
                assert r.status == 401, path
        for path, payload in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
            async with http.post(srv.url + path, json=payload) as r:
                assert r.status == 401, path
        async with http.get(srv.url + "/health") as r:
            assert r.status == 200  # liveness probes need no key
        for auth in ("Bearer s3cret", "token s3cret"):
            async with http.post(srv.url + CT, json=body, headers={"Authorization": auth}) as r:
                assert r.status == 200
        async with http.get(srv.url + "/copilot_internal/v2/token", headers={"Authorization": "token s3cret"}) as r:
            assert (await r.json())["token"] == "s3cret"


async def test_queue_full_is_429_with_retry_after(tiny_model_dir, http):
    engine = dict(num_kv_blocks=128, block_size=8, max_num_seqs=1, max_num_batched_tokens=64)
    # One client may fill the whole server here (client_share 1): the server-wide limit is under test.
    async with make_server(tiny_model_dir, speculate=False, engine=engine, max_queue=1, client_share=1.0) as srv:
        url = srv.url + CT
        # One running, one waiting (its headers come with its first token, so do not wait for them).
        held = [asyncio.create_task(http.post(url, json=long_request(True))) for _ in range(2)]
        await until(lambda: _in_flight(http, srv.url, 2))
        async with http.post(url, json={"prompt": "x", "max_tokens": 2}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            error = (await r.json())["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        async with http.post(url, json={"prompt": "x", "max_tokens": 2, "n": 3}) as r:
            assert r.status == 400  # can never fit: not worth a retry
        for task in held:
            task.cancel()
        for resp in await asyncio.gather(*held, return_exceptions=True):
            if isinstance(resp, aiohttp.ClientResponse):
                resp.close()
        await wait_idle(http, srv.url)
        async with http.post(url, json={"prompt": "x", "max_tokens": 2, "n": 2}) as r:
            assert r.status == 200


async def _in_flight(http, url, n) -> bool:
    return (await health(http, url))["in_flight_sequences"] == n


async def test_request_timeout(tiny_model_dir, http):
    async with make_server(tiny_model_dir, speculate=False, request_timeout=0.5) as srv:
        async with http.post(srv.url + CT, json=long_request(False, tokens=490, n=8)) as r:
            assert r.status == 408
            assert (await r.json())["error"]["code"] == "request_timeout"
        async with http.post(srv.url + CT, json=long_request(True, tokens=490, n=8)) as r:
            assert r.status == 200
            events = sse_events(await r.text())
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "request_timeout" and set(error) == {"message", "type", "param", "code"}
        assert len(events) > 2  # tokens went out before the error
        await wait_idle(http, srv.url)


async def test_a_failing_request_fails_alone(tiny_model_dir, http, monkeypatch):
    async with make_server(tiny_model_dir, speculate=False) as srv:
        url = srv.url + CT
        # A bad request next to a good streaming one: the bad one gets its 400, the good one goes on.
        async with http.post(url, json={"prompt": "x", "max_tokens": 24, "stream": True}) as good:
            await good.content.readuntil(b"\n\n")
            async with http.post(url, json={"prompt": [5] * 600}) as bad:
                assert bad.status == 400
            events = sse_events("data: x\n\n" + await good.text())
            assert events[-1] == "[DONE]" and "error" not in events[-2]
        # An engine step that raises: that step's requests get a 500, the engine loop goes on.
        llm_engine = srv.state.engine.engine
        real_step = llm_engine.step
        calls = {"n": 0}

        def failing_step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected failure")
            return real_step(*args, **kwargs)

        monkeypatch.setattr(llm_engine, "step", failing_step)
        async with http.post(url, json={"prompt": "x", "max_tokens": 4}) as r:
            assert r.status == 500
            assert (await r.json())["error"]["type"] == "server_error"
        async with http.post(url, json={"prompt": "x", "max_tokens": 4}) as r:
            assert r.status == 200
        await wait_idle(http, srv.url)


async def test_sigterm_finishes_or_cleanly_ends_in_flight_requests(tiny_model_dir, tmp_path, http):
    log_path = tmp_path / "server.log"
    root = os.path.dirname(os.path.dirname(os.path.abspath(api.__file__)))
    cmd = [sys.executable, "-m", "api", "--model", tiny_model_dir, "--port", "0", "--served-model-name", "tiny",
           "--num-kv-blocks", "1024", "--block-size", "8", "--max-num-seqs", "16", "--max-num-batched-tokens", "256",
           "--shutdown-grace", "0.5", "--no-speculate", "--no-access-log"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = None
        deadline = time.monotonic() + 90
        while port is None:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text())
            port = int(match.group(1)) if match else None
            await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        short = await http.post(url + CT, json=long_request(True, tokens=4))  # finishes within the grace
        longs = [await http.post(url + CT, json=long_request(True, tokens=490, n=4)) for _ in range(3)]  # do not
        for resp in (short, *longs):
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        try:  # no new work once shutdown has begun: refused, or 503 on a connection still open
            async with http.post(url + CT, json={"prompt": "x", "max_tokens": 2}) as r:
                assert r.status == 503 and "Retry-After" in r.headers
        except aiohttp.ClientConnectionError:
            pass
        short_events = sse_events("data: x\n\n" + await short.text())
        assert short_events[-1] == "[DONE]"
        assert json.loads(short_events[-2])["choices"][0]["finish_reason"] == "length"
        for resp in longs:
            events = sse_events("data: x\n\n" + await resp.text())
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["code"] == "shutting_down"
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert "stopped" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
