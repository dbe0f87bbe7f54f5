"""Raw HTTP: Copilot's endpoints, fill-in-the-middle, SSE framing, logprobs, echo, health, metrics, OpenAPI, CORS."""
from __future__ import annotations

import math

import json
import time

import aiohttp
import pytest

from engine import LLM, EngineConfig, SamplingParams
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, sse_events, wait_idle

ENGINE = dict(num_kv_blocks=256, block_size=8, max_num_seqs=16, max_num_batched_tokens=256)
PREFIX, SUFFIX = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def offline(tiny_model_dir) -> LLM:
    return LLM(tiny_model_dir, **ENGINE)


@pytest.fixture
async def server(tiny_model_dir):
    engine = build_engine(EngineConfig(model=tiny_model_dir, **ENGINE))
    async with running_server(engine, ServerConfig(served_model_names=("tiny", "copilot-codex"), port=0)) as srv:
        yield srv


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http, url, body, expect=200):
    async with http.post(url, json=body) as r:
        assert r.status == expect, await r.text()
        assert r.content_type == "application/json"
        return await r.json()


async def test_copilot_token_and_engine_path_stream(server, http):
    async with http.get(f"{server.url}/copilot_internal/v2/token") as r:
        token = await r.json()
    assert r.status == 200 and token["token"] and token["refresh_in"] == 1500
    assert token["expires_at"] > time.time() + 365 * 24 * 3600
    body = {  # what Copilot sends, unknown fields included
        "prompt": "# hello\nimport os\n", "suffix": "", "max_tokens": 10, "temperature": 0, "top_p": 1, "n": 2,
        "stop": ["\n\n\n"], "stream": True, "logprobs": 2, "nwo": "octo/repo",
        "extra": {"language": "python", "next_indent": 0, "trim_by_indentation": True, "prompt_tokens": 5}}
    async with http.post(f"{server.url}/v1/engines/copilot-codex/completions", json=body,
                         headers={"Authorization": f"Bearer {token['token']}"}) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        events = sse_events(await r.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}
    finished = [c for c in chunks if c["choices"][0]["finish_reason"]]
    assert len(finished) == 2
    for c in chunks:
        assert c["object"] == "text_completion" and c["model"] == "tiny"
    async with http.post(f"{server.url}/v1/engines/davinci-002/completions", json={"prompt": "x"}) as r:
        assert r.status == 404 and (await r.json())["error"]["param"] == "engine"


async def test_fill_in_the_middle_matches_offline(server, http, offline):
    tok = offline.tokenizer
    fim = tok.fim
    assert fim is not None  # the fixture's tokenizer has <PRE>/<SUF>/<MID>/<EOT>
    ids = ([tok.bos_id, fim.prefix] + tok.encode(PREFIX, add_bos=False) + [fim.suffix]
           + tok.encode(SUFFIX, add_bos=False) + [fim.middle])
    expected = offline.generate([ids], SamplingParams(temperature=0.0, max_tokens=12,
                                                      stop_token_ids=(fim.eot,)))[0].outputs[0]
    r = await post(http, f"{server.url}/v1/completions",
                   {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 12, "temperature": 0})
    assert r["choices"][0]["text"] == expected.text
    assert r["usage"]["prompt_tokens"] == len(ids)
    assert r["usage"]["completion_tokens"] == len(expected.token_ids)


