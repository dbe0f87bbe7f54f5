"""serve_load's client against a real `fastcodellama serve` app on loopback."""
from __future__ import annotations

import aiohttp
import pytest

import serve_load
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server
from engine import DEFAULT_MODEL, EngineConfig

PROMPTS = ("def add(a, b):\n", "import os\n\ndef main():\n", "class Stack:\n    def push(self, x):\n")


@pytest.fixture
async def server():
    engine = build_engine(EngineConfig(num_kv_blocks=128, max_num_seqs=8, max_num_batched_tokens=256))
    async with running_server(engine, ServerConfig(served_model_names=("codemodel",), port=0)) as srv:
        yield srv


async def test_poisson_and_closed_loop_measure_every_request(server, tmp_path):
    load = serve_load.Load(prompts=PROMPTS, max_tokens=8, requests=4, max_seconds=30, request_timeout=30)
    count = serve_load.TokenCounter(DEFAULT_MODEL)
    out = await serve_load.run_target("fastcodellama", server.url, load, rates=[50.0], concurrency=[2], count=count)
    assert out["model"] == "codemodel" and [p["mode"] for p in out["points"]] == ["poisson", "closed"]
    for p in out["points"]:
        assert (p["requests"], p["ok"], p["errors"]) == (4, 4, 0)
        assert 4 <= p["output_tokens"] <= 4 * 8  # usage from the server; EOS may end a sample early
        assert p["tokens_from_usage"] == 4 and sum(p["finish_reasons"].values()) == 4 and "None" not in p["finish_reasons"]
        assert p["ttft_s"]["n"] == 4 and 0 < p["ttft_s"]["p50"] <= p["e2e_s"]["p99"]
        assert p["request_throughput"] > 0 and p["token_throughput"] > 0
        assert p["ttft_s"]["p50"] <= p["ttft_s"]["p90"] <= p["ttft_s"]["p99"]
    results = {"machine": "test", "date": "2026-01-01T00:00:00+00:00", "targets": [out],
               "load": {"prompts": list(PROMPTS), "requests": 4, "max_seconds": 30, "max_tokens": 8,
                        "temperature": 0.8, "top_p": 0.95}}
    paths = serve_load.report(results, str(tmp_path), plot=False)
    md = open(paths["md"]).read()
    assert "| fastcodellama | poisson 50/s | 4/4 | 0 |" in md and "| fastcodellama | closed x2 | 4/4 | 0 |" in md
    fin = out["points"][0]["finish_reasons"]
    assert f"| {fin.get('length', 0)}/{fin.get('stop', 0)}/0 |" in md


async def test_rejected_request_is_an_error_not_a_crash(server):
    load = serve_load.Load(prompts=PROMPTS, max_tokens=4)
    async with aiohttp.ClientSession() as http:
        res = await serve_load.one_request(http, server.url, "no-such-model", PROMPTS[0], load, 0,
                                           serve_load.TokenCounter(None))
    assert not res.ok and res.error.startswith("HTTP 404")
    assert serve_load.summarize([res])["error_kinds"] == {"HTTP 404": 1}


def test_only_loopback_targets():
    for url in ("http://127.0.0.1:8000", "http://127.3.4.5:1", "http://localhost:9", "http://[::1]:8000"):
        serve_load.check_loopback(url)
    for url in ("http://10.0.0.1:8000", "http://192.168.1.2", "http://example.com", "http://0.0.0.0:80"):
        with pytest.raises(ValueError):
            serve_load.check_loopback(url)


def test_request_metrics():
    r = serve_load.RequestResult(ok=True, start=10.0, end=11.0, ttft=0.2, tokens=5, itl=[0.2, 0.2, 0.2, 0.2])
    assert r.tpot == pytest.approx(0.2)
    s = serve_load.summarize([r, serve_load.RequestResult(ok=False, start=10.5, end=12.0, error="HTTP 429: busy")])
    assert (s["requests"], s["ok"], s["errors"], s["error_kinds"]) == (2, 1, 1, {"HTTP 429": 1})
    assert s["duration_s"] == pytest.approx(2.0) and s["token_throughput"] == pytest.approx(2.5)
