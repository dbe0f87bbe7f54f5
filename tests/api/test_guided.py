"""vLLM's structured-output fields (api/guided.py) over real HTTP with the `openai` client, as
clients written against vLLM's server send them in extra_body: a choice, a regex, a schema (both
spellings), the same answer as the engine given the same constraint, and a 400 for what cannot be
honoured."""
from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server
from engine import LLM, EngineConfig, SamplingParams
from engine.json_pattern import PatternText

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENGINE = dict(num_kv_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=512)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}, "required": ["a"],
          "additionalProperties": False}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    async with running_server(build_engine(EngineConfig(**ENGINE)), ServerConfig(("codemodel",), port=0)) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server):
    async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60) as c:
        yield c


async def test_a_choice_is_one_of_its_strings_and_the_engines_answer(client):
    choices = ["yes", "no", "maybe"]
    r = await client.completions.create(model="codemodel", prompt="answer = ", max_tokens=20, temperature=0.8,
                                        seed=1, n=4, extra_body={"guided_choice": choices})
    assert all(c.text in choices and c.finish_reason == "stop" for c in r.choices)
    assert len({c.text for c in r.choices}) > 1  # sampled: not one string forced
    offline = LLM(EngineConfig(**ENGINE))  # no drafting: the server drafts, the answer is the same
    params = SamplingParams(n=4, temperature=0.8, seed=1, max_tokens=20, json_object=True,
                            json_schema=PatternText.of("yes|no|maybe"))
    assert [c.text for c in r.choices] == [c.text for c in offline.generate(["answer = "], params)[0].outputs]


@pytest.mark.parametrize("body", [{"guided_regex": r"\d{3}-\d{4}"}, {"structured_outputs": {"regex": r"^\d{3}-\d{4}$"}}])
async def test_a_regex_holds_the_whole_answer(client, body):
    r = await client.completions.create(model="codemodel", prompt="phone = ", max_tokens=20, temperature=0.8, seed=2,
                                        n=3, extra_body=body)
    assert all(re.fullmatch(r"\d{3}-\d{4}", c.text) and c.finish_reason == "stop" for c in r.choices)


@pytest.mark.parametrize("body", [{"guided_json": SCHEMA}, {"structured_outputs": {"json": json.dumps(SCHEMA)}}])
async def test_a_schema_holds_a_chat_answer(client, body):
    r = await client.chat.completions.create(model="codemodel", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=200, temperature=0.8, seed=1, extra_body=body)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


@pytest.mark.parametrize("body, word", [
    ({"guided_grammar": "root ::= 'a'"}, "grammar"),
    ({"structured_outputs": {"structural_tag": {}}}, "structural_tag"),
    ({"guided_choice": ["a"], "guided_regex": "b"}, "one structured output"),
    ({"guided_regex": "(?=a)"}, "lookaround"),
    ({"guided_choice": []}, "choice"),
    ({"guided_json": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
    ({"guided_json": "{not json"}, "structured output json"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "response_format"),
    ({"guided_regex": "\u0000"}, "no answer that a token"),  # characters no token of the vocabulary has
    ({"guided_choice": ["\u2603"]}, "no answer that a token"),
    ({"guided_regex": "(.{0,64}){0,64}x"}, "too complex"),
    ({"structured_outputs": {"json": False}}, "accepts no value"),
])
async def test_what_cannot_be_honoured_is_a_400(client, body, word):
    with pytest.raises(openai.BadRequestError, match=word):
        await client.chat.completions.create(model="codemodel", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=4, extra_body=body)


async def test_json_object_false_asks_for_nothing(client):
    r = await client.chat.completions.create(model="codemodel", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=4, extra_body={"structured_outputs": {"json_object": False}})
    assert r.choices[0].finish_reason in ("stop", "length")
