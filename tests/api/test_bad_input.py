"""Every bad input is a 4xx with an OpenAI error object; never a 500, never a dead server."""
from __future__ import annotations

import json

import pytest
import pytest_asyncio

from engine import EngineConfig
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, wait_idle

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_BODY = 64 * 1024
CT = "/v1/completions"


def js(**body) -> bytes:
    return json.dumps(body).encode()


# (name, method, path, raw body, expected status, expected error param or None)
CASES = [
    ("invalid json", "POST", CT, b'{"prompt": ', 400, None),
    ("json not an object", "POST", CT, b'["x"]', 400, None),
    ("empty body", "POST", CT, b"", 400, None),
    ("invalid utf-8", "POST", CT, b'{"prompt": "\xff\xfe x"}', 400, None),
    ("NaN", "POST", CT, b'{"prompt": "x", "temperature": NaN}', 400, None),
    ("Infinity", "POST", CT, b'{"prompt": "x", "max_tokens": Infinity}', 400, None),
    ("deep nesting", "POST", CT, b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}", 400, None),
    ("lone surrogate", "POST", CT, b'{"prompt": "a\\ud800b"}', 400, "prompt"),
    ("lone surrogate in a chat message", "POST", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "\\udc00"}]}', 400, "messages"),
    ("lone surrogate in a prediction", "POST", CT, b'{"prompt": "x", "prediction": {"content": "\\ud800"}}', 400,
     "prediction"),
    ("lone surrogate in an infill prefix", "POST", "/infill", b'{"input_prefix": "\\ud800", "n_predict": 2}', 400,
     "input_prefix"),
    ("lone surrogate in a key", "POST", CT, b'{"prompt": "x", "logit_bias": {"\\ud800": 1}}', 400, "logit_bias"),
    ("number out of range", "POST", "/infill", b'{"input_prefix": "a", "temperature": 1e999}', 400, None),
    ("guided_json text with Infinity", "POST", CT, js(prompt="x", guided_json='{"const": Infinity}'), 400,
     "structured_outputs"),
    ("no prompt", "POST", CT, js(max_tokens=3), 400, "prompt"),
    ("prompt wrong type", "POST", CT, js(prompt=1), 400, "prompt"),
    ("prompt mixed list", "POST", CT, js(prompt=["a", 3]), 400, "prompt"),
    ("prompt float ids", "POST", CT, js(prompt=[1.5, 2]), 400, "prompt"),
    ("empty prompt", "POST", CT, js(prompt=""), 400, "prompt"),
    ("empty prompt list", "POST", CT, js(prompt=[]), 400, "prompt"),
    ("empty token list", "POST", CT, js(prompt=[[]]), 400, "prompt"),
    ("empty prompt in list", "POST", CT, js(prompt=["a", ""]), 400, "prompt"),
    ("token id out of range", "POST", CT, js(prompt=[1, 99999]), 400, "prompt"),
    ("negative token id", "POST", CT, js(prompt=[-1]), 400, "prompt"),
    ("huge token id", "POST", CT, js(prompt=[2 ** 80]), 400, "prompt"),
    ("too many prompts", "POST", CT, js(prompt=["a"] * 129), 400, "prompt"),
    ("prompt over the context (text)", "POST", CT, js(prompt="word " * 3000), 400, "prompt"),
    ("prompt over the context (ids)", "POST", CT, js(prompt=[5] * 600), 400, "prompt"),
    ("max_tokens negative", "POST", CT, js(prompt="x", max_tokens=-1), 400, "max_tokens"),
    ("max_tokens zero", "POST", CT, js(prompt="x", max_tokens=0), 400, "max_tokens"),
    ("max_tokens huge", "POST", CT, js(prompt="x", max_tokens=10 ** 12), 400, "max_tokens"),
    ("max_tokens string", "POST", CT, js(prompt="x", max_tokens="16"), 400, "max_tokens"),
    ("max_tokens float", "POST", CT, js(prompt="x", max_tokens=16.5), 400, "max_tokens"),
    ("max_tokens bool", "POST", CT, js(prompt="x", max_tokens=True), 400, "max_tokens"),
    ("n zero", "POST", CT, js(prompt="x", n=0), 400, "n"),
    ("n over 128", "POST", CT, js(prompt="x", n=129), 400, "n"),
    ("n beyond capacity", "POST", CT, js(prompt="x", n=128), 400, "n"),
    ("prompts x n beyond capacity", "POST", CT, js(prompt=["a", "b", "c"], n=20), 400, "n"),
    ("best_of != n", "POST", CT, js(prompt="x", n=1, best_of=3), 400, "best_of"),
    ("best_of over limit", "POST", CT, js(prompt="x", best_of=1000), 400, "best_of"),
    ("temperature negative", "POST", CT, js(prompt="x", temperature=-1), 400, "temperature"),
    ("temperature string", "POST", CT, js(prompt="x", temperature="hot"), 400, "temperature"),
    ("top_p zero", "POST", CT, js(prompt="x", top_p=0), 400, "top_p"),
    ("top_p over 1", "POST", CT, js(prompt="x", top_p=1.5), 400, "top_p"),
    ("top_k below -1", "POST", CT, js(prompt="x", top_k=-5), 400, "top_k"),
    ("presence_penalty", "POST", CT, js(prompt="x", presence_penalty=5), 400, "presence_penalty"),
    ("repetition_penalty zero", "POST", CT, js(prompt="x", repetition_penalty=0), 400, "repetition_penalty"),
    ("min_tokens > max_tokens", "POST", CT, js(prompt="x", max_tokens=4, min_tokens=9), 400, "min_tokens"),
    ("seed string", "POST", CT, js(prompt="x", seed="abc"), 400, "seed"),
    ("logprobs too many", "POST", CT, js(prompt="x", logprobs=99), 400, "logprobs"),
    ("stop wrong type", "POST", CT, js(prompt="x", stop=5), 400, "stop"),
    ("stop empty string", "POST", CT, js(prompt="x", stop=[""]), 400, "stop"),
    ("too many stops", "POST", CT, js(prompt="x", stop=[str(i) for i in range(17)]), 400, "stop"),
    ("stream not bool", "POST", CT, js(prompt="x", stream="yes"), 400, "stream"),
    ("stream_options wrong", "POST", CT, js(prompt="x", stream=True, stream_options=3), 400, "stream_options"),
    ("echo with logprobs", "POST", CT, js(prompt="x", echo=True, logprobs=1), 400, "echo"),
    ("suffix with token ids", "POST", CT, js(prompt=[1, 5, 6], suffix="y"), 400, "suffix"),
    ("suffix wrong type", "POST", CT, js(prompt="x", suffix=3), 400, "suffix"),
    ("unknown model", "POST", CT, js(prompt="x", model="gpt-4"), 404, "model"),
    ("unknown engine", "POST", "/v1/engines/davinci/completions", js(prompt="x"), 404, "engine"),
    ("stream and bad prompt", "POST", CT, js(prompt=[5] * 600, stream=True), 400, "prompt"),
    ("oversize body", "POST", CT, js(prompt="x" * (MAX_BODY + 10)), 413, None),
    ("unknown route", "GET", "/v2/nothing", b"", 404, None),
    ("wrong method", "GET", CT, b"", 405, None),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tiny_model_dir):
    engine = build_engine(EngineConfig(model=tiny_model_dir, num_kv_blocks=128, block_size=8, max_num_seqs=8,
                                       max_num_batched_tokens=128))
    config = ServerConfig(served_model_names=("tiny",), port=0, max_queue=40, max_body_bytes=MAX_BODY)
    async with running_server(engine, config) as srv:
        yield srv


