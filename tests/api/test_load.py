"""A bounded load test: many concurrent clients, random disconnects; no 5xx, no leaked blocks,
greedy results equal to the offline engine."""
from __future__ import annotations

import asyncio
import json
import random

import aiohttp
import pytest

from engine import LLM, EngineConfig, SamplingParams
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, sse_events, wait_idle

ENGINE = dict(num_kv_blocks=384, block_size=8, max_num_seqs=32, max_num_batched_tokens=512)
NUM_REQUESTS = 200
CONCURRENCY = 48
HEADS = ["def {}(x):\n    ", "class {}:\n    def __init__(self):\n", "import {}\n\n", "# {}\nfor i in range(10):\n",
         "async def {}(session, url):\n    ", "{} = [x * x for x in "]
NAMES = ["parse", "render", "fetch", "Stack", "numpy", "total", "load_config", "main"]
PROMPTS = [h.format(n) for h in HEADS for n in NAMES][:32]


def plan(rng: random.Random) -> dict:
    kind = rng.choice(["greedy", "greedy", "greedy_stream", "greedy_stream", "sampled", "drop_stream", "drop_full"])
    body = {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(4, 24), "temperature": 0,
            "stream": kind in ("greedy_stream", "drop_stream", "sampled")}
    if kind == "sampled":
        body.update(temperature=0.8, top_p=0.95, n=rng.randint(1, 3), seed=rng.randint(0, 1000))
    return {"kind": kind, "body": body, "drop_after": rng.randint(1, 4), "drop_s": rng.uniform(0.01, 0.3)}


async def run_one(http: aiohttp.ClientSession, url: str, job: dict, results: list) -> None:
    body = job["body"]
    if job["kind"] == "drop_full":  # a non-streaming client that gives up
        async def fetch():
            async with http.post(url, json=body) as r:
                results.append((job, r.status, await r.text()))
        try:
            await asyncio.wait_for(fetch(), job["drop_s"])
        except asyncio.TimeoutError:
            results.append((job, None, None))
        return
    async with http.post(url, json=body) as r:
        if job["kind"] == "drop_stream":  # a streaming client that leaves mid-stream
            for _ in range(job["drop_after"]):
                if r.status != 200 or not await r.content.readuntil(b"\n\n"):
                    break
            results.append((job, r.status, None))
            r.close()
            return
        results.append((job, r.status, await r.text()))


def texts(job: dict, status: int, raw: str) -> dict[int, str]:
    if not job["body"]["stream"]:
        return {c["index"]: c["text"] for c in json.loads(raw)["choices"]}
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    out: dict[int, str] = {}
    for event in events[:-1]:
        chunk = json.loads(event)
        assert "error" not in chunk, chunk
        for c in chunk["choices"]:
            out[c["index"]] = out.get(c["index"], "") + c["text"]
    return out


@pytest.mark.slow
async def test_concurrent_clients_with_disconnects(tiny_model_dir):
    rng = random.Random(1234)
    jobs = [plan(rng) for _ in range(NUM_REQUESTS)]
    engine = build_engine(EngineConfig(model=tiny_model_dir, **ENGINE))
    config = ServerConfig(served_model_names=("tiny",), port=0, max_queue=256)
    results: list = []
    async with running_server(engine, config) as srv, aiohttp.ClientSession() as http:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def client(job):
            async with gate:
                await run_one(http, srv.url + "/v1/completions", job, results)

        await asyncio.wait_for(asyncio.gather(*(client(j) for j in jobs)), timeout=120)
        await wait_idle(http, srv.url, timeout=10)
        async with http.get(srv.url + "/metrics") as r:
            metrics = await r.text()

    assert len(results) == NUM_REQUESTS
    assert any(job["kind"] == "drop_full" and status is None for job, status, _ in results), "no client gave up"
    assert any(job["kind"] == "drop_stream" for job, _, _ in results)
    statuses = [status for _, status, _ in results if status is not None]
    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
    assert 'status="5' not in metrics

    greedy = {}
    for job, status, raw in results:
        if job["kind"] in ("greedy", "greedy_stream") or (job["kind"] == "drop_full" and raw is not None):
            key = (job["body"]["prompt"], job["body"]["max_tokens"])
            greedy.setdefault(key, set()).add(texts(job, status, raw)[0])
        elif job["kind"] == "sampled":
            assert sorted(texts(job, status, raw)) == list(range(job["body"]["n"]))
    assert all(len(v) == 1 for v in greedy.values()), "one greedy text per (prompt, max_tokens)"
    keys = sorted(greedy)
    offline = LLM(tiny_model_dir, **ENGINE)
    outs = offline.generate([p for p, _ in keys], [SamplingParams(temperature=0.0, max_tokens=m) for _, m in keys],
                            use_tqdm=False)
    for key, out in zip(keys, outs):
        assert greedy[key] == {out.outputs[0].text}, key
