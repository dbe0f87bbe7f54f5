"""POST /v1/chat/completions and predicted outputs, with the real `openai` client over loopback,
on the embedded model (a trained CodeLlama-style model without a chat template: it gets
CodeLlama-Instruct's format)."""
from __future__ import annotations

import json

import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from engine import EngineConfig
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "chat-key"
ENGINE = dict(num_kv_blocks=512, block_size=16, max_num_seqs=16, max_num_batched_tokens=512)
MESSAGES = [{"role": "system", "content": "You write Python."},
            {"role": "user", "content": "def mean(xs):\n    \"\"\"The mean of a list.\"\"\"\n"}]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    engine = build_engine(EngineConfig(**ENGINE))
    async with running_server(engine, ServerConfig(served_model_names=("codellama",), port=0, api_key=KEY)) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server):
    async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


def prompt_ids(server, messages) -> list[int]:
    return server.state.chat_template.prompt_ids(server.state.engine.tokenizer, messages)


async def test_chat_is_the_template_prompt_completed(client, server):
    ids = prompt_ids(server, MESSAGES)
    assert ids[0] == server.state.engine.tokenizer.bos_id
    r = await client.chat.completions.create(model="codellama", messages=MESSAGES, max_tokens=24, temperature=0)
    ref = await client.completions.create(model="codellama", prompt=ids, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "codellama"
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.choices[0].text and r.choices[0].message.content
    assert r.choices[0].finish_reason == ref.choices[0].finish_reason
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == ref.usage.completion_tokens
    assert r.usage.completion_tokens_details is None  # no prediction, no details


async def test_stream_with_usage_in_the_last_chunk(client):
    whole = await client.chat.completions.create(model="codellama", messages=MESSAGES, max_tokens=20, temperature=0)
    stream = await client.chat.completions.create(model="codellama", messages=MESSAGES, max_tokens=20, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


async def test_n_seed_stop_and_max_completion_tokens(client):
    args = dict(model="codellama", messages=MESSAGES, max_tokens=16, temperature=0.9, seed=5)
    three = await client.chat.completions.create(n=3, **args)
    again = await client.chat.completions.create(n=3, **args)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.message.content for c in three.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in three.choices}) > 1
    full = three.choices[0].message.content
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1) if full[i:i + 2].strip())
    cut = await client.chat.completions.create(n=1, stop=[stop], **args)
    assert cut.choices[0].message.content == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    short = await client.chat.completions.create(model="codellama", messages=MESSAGES, max_completion_tokens=3,
                                                 max_tokens=50, temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


async def test_logprobs_and_top_logprobs(client, server):
    r = await client.chat.completions.create(model="codellama", messages=MESSAGES, max_tokens=12, temperature=0,
                                             logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(t.logprob <= 0 and t.bytes == list(t.token.encode()) for t in content)
    # Greedy: the likeliest of each position's three alternatives is the chosen token.
    assert all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)
    assert all(t.top_logprobs[0].token == t.token for t in content if t.token)
    assert all(a.logprob >= b.logprob for t in content for a, b in zip(t.top_logprobs, t.top_logprobs[1:]))
    ref = await client.completions.create(model="codellama", prompt=prompt_ids(server, MESSAGES), max_tokens=12,
                                          temperature=0, logprobs=0)
    assert [t.logprob for t in content] == pytest.approx(ref.choices[0].logprobs.token_logprobs, abs=1e-4)


async def test_bad_chats_are_clear_400s(client):
    cases = [
        (dict(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), "alternate"),
        (dict(messages=MESSAGES, top_logprobs=2), "top_logprobs"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
         "text content"),
        (dict(messages=[]), "messages"),
    ]
    for args, words in cases:
        with pytest.raises(openai.BadRequestError, match=words):
            await client.chat.completions.create(model="codellama", max_tokens=4, **args)
    text_parts = [{"role": "user", "content": [{"type": "text", "text": "def f():"}, {"type": "text", "text": "x"}]}]
    ok = await client.chat.completions.create(model="codellama", messages=text_parts, max_tokens=2)
    assert ok.usage.completion_tokens >= 1


async def test_no_template_is_a_clear_400(client, server, monkeypatch):
    monkeypatch.setattr(server.state, "chat_template", None)
    monkeypatch.setattr(server.state, "chat_template_error", "it has no chat template")
    with pytest.raises(openai.BadRequestError, match="no chat template") as e:
        await client.chat.completions.create(model="codellama", messages=MESSAGES, max_tokens=2)
    assert e.value.body["code"] == "chat_template_missing"


# ---------------------------------------------------------------------- predicted outputs


def edited(text: str) -> str:
    """The output an editor would predict: the old text with a small change in the middle."""
    middle = len(text) // 2
    return text[:middle] + "# changed\n" + text[middle:]


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.8, seed=11)], ids=["greedy", "seeded"])
async def test_prediction_is_lossless_and_reported(client, sampling):
    messages = [{"role": "user", "content": "class Stack:\n    def __init__(self):\n"}]
    plain = await client.chat.completions.create(model="codellama", messages=messages, max_tokens=48, **sampling)
    text = plain.choices[0].message.content
    for prediction in (edited(text), "completely unrelated text " * 8):
        r = await client.chat.completions.create(model="codellama", messages=messages, max_tokens=48,
                                                 prediction={"type": "content", "content": prediction}, **sampling)
        assert r.choices[0].message.content == text and r.usage.completion_tokens == plain.usage.completion_tokens
        details = r.usage.completion_tokens_details
        assert details.accepted_prediction_tokens >= 0 and details.rejected_prediction_tokens >= 0
        if prediction != edited(text):
            assert details.accepted_prediction_tokens <= 2
    good = await client.chat.completions.create(model="codellama", messages=messages, max_tokens=48,
                                                prediction={"type": "content", "content": edited(text)}, **sampling)
    assert good.usage.completion_tokens_details.accepted_prediction_tokens > 0


