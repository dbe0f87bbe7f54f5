"""Many clients at once over real HTTP: requests drawn at random across four protocols (OpenAI
completions and chat, llama.cpp's infill, Ollama's generate), streamed or not, greedy or seeded,
with stops, logprobs, penalties, JSON mode and several samples, some clients leaving mid-stream,
against an engine that drafts, preempts and (one run of two) queues steps ahead. Each answer must
be the one the same request gets sent alone afterwards, and the KV cache must empty."""
from __future__ import annotations

import asyncio
import json
import random

import aiohttp
import pytest

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, sse_events, wait_idle
from engine import DEFAULT_MODEL, EngineConfig
from fastcodellama.drafting import SpecConfig
from fastcodellama.job.tasks import load_tasks

PROMPTS = [t["prompt"] for t in load_tasks(None, 6)]
REQUESTS = 24


def _request(rng: random.Random) -> tuple[str, dict, bool]:
    """(path, body, streamed)."""
    kind = rng.choice(["completions", "completions", "chat", "infill", "ollama"])
    temperature, seed, stream = rng.choice([0.0, 0.8]), rng.randint(0, 999), rng.random() < 0.5
    tokens, prompt = rng.randint(1, 40), rng.choice(PROMPTS)
    if kind == "completions":
        body = dict(model="tiny", prompt=prompt[:rng.randint(10, len(prompt))], max_tokens=tokens, stream=stream,
                    temperature=temperature, seed=seed)
        if rng.random() < 0.3:
            body["stop"] = ["\n\n"]
        if rng.random() < 0.3:
            body["logprobs"] = 2
        if rng.random() < 0.2:
            body["presence_penalty"] = 0.5
        if rng.random() < 0.3 and not stream:
            body["n"] = rng.randint(1, 3)
        return "/v1/completions", body, stream
    if kind == "chat":
        body = dict(model="tiny", messages=[{"role": "user", "content": prompt[:200]}], max_tokens=tokens,
                    stream=stream, temperature=temperature, seed=seed)
        if rng.random() < 0.15:
            body["response_format"] = {"type": "json_object"}
        return "/v1/chat/completions", body, stream
    if kind == "infill":
        cut = rng.randint(5, len(prompt) - 1)
        return "/infill", dict(input_prefix=prompt[:cut], input_suffix=prompt[cut:], n_predict=tokens, stream=stream,
                               temperature=temperature, seed=seed), stream
    options = dict(num_predict=tokens, temperature=temperature, seed=seed)
    if rng.random() < 0.3:
        options["repeat_penalty"] = 1.2
    return "/api/generate", dict(model="tiny", prompt=prompt[:300], stream=stream, options=options), stream


def _texts(path: str, raw: str, stream: bool) -> list[str]:
    """The answer's text (each sample's)."""
    if path == "/api/generate":
        return ["".join(json.loads(line).get("response", "") for line in raw.splitlines() if line.strip())]
    if stream:
        events = [json.loads(e) for e in sse_events(raw) if e != "[DONE]"]
        if path == "/infill":
            return ["".join(e.get("content", "") for e in events)]
        piece = (lambda c: c["text"]) if path == "/v1/completions" else (lambda c: c["delta"].get("content") or "")
        return ["".join(piece(c) for e in events for c in e["choices"])]
    body = json.loads(raw)
    if path == "/infill":
        return [body["content"]]
    if path == "/v1/completions":
        return [c["text"] for c in body["choices"]]
    return [c["message"]["content"] for c in body["choices"]]


async def _send(http, url: str, path: str, body: dict, stream: bool, leave_after: int | None = None) -> str | None:
    """The whole answer; None where the client left after `leave_after` chunks of a stream."""
    async with http.post(url + path, json=body) as r:
        if leave_after is not None and stream:
            chunks = 0
            async for _ in r.content.iter_any():
                chunks += 1
                if chunks >= leave_after:
                    return None
        raw = await r.text()
        assert r.status == 200, (r.status, raw[:300], path, body)
        return raw


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("overlap", ["off", "on"])
async def test_answers_under_load_are_the_answers_alone(seed, overlap):
    rng = random.Random(seed)
    engine = build_engine(EngineConfig(model=DEFAULT_MODEL, num_kv_blocks=120, block_size=4, max_num_seqs=8,
                                       max_num_batched_tokens=64, overlap_steps=overlap), SpecConfig(policy="fixed"))
    requests = [_request(rng) for _ in range(REQUESTS)]
    leave = [rng.randint(1, 4) if rng.random() < 0.2 else None for _ in requests]
    delays = [rng.random() * 0.5 for _ in requests]
    async with running_server(engine, ServerConfig(served_model_names=("tiny",), port=0)) as srv:
        async with aiohttp.ClientSession() as http:
            async def client(i: int) -> str | None:
                await asyncio.sleep(delays[i])
                return await _send(http, srv.url, *requests[i], leave_after=leave[i])

            answers = await asyncio.gather(*(client(i) for i in range(REQUESTS)))
            await wait_idle(http, srv.url, timeout=30)
            compared = 0
            for (path, body, stream), raw in zip(requests, answers):
                if raw is None:
                    continue
                alone = await _send(http, srv.url, path, body, stream)
                assert _texts(path, raw, stream) == _texts(path, alone, stream), (path, body)
                compared += 1
            await wait_idle(http, srv.url, timeout=30)
            stats = srv.state.engine.engine.stats()
    assert compared >= REQUESTS // 2 and any(raw is None for raw in answers)
    assert stats.spec.total_drafted > 0 and (stats.overlapped_steps > 0) == (overlap == "on")
