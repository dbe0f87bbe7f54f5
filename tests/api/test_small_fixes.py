"""Issue #21 item 10: what /v1/models shows, echo with max_tokens 0, how a malformed request is logged."""
from __future__ import annotations

import asyncio
import json
import logging
import math

import aiohttp
import pytest

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, sse_events
from engine import LLM, EngineConfig, SamplingParams

CT = "/v1/completions"
ENGINE = dict(num_kv_blocks=128, block_size=8, max_num_seqs=8, max_num_batched_tokens=128)


@pytest.fixture
async def server(tiny_model_dir):
    engine = build_engine(EngineConfig(model=tiny_model_dir, **ENGINE), spec=None)
    async with running_server(engine, ServerConfig(served_model_names=("tiny", "alias"), port=0)) as srv:
        yield srv


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_models_show_the_served_name_not_the_path(server, http, tiny_model_dir):
    async with http.get(server.url + "/v1/models") as r:
        text = await r.text()
    assert tiny_model_dir not in text and "/" not in "".join(c["root"] for c in json.loads(text)["data"])
    assert [(c["id"], c["root"]) for c in json.loads(text)["data"]] == [("tiny", "tiny"), ("alias", "tiny")]


async def test_echo_with_max_tokens_0_returns_the_prompt(server, http):
    body = {"prompt": ["import os\n", "x = 1"], "max_tokens": 0, "echo": True, "n": 2}
    async with http.post(server.url + CT, json=body) as r:
        assert r.status == 200, await r.text()
        out = await r.json()
    assert [c["text"] for c in out["choices"]] == ["import os\n"] * 2 + ["x = 1"] * 2
    assert {c["finish_reason"] for c in out["choices"]} == {"length"}
    assert out["usage"]["completion_tokens"] == 0 and out["usage"]["prompt_tokens"] > 2
    async with http.post(server.url + CT, json={"prompt": "x", "max_tokens": 0}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "max_tokens"  # nothing to return


async def test_echo_logprobs_are_the_prompts_own(server, http, tiny_model_dir):
    """The prompt's log probabilities agree with those of the same tokens when generated."""
    offline = LLM(tiny_model_dir, **ENGINE)
    prompt = offline.tokenizer.encode("def main():\n")
    gen = offline.generate([prompt], SamplingParams(temperature=0, max_tokens=6, logprobs=True))[0].outputs[0]
    ids = prompt + list(gen.token_ids)
    body = {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}
    async with http.post(server.url + CT, json=body) as r:
        assert r.status == 200, await r.text()
        choice = (await r.json())["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) and lp["token_logprobs"][0] is None
    assert "".join(lp["tokens"]) == choice["text"]
    assert all(isinstance(v, float) and v <= 0 and math.isfinite(v) for v in lp["token_logprobs"][1:])
    assert lp["token_logprobs"][-6:] == pytest.approx(gen.logprobs, abs=1e-3)
    async with http.post(server.url + CT, json={**body, "stream": True,
                                                "stream_options": {"include_usage": True}}) as r:
        events = sse_events(await r.text())
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 0
    streamed = json.loads(events[0])["choices"][0]
    assert streamed["logprobs"] == lp


async def test_a_malformed_request_is_one_info_line(server, caplog):
    host, port = server.url.removeprefix("http://").split(":")
    with caplog.at_level(logging.DEBUG):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await asyncio.sleep(0.1)
    assert status.split()[1] == b"400", status
    records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert [r.levelno for r in records] == [logging.INFO], [(r.levelname, r.getMessage()) for r in records]
    assert records[0].exc_info is None and "malformed HTTP request from 127.0.0.1" in records[0].getMessage()
    assert "\n" not in records[0].getMessage()
