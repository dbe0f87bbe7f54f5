"""OpenAI's Responses API (POST /v1/responses) over real HTTP with the `openai` client and the
bodies the Codex CLI sends (instructions, developer and user messages, function tools, calls and
their outputs, reasoning items): answers equal the chat endpoint's, streams add up to the whole
response, calls come back as function_call items, a thinking model's reasoning as a reasoning
item, and what cannot be honoured is a 400. Calls and reasoning are written answers replayed
through the engine (the embedded model writes neither)."""
from __future__ import annotations

import json
import random

import jsonschema
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, typed_sse_events, wait_idle
from engine import EngineConfig
from tests.api.test_chat_tools import HERMES
from tests.api.test_reasoning import ANSWER, QWEN3_LIKE, REASONING, THOUGHT

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "responses-key"
SHELL = {"type": "function", "name": "shell", "description": "Runs a command.", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"]}}
CALL = '<tool_call>\n{"name": "shell", "arguments": {"command": ["ls", "-la"]}}\n</tool_call>'
# What the Codex CLI sends (wire_api "responses"): its instructions, the environment as a developer
# message, the user's turn, its tools, no stored state.
CODEX = {"model": "coder", "instructions": "You are a coding agent.", "tool_choice": "auto",
         "parallel_tool_calls": False, "store": False, "stream": True, "include": ["reasoning.encrypted_content"],
         "prompt_cache_key": "abc", "reasoning": None, "tools": [SHELL],
         "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "cwd: /src"}]},
                   {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List files."}]}]}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    engine = build_engine(EngineConfig(num_kv_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=512))
    async with running_server(engine, ServerConfig(served_model_names=("coder",), port=0, api_key=KEY)) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server):
    async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


async def test_the_answer_is_the_chat_endpoints(client):
    asked = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}]
    chat = await client.chat.completions.create(model="coder", messages=asked, max_tokens=24, temperature=0)
    r = await client.responses.create(model="coder", instructions="Be brief.", input="def add(a, b):",
                                      max_output_tokens=24, temperature=0)
    assert r.output_text == chat.choices[0].message.content and r.output_text
    assert r.usage.input_tokens == chat.usage.prompt_tokens and r.usage.output_tokens == chat.usage.completion_tokens
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"  # cut at 24 tokens
    assert r.id.startswith("resp_") and r.output[0].type == "message" and r.output[0].id.startswith("msg_")


async def test_a_stream_adds_up_to_the_whole_response(client, answers):
    answers(ANSWER)
    whole = await client.responses.create(model="coder", input="Add.", temperature=0)
    assert whole.status == "completed" and whole.output_text == ANSWER
    async with client.responses.stream(model="coder", input="Add.", temperature=0) as stream:
        events = [e async for e in stream]
        final = await stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    assert final.output_text == ANSWER and final.id == events[0].response.id and final.usage.output_tokens > 0