@pytest.mark.parametrize("name,method,path,body,status,param", CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_a_4xx_json_error(server, http, name, method, path, body, status, param):
    headers = {"Content-Type": "application/json"}
    async with http.request(method, server.url + path, data=body, headers=headers) as r:
        assert r.status == status, await r.text()
        assert r.content_type == "application/json"
        error = (await r.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


async def test_server_still_serves_after_bad_inputs(server, http):
    async with http.post(server.url + CT, json={"prompt": "def f():", "max_tokens": 3}) as r:
        assert r.status == 200
        assert len((await r.json())["choices"]) == 1
    await wait_idle(http, server.url)
    async with http.get(server.url + "/metrics") as r:
        assert 'status="500"' not in await r.text()


@pytest.mark.asyncio(loop_scope="module")
async def test_copilots_default_engine_names_are_served_and_others_are_told_the_flag(server, http):
    for engine in ("codegen", "copilot-codex"):  # what Copilot and the FauxPilot recipe ask for by default
        async with http.post(f"{server.url}/v1/engines/{engine}/completions", json={"prompt": "x", "max_tokens": 2}) as r:
            assert r.status == 200, await r.text()
    async with http.post(f"{server.url}/v1/engines/davinci/completions", json={"prompt": "x"}) as r:
        message = (await r.json())["error"]["message"]
    assert r.status == 404 and "--served-model-name tiny davinci" in message


async def test_a_body_that_cannot_be_decoded_is_a_400_that_closes_the_connection(server, http):
    """Content-Encoding gzip on a body that is not: the body cannot be read, nor the connection go on."""
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with http.post(server.url + CT, data=js(prompt="a", max_tokens=2), headers=headers) as r:
        assert r.status == 400 and r.headers.get("Connection", "").lower() == "close"
        assert (await r.json())["error"]["code"] == "invalid_encoding"
    async with http.post(server.url + CT, json={"prompt": "def f():", "max_tokens": 2}) as r:
        assert r.status == 200
