"""Anthropic's Messages API over real HTTP on loopback, on the embedded model: the official
`anthropic` client, and the request Claude Code sends (system and content as blocks with
cache_control, tools with input schemas, metadata, a max_tokens past the context, streamed).
Answers are set against /v1/chat/completions' answer to the same conversation, greedy."""
from __future__ import annotations

import json

import anthropic
import pytest
import pytest_asyncio

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, typed_sse_events, wait_idle
from engine import EngineConfig
from tests.api.test_chat_tools import ASK, HERMES, TWO_CALLS

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "anthropic-key"
ENGINE = dict(num_kv_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=512)
GREEDY = {"temperature": 0}
ASKED = [{"role": "user", "content": "Write a stack class."}]
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLOCK = {"name": "now", "input_schema": {"type": "object", "properties": {}}}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    engine = build_engine(EngineConfig(**ENGINE))
    async with running_server(engine, ServerConfig(served_model_names=("codellama",), port=0, api_key=KEY)) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server):
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


async def chat_text(http, server, messages: list[dict], max_tokens: int = 24) -> dict:
    async with http.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                         json={"messages": messages, "max_tokens": max_tokens, "temperature": 0}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def raw_events(http, server, body: dict, headers: dict | None = None) -> list[dict]:
    """A streamed message's events, each `event:` line checked against its data's type."""
    async with http.post(f"{server.url}/v1/messages", json=body, headers={"x-api-key": KEY, **(headers or {})}) as r:
        text = await r.text()
        assert r.status == 200 and r.content_type == "text/event-stream", text
    return typed_sse_events(text)


async def test_the_anthropic_client_gets_the_chat_answer(client, server, http):
    whole = await client.messages.create(model="codellama", max_tokens=24, messages=ASKED, extra_body=GREEDY)
    async with client.messages.stream(model="codellama", max_tokens=24, messages=ASKED, extra_body=GREEDY) as s:
        streamed = await s.get_final_message()
    ours = await chat_text(http, server, ASKED)
    text = ours["choices"][0]["message"]["content"]
    assert whole.content[0].text == streamed.content[0].text == text != ""
    assert whole.stop_reason == streamed.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[
        ours["choices"][0]["finish_reason"]]
    prompt = whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    assert prompt == ours["usage"]["prompt_tokens"] and whole.usage.output_tokens == 24
    # the same prompt again: all of it is read from the prefix cache but its last token, whose
    # logits give the first new token
    assert streamed.usage.cache_read_input_tokens == ours["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert streamed.usage.input_tokens == 1
    counted = await client.messages.count_tokens(model="codellama", messages=ASKED)
    assert counted.input_tokens == prompt
    await wait_idle(http, server.url)


async def test_stop_sequences_end_the_message_so(client, server, http):
    ours = (await chat_text(http, server, ASKED, max_tokens=48))["choices"][0]["message"]["content"]
    stop = ours[len(ours) // 2:][:3]
    assert stop.strip()
    r = await client.messages.create(model="codellama", max_tokens=48, messages=ASKED, stop_sequences=[stop],
                                     extra_body=GREEDY)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop and stop not in r.content[0].text


async def test_claude_code_request_streams_well_formed_events(server, http, template):
    """Claude Code's shape: system and content as blocks with cache_control, tools, metadata, a
    max_tokens far past the context, streamed, its beta query and headers (tools need a model whose
    chat template writes calls: Hermes' here)."""
    template(HERMES)
    body = {"model": "codellama", "max_tokens": 32000, "stream": True, "metadata": {"user_id": "user_abc"},
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Write a stack class.",
                                                        "cache_control": {"type": "ephemeral"}}]}],
            "tools": [WEATHER], "tool_choice": {"type": "auto"}, "temperature": 0,
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    async with http.post(f"{server.url}/v1/messages?beta=true", json={**body, "stream": False},
                         headers={"x-api-key": KEY, **headers}) as r:
        assert r.status == 200, await r.text()
        whole = await r.json()
    events = await raw_events(http, server, body, headers)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert [b["text"] for b in whole["content"]] == [text]
    assert events[-2]["delta"]["stop_reason"] == whole["stop_reason"]
    assert events[-2]["usage"]["output_tokens"] == whole["usage"]["output_tokens"] > 0
    await wait_idle(http, server.url)


