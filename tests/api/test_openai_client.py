"""The real `openai` client against a live server on loopback."""
from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI

from engine import LLM, EngineConfig, SamplingParams
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server

KEY = "test-key"
ENGINE = dict(num_kv_blocks=256, block_size=8, max_num_seqs=16, max_num_batched_tokens=256)
PROMPTS = ["def fib(n):\n    ", "import os\nimport sys\n", "class Stack:\n    def push(self, x):\n"]


@pytest.fixture(scope="module")
def offline(tiny_model_dir) -> LLM:
    return LLM(tiny_model_dir, **ENGINE)


def greedy_text(llm: LLM, prompt, max_tokens: int) -> str:
    return llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens))[0].outputs[0].text


@pytest.fixture
async def server(tiny_model_dir):
    engine = build_engine(EngineConfig(model=tiny_model_dir, **ENGINE))
    config = ServerConfig(served_model_names=("tiny", "copilot-codex"), port=0, api_key=KEY)
    async with running_server(engine, config) as srv:
        yield srv


@pytest.fixture
def client(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


async def test_completion_matches_offline_greedy(client, offline):
    r = await client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text == greedy_text(offline, PROMPTS[0], 12)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(offline.tokenizer.encode(PROMPTS[0]))
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the server is fresh for each test: nothing cached the first time; the same prompt again reads
    # all of it from the prefix cache but the last token
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    again = await client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1


async def test_streaming_equals_non_streaming(client, offline):
    stream = await client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=16, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        assert len(chunk.choices) == 1 and chunk.choices[0].index == 0
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    assert text == greedy_text(offline, PROMPTS[1], 16)
    assert finish in ("stop", "length")
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_n_samples_and_prompt_major_indexing(client, offline):
    r = await client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=8, temperature=0, n=2)
    assert sorted(c.index for c in r.choices) == list(range(6))
    by_index = {c.index: c.text for c in r.choices}
    for i, prompt in enumerate(PROMPTS):
        expected = greedy_text(offline, prompt, 8)
        assert by_index[2 * i] == by_index[2 * i + 1] == expected

    sampled = await client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=8, temperature=1.0,
                                              n=4, seed=7)
    again = await client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=8, temperature=1.0,
                                            n=4, seed=7)
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]  # seeded: reproducible
    assert len({c.text for c in sampled.choices}) > 1


async def test_stop_strings(client, offline):
    full = greedy_text(offline, PROMPTS[2], 16)
    stop = next(full[i:i + 2] for i in range(2, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    r = await client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    stream = await client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=16, temperature=0,
                                             stop=stop, stream=True)
    streamed = "".join([c.choices[0].text async for c in stream if c.choices])
    assert streamed == full[:full.index(stop)]


async def test_models_and_errors_through_the_client(client, server):
    models = await client.models.list()
    assert [m.id for m in models.data] == ["tiny", "copilot-codex"]
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="best_of"):
        await client.completions.create(model="tiny", prompt="x", max_tokens=2, n=1, best_of=2)
    wrong = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.completions.create(model="tiny", prompt="x", max_tokens=2)


async def test_logit_bias_acts_as_the_engines(client, offline):
    """OpenAI's logit_bias, on completions and chat: the engine's answer for the same bias (drafting
    on in the server, off offline); +100 forces a token, -100 bans the greedy one; bad entries are 400s."""
    plain = offline.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=8))[0].outputs[0].token_ids
    banned = {str(plain[0]): -100}
    r = await client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=8, temperature=0.7, seed=3,
                                        logit_bias=banned)
    expected = offline.generate([PROMPTS[0]], SamplingParams(temperature=0.7, max_tokens=8, seed=3,
                                                             logit_bias=((plain[0], -100.0),)))[0].outputs[0]
    assert r.choices[0].text == expected.text and expected.token_ids[0] != plain[0]
    word = offline.tokenizer.encode(" return", add_bos=False)[-1]
    forced = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=4, temperature=0, logit_bias={str(word): 100})
    assert forced.choices[0].message.content.split() == ["return"] * 4
    for bad in ({"x": 1}, {"5": 101}, {str(10 ** 6): -1}):
        with pytest.raises(openai.BadRequestError, match="logit_bias"):
            await client.completions.create(model="tiny", prompt="x", max_tokens=2, logit_bias=bad)


async def test_vllms_ignore_eos_and_stop_token_ids(client, offline):
    """What vLLM's benchmark clients send: ignore_eos gives max_tokens tokens; stop_token_ids end
    the answer at the first of them (its text left out, as the end of text is); out of range: 400."""
    eos = {str(offline.tokenizer.eos_ids[0]): 100}  # the end of text made the greedy choice at every step
    ended = await client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=40, temperature=0,
                                            logit_bias=eos)
    assert ended.usage.completion_tokens == 1 and ended.choices[0].finish_reason == "stop"
    r = await client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=40, temperature=0,
                                        logit_bias=eos, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 40 and r.choices[0].finish_reason == "length"
    ids = offline.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=12))[0].outputs[0].token_ids
    stopped = await client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=12, temperature=0,
                                              extra_body={"stop_token_ids": [ids[3]]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == ids.index(ids[3]) + 1
    with pytest.raises(openai.BadRequestError, match="stop_token_ids"):
        await client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"stop_token_ids": [10 ** 7]})
