"""POST /tokenize and /detokenize over loopback, with the bodies vLLM's and llama.cpp's clients send."""
from __future__ import annotations

import aiohttp
import pytest

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server
from engine import EngineConfig

TEXT = "def add(a, b):\n    return a + b\n"


@pytest.fixture
async def server():
    engine = build_engine(EngineConfig(num_kv_blocks=64, block_size=16, max_num_seqs=4))
    async with running_server(engine, ServerConfig(served_model_names=("coder",), port=0)) as srv:
        yield srv


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http, url: str, body: dict, expect: int = 200) -> dict:
    async with http.post(url, json=body) as r:
        assert r.status == expect, await r.text()
        return await r.json()


async def test_tokenize_in_both_dialects(server, http):
    tokenizer = server.state.engine.tokenizer
    vllm = await post(http, f"{server.url}/tokenize", {"model": "coder", "prompt": TEXT})
    assert vllm["tokens"] == tokenizer.encode(TEXT) and vllm["count"] == len(vllm["tokens"])
    assert vllm["max_model_len"] == server.state.engine.max_model_len
    assert vllm["tokens"][0] == tokenizer.bos_id  # vLLM's default: the BOS first
    llama = await post(http, f"{server.url}/tokenize", {"content": TEXT})
    assert llama["tokens"] == tokenizer.encode(TEXT, add_bos=False)  # llama.cpp's default: no BOS
    both = await post(http, f"{server.url}/tokenize", {"content": TEXT, "add_special": True})
    assert both["tokens"] == vllm["tokens"]
    pieces = await post(http, f"{server.url}/tokenize", {"content": TEXT, "with_pieces": True})
    assert [p["id"] for p in pieces["tokens"]] == llama["tokens"]
    assert "".join(p["piece"] for p in pieces["tokens"]).replace(" ", "") == TEXT.replace(" ", "")


async def test_tokenize_a_chat_as_the_chat_endpoint_prompts_it(server, http):
    messages = [{"role": "user", "content": "Write add."}]
    chat = await post(http, f"{server.url}/tokenize", {"messages": messages})
    template = server.state.chat_template
    assert chat["tokens"] == template.prompt_ids(server.state.engine.tokenizer, messages)
    async with http.post(f"{server.url}/v1/chat/completions",
                         json={"messages": messages, "max_tokens": 1, "temperature": 0}) as r:
        assert (await r.json())["usage"]["prompt_tokens"] == chat["count"]


async def test_detokenize_round_trip(server, http):
    ids = server.state.engine.tokenizer.encode(TEXT, add_bos=False)
    answer = await post(http, f"{server.url}/detokenize", {"tokens": ids})
    assert answer["prompt"] == answer["content"] == TEXT


@pytest.mark.parametrize("path,body", [
    ("/tokenize", {}),
    ("/tokenize", {"prompt": "a", "content": "b"}),
    ("/tokenize", {"prompt": 5}),
    ("/tokenize", {"prompt": "a", "model": "another-model"}),
    ("/tokenize", {"messages": "hello"}),
    ("/detokenize", {"tokens": [1, -2]}),
    ("/detokenize", {"tokens": [10 ** 9]}),
    ("/detokenize", {"tokens": "abc"})])
async def test_bad_bodies_are_4xx_with_a_message(server, http, path, body):
    async with http.post(f"{server.url}{path}", json=body) as r:
        assert 400 <= r.status < 500
        assert (await r.json())["error"]["message"]
    await post(http, f"{server.url}/tokenize", {"prompt": "still serving"})