async def test_tool_use_blocks_and_results(server, client, http, template, answers):
    chat = template(HERMES)
    answers(TWO_CALLS)
    r = await client.messages.create(model="codellama", max_tokens=200, messages=ASK, tools=[WEATHER, CLOCK])
    assert r.stop_reason == "tool_use" and r.content[0].type == "text" and r.content[0].text == "Let me check."
    uses = [b for b in r.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == [("get_weather", {"city": "Paris"}), ("now", {})]
    events = await raw_events(http, server, {"model": "codellama", "max_tokens": 200, "messages": ASK,
                                             "tools": [WEATHER, CLOCK], "stream": True})
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    partial = [(e["index"], e["delta"]["partial_json"]) for e in events
               if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
    assert [s["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert [json.loads("".join(p for i, p in partial if i == block)) for block in (1, 2)] == [{"city": "Paris"}, {}]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    async with client.messages.stream(model="codellama", max_tokens=200, messages=ASK,
                                      tools=[WEATHER, CLOCK]) as stream:  # the client's own accumulator
        streamed = await stream.get_final_message()
    assert [(b.name, b.input) for b in streamed.content if b.type == "tool_use"] == [
        ("get_weather", {"city": "Paris"}), ("now", {})]
    # The next turn as Claude Code sends it: the assistant's blocks back, then tool_result blocks.
    answers("It is sunny.")
    turn = ASK + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"},
                                               {"type": "tool_result", "tool_use_id": uses[1].id,
                                                "content": [{"type": "text", "text": "noon"}]}]}]
    after = await client.messages.create(model="codellama", max_tokens=50, messages=turn, tools=[WEATHER, CLOCK])
    assert after.content[0].text == "It is sunny." and after.stop_reason == "end_turn"
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}} for b in uses]
    seen = ASK + [{"role": "assistant", "content": "Let me check.", "tool_calls": calls},
                  {"role": "tool", "tool_call_id": uses[0].id, "name": "get_weather", "content": "sunny"},
                  {"role": "tool", "tool_call_id": uses[1].id, "name": "now", "content": "noon"}]
    tools = [{"type": "function", "function": {"name": t["name"], "description": t.get("description"),
                                               "parameters": t["input_schema"]}} for t in (WEATHER, CLOCK)]
    tools = [{"type": "function", "function": {k: v for k, v in t["function"].items() if v is not None}}
             for t in tools]
    assert after.usage.input_tokens + after.usage.cache_read_input_tokens == len(
        chat.prompt_ids(server.state.engine.tokenizer, seen, tools))


async def test_a_named_tool_choice_is_held_to_its_schema(client, template):
    import jsonschema

    template(HERMES)
    forecast = {"name": "forecast", "input_schema": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 10}, "units": {"enum": ["C", "F"]}}, "required": ["city", "units"]}}
    made = 0
    for seed in range(3):
        r = await client.messages.create(model="codellama", max_tokens=200, messages=ASK, tools=[forecast, CLOCK],
                                         tool_choice={"type": "tool", "name": "forecast"},
                                         extra_body={"temperature": 0.8, "seed": seed})
        if r.stop_reason == "tool_use":
            (use,) = [b for b in r.content if b.type == "tool_use"]
            assert use.name == "forecast"
            jsonschema.validate(use.input, forecast["input_schema"])
            made += 1
    assert made > 0