async def test_a_cut_stream_ends_incomplete(server, http):
    body = {"model": "coder", "input": "def f():", "max_output_tokens": 5, "stream": True}
    async with http.post(f"{server.url}/v1/responses", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200
        events = typed_sse_events(await r.text())
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("stream", [False, True])
async def test_codex_calls_come_back_as_function_call_items(server, http, template, answers, stream):
    template(HERMES)
    answers("Listing.\n" + CALL)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(f"{server.url}/v1/responses", json={**CODEX, "stream": stream}, headers=headers) as r:
        assert r.status == 200
        body = await r.text()
    if stream:
        events = typed_sse_events(body)
        done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        pieces = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
        assert json.loads("".join(e["delta"] for e in pieces)) == {"command": ["ls", "-la"]}
        # the call's item opens once its name is written, its arguments going out as they are written
        kinds = [e["type"] for e in events]
        opened = kinds.index("response.output_item.added", kinds.index("response.output_text.done"))
        assert opened < events.index(pieces[0])
        assert {e["item_id"] for e in pieces} == {done[1]["id"]} and kinds.count("response.output_item.done") == 2
        response = events[-1]["response"]
        assert events[-1]["type"] == "response.completed" and response["output"] == done
    else:
        response = json.loads(body)
    message, call = response["output"]
    # streamed, the text before a call goes out before the call is known (its newline too), as in chat
    assert message["content"][0]["text"].strip() == "Listing." and call["type"] == "function_call"
    assert call["name"] == "shell" and json.loads(call["arguments"]) == {"command": ["ls", "-la"]}
    assert call["call_id"].startswith("call_") and call["status"] == "completed"


async def test_the_whole_response_keeps_the_order_the_answer_was_written_in_as_a_stream_does(
        server, http, template, answers):
    """Text, a call, more text, a call: four items in that order, streamed or whole."""
    template(HERMES)
    second = CALL.replace('"ls", "-la"', '"pwd"')
    answers("Listing.\n" + CALL + "\nThen where.\n" + second)
    headers = {"Authorization": f"Bearer {KEY}"}
    outputs = []
    for stream in (False, True):
        body = {**CODEX, "stream": stream, "parallel_tool_calls": True}
        async with http.post(f"{server.url}/v1/responses", json=body, headers=headers) as r:
            assert r.status == 200
            text = await r.text()
        outputs.append(typed_sse_events(text)[-1]["response"]["output"] if stream else json.loads(text)["output"])

    def shown(item: dict) -> tuple:
        if item["type"] == "message":
            return "message", item["content"][0]["text"].strip()
        return item["type"], item["name"], json.loads(item["arguments"])

    whole, streamed = ([shown(item) for item in output] for output in outputs)
    assert whole == streamed == [("message", "Listing."), ("function_call", "shell", {"command": ["ls", "-la"]}),
                                 ("message", "Then where."), ("function_call", "shell", {"command": ["pwd"]})]
    assert len({item["id"] for item in outputs[0]}) == 4  # each item an id of its own


async def test_a_conversation_with_calls_and_outputs_reaches_the_template(client, server, template, answers):
    chat = template(HERMES)
    answers("Done.")
    items = [*CODEX["input"], {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
             {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"command": ["ls"]}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "a.py\nb.py"}]
    r = await client.responses.create(model="coder", instructions=CODEX["instructions"], input=items, tools=[SHELL])
    seen = [{"role": "system", "content": "You are a coding agent."}, {"role": "system", "content": "cwd: /src"},
            {"role": "user", "content": "List files."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": {"command": ["ls"]}}}]},
            {"role": "tool", "tool_call_id": "call_1", "name": "shell", "content": "a.py\nb.py"}]
    tools = [{"type": "function", "function": {k: SHELL[k] for k in ("name", "description", "parameters")}}]
    assert r.output_text == "Done."
    assert r.usage.input_tokens == len(chat.prompt_ids(server.state.engine.tokenizer, seen, tools))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_thinking_models_reasoning_is_a_reasoning_item(server, http, template, answers, stream):
    template(QWEN3_LIKE)
    answers(THOUGHT)
    async with http.post(f"{server.url}/v1/responses", json={"model": "coder", "input": "Add.", "stream": stream},
                         headers={"Authorization": f"Bearer {KEY}"}) as r:
        body = await r.text()
    if stream:
        events = typed_sse_events(body)
        assert "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta") == REASONING
        response = events[-1]["response"]
    else:
        response = json.loads(body)
    reasoning, message = response["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [{"type": "reasoning_text", "text": REASONING}]
    assert message["content"][0]["text"] == ANSWER


async def test_a_json_schema_format_holds_the_answer(client):
    schema = {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}}, "required": ["unit"],
              "additionalProperties": False}
    r = await client.responses.create(model="coder", input="The unit:", temperature=0, max_output_tokens=200,
                                      text={"format": {"type": "json_schema", "name": "u", "schema": schema}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)


@pytest.mark.parametrize("extra, word", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"tools": [{"type": "local_shell"}]}, "local_shell"),
    ({"input": [{"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input_image"),
    ({"input": [{"type": "local_shell_call", "call_id": "c"}]}, "local_shell_call"),
    ({"input": [{"type": "message", "role": "robot", "content": "hi"}]}, "role"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "array", "uniqueItems": True}}}},
     "uniqueItems"),
    ({"tool_choice": {"type": "function", "name": "missing"}, "tools": [SHELL]}, "missing"),
    ({"input": [{"type": "reasoning", "content": "x"}, {"role": "user", "content": "hi"}]}, "reasoning"),
    ({"input": [{"type": "reasoning", "summary": 5}, {"role": "user", "content": "hi"}]}, "reasoning")])
async def test_what_cannot_be_honoured_is_a_400(client, extra, word):
    with pytest.raises(openai.BadRequestError, match=word):
        await client.responses.create(**{"model": "coder", "input": "hi", **extra})


async def test_junk_in_any_field_is_a_4xx_and_leaks_nothing(server, http, template):
    """Codex's body with one field (or one input item's field) replaced by junk, many times: an answer
    or a 4xx with an OpenAI error object, never a 500; afterwards every KV block is free."""
    template(HERMES)
    rng = random.Random(11)
    junk = [None, 0, -1, 2 ** 70, 1.5, "", "x", [], [1], [None], {}, {"type": None}, {"type": "message"},
            [{"type": "message", "role": "user", "content": [{"type": "input_text"}]}], True]
    headers = {"Authorization": f"Bearer {KEY}"}
    statuses = set()
    for _ in range(150):
        body = json.loads(json.dumps({**CODEX, "stream": rng.random() < 0.3, "max_output_tokens": 4}))
        if rng.random() < 0.5:
            body[rng.choice(sorted(body))] = rng.choice(junk)
        else:
            item = rng.choice(body["input"])
            item[rng.choice(sorted(item) + ["role", "call_id", "output", "arguments"])] = rng.choice(junk)
        async with http.post(f"{server.url}/v1/responses", json=body, headers=headers) as r:
            statuses.add(r.status)
            text = await r.text()
            assert r.status == 200 or (400 <= r.status < 500 and "message" in json.loads(text)["error"]), text
    assert 200 in statuses and 400 in statuses
    await wait_idle(http, server.url)