async def test_min_p_keeps_only_tokens_likely_enough_next_to_the_best(server, http):
    """vLLM's min_p: at temperature 1 each sampled token's probability is at least min_p times the
    likeliest's (read off the returned logprobs); min_p 1 leaves the greedy choice alone."""
    body = {"prompt": PREFIX, "max_tokens": 24, "temperature": 1.0, "logprobs": 1, "seed": 3, "n": 4}

    def ratios(r: dict) -> list[float]:
        return [lp - max(top.values()) for c in r["choices"]
                for lp, top in zip(c["logprobs"]["token_logprobs"], c["logprobs"]["top_logprobs"])]

    assert min(ratios(await post(http, f"{server.url}/v1/completions", body))) < math.log(0.5)  # without it
    assert min(ratios(await post(http, f"{server.url}/v1/completions", {**body, "min_p": 0.5}))) >= \
        math.log(0.5) - 1e-4
    greedy = await post(http, f"{server.url}/v1/completions", {**body, "temperature": 0, "n": 1, "logprobs": None})
    only_best = await post(http, f"{server.url}/v1/completions", {**body, "min_p": 1.0, "n": 1, "logprobs": None})
    assert only_best["choices"][0]["text"] == greedy["choices"][0]["text"]
    async with http.post(f"{server.url}/v1/completions", json={**body, "min_p": 1.5}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "min_p"


async def test_suffix_without_fim_tokens_is_a_clear_400(server, http, monkeypatch):
    monkeypatch.setattr(server.state.engine.tokenizer, "fim", None)
    r = await post(http, f"{server.url}/v1/completions", {"prompt": PREFIX, "suffix": SUFFIX}, expect=400)
    assert r["error"]["param"] == "suffix" and "fill-in-the-middle" in r["error"]["message"]
    # An empty suffix (an editor at the end of a file) is a plain completion then.
    await post(http, f"{server.url}/v1/completions", {"prompt": PREFIX, "suffix": "", "max_tokens": 2})


async def test_sse_framing_usage_and_stream_logprobs(server, http):
    body = {"prompt": ["x = 1\n", "def f():"], "max_tokens": 6, "temperature": 0, "stream": True,
            "logprobs": 0, "stream_options": {"include_usage": True}}
    async with http.post(f"{server.url}/v1/completions", json=body) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["Cache-Control"] == "no-cache"
        raw = await r.text()
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    tokens = {0: [], 1: []}
    for c in chunks[:-1]:
        choice = c["choices"][0]
        lp = choice["logprobs"]
        if lp is not None:
            assert lp["top_logprobs"] is None
            assert all(x <= 0 for x in lp["token_logprobs"])
            tokens[choice["index"]] += lp["tokens"]
    assert sum(len(t) for t in tokens.values()) == usage["usage"]["completion_tokens"]


async def test_logprobs_and_echo(server, http):
    r = await post(http, f"{server.url}/v1/completions",
                   {"prompt": "import os\n", "max_tokens": 8, "temperature": 0, "logprobs": 1})
    choice = r["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == r["usage"]["completion_tokens"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == 0
    # logprobs: 1, greedy: the one likeliest token at each position is the chosen one.
    assert [list(top.values()) for top in lp["top_logprobs"]] == [[v] for v in lp["token_logprobs"]]
    # Where a token's piece is whole (no bytes of a character pending), its text is the alternative's.
    whole = [(top, tok) for top, tok in zip(lp["top_logprobs"], lp["tokens"])
             if tok and "\ufffd" not in tok + next(iter(top))]
    assert whole and all(list(top) == [tok] for top, tok in whole)
    several = await post(http, f"{server.url}/v1/completions",
                         {"prompt": "import os\n", "max_tokens": 8, "temperature": 0, "logprobs": 5})
    assert several["choices"][0]["text"] == choice["text"]
    for top, value in zip(several["choices"][0]["logprobs"]["top_logprobs"], lp["token_logprobs"]):
        values = list(top.values())
        assert 1 <= len(values) <= 5 and values == sorted(values, reverse=True) and values[0] == pytest.approx(value)
    echoed = await post(http, f"{server.url}/v1/completions",
                        {"prompt": "import os\n", "max_tokens": 8, "temperature": 0, "echo": True})
    assert echoed["choices"][0]["text"] == "import os\n" + choice["text"]


async def test_unknown_fields_are_ignored_and_model_checked(server, http):
    await post(http, f"{server.url}/v1/completions",
               {"prompt": "x", "max_tokens": 2, "model": "copilot-codex", "nwo": "a/b", "extra": {"k": 1},
                "intent": True, "user": "me"})
    r = await post(http, f"{server.url}/v1/completions", {"prompt": "x", "model": "nope"}, expect=404)
    assert r["error"] == {"message": r["error"]["message"], "type": "invalid_request_error", "param": "model",
                          "code": "model_not_found"}


async def test_health_models_metrics_openapi(server, http):
    health = await wait_idle(http, server.url)
    assert health["ok"] and health["model"] == "tiny" and health["kv_blocks_total"] == 256
    async with http.get(f"{server.url}/v1/models") as r:
        models = await r.json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    await post(http, f"{server.url}/v1/completions", {"prompt": "def f(x):\n    return x\n" * 3, "max_tokens": 24,
                                                      "temperature": 0})
    await post(http, f"{server.url}/v1/completions", {"prompt": "x", "max_tokens": 2})
    await post(http, f"{server.url}/v1/completions", {"prompt": ""}, expect=400)
    async with http.get(f"{server.url}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    for name in ("fastcodellama_http_requests_total", "fastcodellama_prompt_tokens_total",
                 "fastcodellama_generation_tokens_total", "fastcodellama_time_to_first_token_seconds_bucket",
                 "fastcodellama_time_per_output_token_seconds_bucket", "fastcodellama_spec_accepted_draft_length",
                 "fastcodellama_kv_blocks_in_use", "fastcodellama_queue_depth"):
        assert name in text, name
    assert 'fastcodellama_http_requests_total{endpoint="/v1/completions",status="400"} 1.0' in text
    assert 'fastcodellama_http_requests_total{endpoint="/v1/completions",status="200"} 2.0' in text
    assert "fastcodellama_time_to_first_token_seconds_count 2.0" in text
    async with http.get(f"{server.url}/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/completions", "/v1/engines/{engine}/completions", "/v1/models", "/health", "/metrics",
            "/copilot_internal/v2/token"} <= set(doc["paths"])
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"prompt", "suffix", "max_tokens", "n", "best_of", "stream", "stop", "logprobs", "echo"} <= set(props)
    assert "CompletionResponse" in doc["components"]["schemas"]


async def test_no_cors_by_default_and_cors_when_asked(server, http, tiny_model_dir):
    headers = {"Origin": "http://example.test"}
    async with http.get(f"{server.url}/v1/models", headers=headers) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    engine = build_engine(EngineConfig(model=tiny_model_dir, **ENGINE), spec=None)
    config = ServerConfig(served_model_names=("tiny",), port=0, cors_origins=("http://example.test",))
    async with running_server(engine, config) as srv:
        preflight = {**headers, "Access-Control-Request-Method": "POST"}
        async with http.options(f"{srv.url}/v1/completions", headers=preflight) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "http://example.test"
        async with http.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": True},
                             headers=headers) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "http://example.test"
            await r.read()
        async with http.get(f"{srv.url}/v1/models", headers={"Origin": "http://evil.test"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_replay_cannot_be_switched_on_over_http(server, http, offline):
    """Trace replay (a benchmark-only SamplingParams field) is not part of the API: a request
    carrying it gets the model's own greedy tokens."""
    prompt = "def add(a, b):\n"
    forced = [[7] * 6]
    async with http.post(f"{server.url}/v1/completions", json={
            "prompt": prompt, "max_tokens": 6, "temperature": 0, "replay_token_ids": forced}) as r:
        body = await r.json()
    own = offline.generate(prompt, SamplingParams(temperature=0, max_tokens=6))[0].outputs[0]
    replayed = offline.generate(prompt, SamplingParams(temperature=0, max_tokens=6, replay_token_ids=forced))[0]
    assert r.status == 200 and body["choices"][0]["text"] == own.text
    assert replayed.outputs[0].token_ids == forced[0] and own.token_ids != forced[0]


async def test_a_stream_interval_sends_events_of_that_many_tokens_but_its_first_and_last(tiny_model_dir, http):
    """--stream-interval 4: every event of a stream between its first and its last carries at least
    4 new tokens; the tokens and the text add up to the whole answer, as without it."""
    body = {"prompt": "def f(x):", "max_tokens": 24, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    answers = {}
    for interval in (1, 4):
        engine = build_engine(EngineConfig(model=tiny_model_dir, **ENGINE), spec=None)
        config = ServerConfig(served_model_names=("tiny",), port=0, stream_interval=interval)
        async with running_server(engine, config) as srv:
            async with http.post(f"{srv.url}/v1/completions", json={**body, "stream": True}) as r:
                events = [json.loads(e) for e in sse_events(await r.text()) if e != "[DONE]"]
        counts = [len(e["choices"][0]["logprobs"]["tokens"]) for e in events]
        answers[interval] = ("".join(e["choices"][0]["text"] for e in events), sum(counts))
        if interval == 4:
            assert all(n >= 4 for n in counts[1:-1]) and len(events) <= 2 + 24 // 4
    assert answers[1] == answers[4] and answers[4][1] == 24