async def test_prediction_on_completions_and_in_streams(client):
    prompt = "def is_prime(n):\n    if n < 2:\n        return False\n"
    plain = await client.completions.create(model="codellama", prompt=prompt, max_tokens=40, temperature=0)
    text = plain.choices[0].text
    prediction = {"type": "content", "content": [{"type": "text", "text": edited(text)}]}
    r = await client.completions.create(model="codellama", prompt=prompt, max_tokens=40, temperature=0,
                                        extra_body={"prediction": prediction})
    assert r.choices[0].text == text and r.usage.completion_tokens_details.accepted_prediction_tokens > 0
    stream = await client.chat.completions.create(
        model="codellama", messages=[{"role": "user", "content": prompt}], max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True}, prediction={"type": "content", "content": edited(text)})
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens_details is not None
    with pytest.raises(openai.BadRequestError, match="prediction"):
        await client.completions.create(model="codellama", prompt=prompt, max_tokens=4,
                                        extra_body={"prediction": {"type": "content", "content": [{"type": "x"}]}})


async def test_json_mode_answers_are_json_objects_streamed_or_not(client):
    from engine.json_object import START, feed

    ask = [{"role": "user", "content": "Give the settings as JSON."}]
    common = dict(model="codellama", messages=ask, max_tokens=40, temperature=0.8, seed=5, n=3,
                  response_format={"type": "json_object"})
    whole = await client.chat.completions.create(**common)
    texts = [c.message.content for c in sorted(whole.choices, key=lambda c: c.index)]
    for choice, text in zip(sorted(whole.choices, key=lambda c: c.index), texts):
        assert feed(START, text) is not None, text  # a JSON object, or (cut by max_tokens) the start of one
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
    stream = await client.chat.completions.create(**common, stream=True)
    streamed = ["", "", ""]
    async for chunk in stream:
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == texts
    plain = await client.chat.completions.create(**{**common, "response_format": {"type": "text"}})
    assert any(feed(START, c.message.content) is None for c in plain.choices)  # the mode did something


async def test_json_schema_answers_follow_the_schema(client):
    """OpenAI's structured outputs: the answer is JSON the schema accepts (engine/json_schema.py);
    a schema with a keyword it cannot enforce is a 400 naming it."""
    import jsonschema

    from engine.json_schema import compile_schema

    schema = {"type": "object", "properties": {"units": {"enum": ["C", "F"]}, "days": {"type": "integer"}},
              "required": ["units"], "additionalProperties": False}
    machine = compile_schema(schema)
    fmt = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema, "strict": True}}
    r = await client.chat.completions.create(model="codellama", messages=[{"role": "user", "content": "Forecast?"}],
                                             max_tokens=120, temperature=0.8, seed=3, n=4, response_format=fmt)
    finished = 0
    for c in r.choices:
        assert machine.feed(machine.start, c.message.content) is not None, c.message.content
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.message.content), schema)
            finished += 1
    assert finished > 0
    bad = {**fmt, "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError, match="uniqueItems"):
        await client.chat.completions.create(model="codellama", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=4, response_format=bad)


async def test_json_mode_where_the_tokenizer_cannot_hold_it_is_a_clear_400(client, server, monkeypatch):
    monkeypatch.setattr(server.state.engine.engine.sampler, "json_tokens", None)  # a tokenizer without piece texts
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="codellama", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=4, response_format={"type": "json_object"})
    assert "json_object" in str(e.value)
    r = await client.chat.completions.create(model="codellama", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")  # the server goes on