async def test_output_config_format_follows_the_schema(client):
    import jsonschema

    schema = {"type": "object", "properties": {"units": {"enum": ["C", "F"]}}, "required": ["units"],
              "additionalProperties": False}
    done = 0
    for seed in range(3):
        r = await client.messages.create(model="codellama", max_tokens=120, messages=ASKED,
                                         output_config={"format": {"type": "json_schema", "schema": schema}},
                                         extra_body={"seed": seed})
        if r.stop_reason == "end_turn":
            jsonschema.validate(json.loads(r.content[0].text), schema)
            done += 1
    assert done > 0


@pytest.mark.parametrize("body, status, kind, words", [
    ({"model": "claude-sonnet-4-5", "max_tokens": 4, "messages": ASKED}, 404, "not_found_error", "claude-sonnet"),
    ({"model": "codellama", "messages": ASKED}, 400, "invalid_request_error", "max_tokens"),
    ({"model": "codellama", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}]}]},
     400, "invalid_request_error", "image"),
    ({"model": "codellama", "max_tokens": 4, "messages": ASKED, "tools": [{"type": "web_search_20250305",
                                                                            "name": "web_search"}]},
     400, "invalid_request_error", "server tool"),
    ({"model": "codellama", "max_tokens": 4, "messages": ASKED,
      "output_config": {"format": {"type": "json_schema", "schema": {"type": "array", "uniqueItems": True}}}},
     400, "invalid_request_error", "uniqueItems"),
    ({"model": "codellama", "max_tokens": 4, "messages": ASKED, "tool_choice": {"type": "tool"}},
     400, "invalid_request_error", "name"),
    ({"model": "codellama", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     400, "invalid_request_error", "text block needs its text"),
    ({"model": "codellama", "max_tokens": 4, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "a", "name": "f", "input": [1]}]}]}, 400, "invalid_request_error", "input object"),
    ({"model": "codellama", "max_tokens": 4, "system": [{"type": "image"}], "messages": ASKED},
     400, "invalid_request_error", "only text blocks"),
])
async def test_bad_requests_are_anthropic_errors(server, http, body, status, kind, words):
    async with http.post(f"{server.url}/v1/messages", json=body, headers={"x-api-key": KEY}) as r:
        got = await r.json()
        assert r.status == status and got["type"] == "error" and got["error"]["type"] == kind, got
    assert words in got["error"]["message"]


async def test_the_key_is_read_from_x_api_key_or_bearer(server, http):
    for headers, status in (({}, 401), ({"x-api-key": "wrong"}, 401), ({"x-api-key": KEY}, 200),
                            ({"Authorization": f"Bearer {KEY}"}, 200)):
        async with http.post(f"{server.url}/v1/messages", headers=headers,
                             json={"model": "codellama", "max_tokens": 2, "messages": ASKED}) as r:
            got = await r.json()
            assert r.status == status, got
            if status == 401:
                assert got["error"]["type"] == "authentication_error"


async def test_a_client_that_leaves_mid_stream_frees_its_blocks(server, http):
    body = {"model": "codellama", "max_tokens": 400, "messages": ASKED, "stream": True}
    async with http.post(f"{server.url}/v1/messages", json=body, headers={"x-api-key": KEY}) as r:
        assert (await r.content.readline()).startswith(b"event: message_start")
    await wait_idle(http, server.url)


async def test_a_system_message_within_the_conversation_reaches_a_template_that_takes_one_only_first(
        client, server, http):
    """Claude Code sends system messages within the conversation; CodeLlama-Instruct's template
    (the embedded model's) takes one only first: the later one goes into the next user turn, and
    the answer is the chat answer to that conversation."""
    turns = [{"role": "user", "content": "Write a stack class."}, {"role": "assistant", "content": "class Stack: pass"}]
    r = await client.messages.create(model="codellama", max_tokens=12, system="Answer in Python.", extra_body=GREEDY,
                                     messages=[*turns, {"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Add push."}])
    folded = await chat_text(http, server, [{"role": "system", "content": "Answer in Python."}, *turns,
                                            {"role": "user", "content": "Be brief.\n\nAdd push."}], max_tokens=12)
    assert r.content[0].text == folded["choices"][0]["message"]["content"]
