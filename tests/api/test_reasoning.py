"""A thinking model's reasoning apart from its answer (api/reasoning.py): the cut itself, streamed
in any pieces, and over real HTTP on every chat API (OpenAI's reasoning_content with the `openai`
client, Ollama's thinking, Anthropic's thinking blocks with the `anthropic` client), with the
template options that turn thinking on and off. The embedded model never thinks, so the answers are
written and replayed token by token through the engine; the templates are written like Qwen3's
(the model opens the block; an empty block closes it in the prompt when enable_thinking is false),
DeepSeek-R1's (the prompt opens the block) and Seed-OSS's (Qwen3's, in <seed:think> tags)."""
from __future__ import annotations

import json
import random

import anthropic
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from api.config import ServerConfig
from api.reasoning import SEED_THINK, THINK, ReasoningDeltas, Tags, Thinking, tags_of, thinks
from api.server import build_engine
from api.testing import running_server
from engine import EngineConfig
from tests.api.client import post

over_http = pytest.mark.asyncio(loop_scope="module")

QWEN3_LIKE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content.split('</think>')[-1].lstrip('\\n') }}"
    "<|im_end|>\n{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}{%- endif %}")
R1_LIKE = ("{%- for m in messages %}{{ m.role }}: {{ m.content.split('</think>')[-1] }}\n{%- endfor %}"
           "assistant: <think>\n")
PLAIN = "{%- for m in messages %}{{ m.role }}: {{ m.content }}\n{%- endfor %}assistant: "
HERMES_THINKING = QWEN3_LIKE.replace("{%- for m in messages %}", "{%- if tools %}<tools>{{ tools | tojson }}</tools>"
                                     "Answer a call as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>"
                                     "{% endif %}{%- for m in messages %}", 1)
ASK = [{"role": "user", "content": "Add two numbers."}]
THOUGHT = "<think>\nThe user wants a sum.\nKeep it short.\n</think>\n\ndef add(a, b):\n    return a + b"


def in_tags(text: str, tags: Tags) -> str:
    """`text` with its <think> and </think> written in `tags`."""
    return text.replace(THINK.close, "\0").replace(THINK.open, tags.open).replace("\0", tags.close)


SEED_LIKE = in_tags(QWEN3_LIKE, SEED_THINK)
REASONING, ANSWER = "The user wants a sum.\nKeep it short.", "def add(a, b):\n    return a + b"


# ---------------------------------------------------------------------- the cut

@pytest.mark.parametrize("inside, text, expected", [
    (False, THOUGHT, (REASONING, ANSWER)),
    (False, "  <think>x</think>y", ("x", "y")),
    (False, "def f(): pass", (None, "def f(): pass")),
    (False, "<think>\ncut off before the end", ("cut off before the end", "")),
    (False, "<thin", (None, "<thin")),
    (False, "x <think>y</think>", (None, "x <think>y</think>")),  # not at the start: the answer's text
    (True, "The user wants a sum.\n</think>\n\nx = 1", ("The user wants a sum.", "x = 1")),
    (True, "never closed", ("never closed", "")),
    (True, "", ("", "")),
])
@pytest.mark.parametrize("tags", [THINK, SEED_THINK])
def test_a_finished_text_is_cut_as_the_templates_cut_an_earlier_turn(inside, text, expected, tags):
    assert Thinking(inside, tags).split(in_tags(text, tags)) == (
        expected[0], in_tags(expected[1], tags) if expected[0] is None else expected[1])


@pytest.mark.parametrize("tags", [THINK, SEED_THINK])
def test_where_the_prompt_leaves_the_answer(tags):
    assert Thinking.of("<|im_start|>assistant\n", tags).inside is False
    assert Thinking.of(in_tags("<|im_start|>assistant\n<think>\n\n</think>\n\n", tags), tags).inside is False
    assert Thinking.of(in_tags("earlier <think>a</think> turn\nassistant: <think>\n", tags), tags).inside is True
    assert thinks(QWEN3_LIKE) and thinks(R1_LIKE) and thinks(SEED_LIKE) and not thinks(PLAIN)
    assert (tags_of(QWEN3_LIKE), tags_of(SEED_LIKE), tags_of(PLAIN)) == (THINK, SEED_THINK, None)
    # one model's tags are text to another: Qwen3's block is no Seed-OSS block, nor the reverse
    other = SEED_THINK if tags == THINK else THINK
    assert Thinking(False, other).split(in_tags("<think>x</think>y", tags)) == (None, in_tags("<think>x</think>y", tags))


@pytest.mark.parametrize("tags", [THINK, SEED_THINK])
def test_streamed_in_any_pieces_the_deltas_add_up_to_the_cut(tags):
    """Whatever the pieces, what is sent never has to be taken back: a tag or newlines that may
    still be cut are held until the text tells."""
    rng = random.Random(7)
    pieces = [tags.open, tags.close, "\n", "a", " ", "<", tags.close[:4], tags.close[4:], tags.open[:4], "b\n"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for inside in (False, True):
            deltas, reasoning, answer, at = ReasoningDeltas(Thinking(inside, tags)), "", "", 0
            for cut in sorted(rng.sample(range(len(text) + 1), min(3, len(text) + 1))) + [len(text)]:
                r, a = deltas.add(text[at:cut], finished=False)
                reasoning, answer, at = reasoning + r, answer + a, cut
            r, a = deltas.add("", finished=True)
            whole = Thinking(inside, tags).split(text)
            assert (reasoning + r, answer + a) == (whole[0] or "", whole[1]), (text, inside)


def test_a_closing_tag_split_across_pieces_is_never_shown():
    deltas = ReasoningDeltas(Thinking(False))
    shown = [deltas.add(piece, finished=False) for piece in ["<think>\nab", "c\n</", "thi", "nk>\n\nd"]]
    assert shown == [("ab", ""), ("c", ""), ("", ""), ("", "d")]


# ---------------------------------------------------------------------- over HTTP

@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    engine = build_engine(EngineConfig(num_kv_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=512))
    async with running_server(engine, ServerConfig(served_model_names=("coder",), port=0)) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server):
    async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60) as c:
        yield c


def prompt_len(server, chat, messages, **options) -> int:
    return len(chat.prompt(server.state.engine.tokenizer, messages, options=options or None)[1])


@over_http
@pytest.mark.parametrize("tags", [THINK, SEED_THINK])
async def test_openai_reasoning_content_whole_and_streamed(client, server, template, answers, tags):
    chat = template(in_tags(QWEN3_LIKE, tags))
    answers(in_tags(THOUGHT, tags))
    r = await client.chat.completions.create(model="coder", messages=ASK, temperature=0)
    message = r.choices[0].message
    assert (message.reasoning_content, message.reasoning, message.content) == (REASONING, REASONING, ANSWER)
    assert r.usage.prompt_tokens == prompt_len(server, chat, ASK)
    stream = await client.chat.completions.create(model="coder", messages=ASK, temperature=0, stream=True, n=2)
    chunks = [c async for c in stream]
    for index in (0, 1):
        deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == REASONING
        assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == REASONING
        contents = [d.content or "" for d in deltas]
        assert "".join(contents) == ANSWER and not any("think>" in c for c in contents)


@over_http
async def test_template_options_reach_the_template(client, server, template, answers):
    """chat_template_kwargs (vLLM's and SGLang's): enable_thinking false closes the block in the
    prompt, and the model's answer is all content."""
    chat = template(QWEN3_LIKE)
    answers(ANSWER)
    r = await client.chat.completions.create(model="coder", messages=ASK, temperature=0,
                                             extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == (None, ANSWER)
    assert r.usage.prompt_tokens == prompt_len(server, chat, ASK, enable_thinking=False) > prompt_len(server, chat, ASK)


@over_http
async def test_tokenize_renders_with_the_same_template_options(server, http, template):
    """/tokenize counts a chat as /v1/chat/completions renders it, template options included."""
    chat = template(QWEN3_LIKE)
    for options in (None, {"enable_thinking": False}):
        body = {"messages": ASK, **({"chat_template_kwargs": options} if options else {})}
        got = await post(http, f"{server.url}/tokenize", body)
        assert got["count"] == prompt_len(server, chat, ASK, **(options or {}))
    assert "_x" in (await post(http, f"{server.url}/tokenize", {"messages": ASK, "chat_template_kwargs": {"_x": 1}},
                               expect=400))["error"]["message"]


@over_http
async def test_separate_reasoning_false_leaves_the_text_as_written(client, template, answers):
    template(QWEN3_LIKE)
    answers(THOUGHT)
    r = await client.chat.completions.create(model="coder", messages=ASK, temperature=0,
                                             extra_body={"separate_reasoning": False})
    assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == (None, THOUGHT)


@over_http
async def test_a_prompt_that_opens_the_block_and_an_answer_cut_off_inside_it(client, template, answers):
    template(R1_LIKE)
    answers("Two numbers.\n</think>\n\nx = 1")
    r = await client.chat.completions.create(model="coder", messages=ASK, temperature=0)
    assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == ("Two numbers.", "x = 1")
    cut = await client.chat.completions.create(model="coder", messages=ASK, temperature=0, max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content == ""
    assert "Two numbers.".startswith(cut.choices[0].message.reasoning_content.strip())


@over_http
@pytest.mark.parametrize("stream", [False, True])
async def test_think_tags_that_are_special_tokens_are_still_cut(client, template, answers, stream):
    """Where a tokenizer marks the tags special (decoding would drop them), the text keeps them.
    The embedded tokenizer has no think tokens: two of its special tokens stand in for them."""
    tags = {"<think>": 3, "</think>": 4}
    template(QWEN3_LIKE, tags)
    answers(THOUGHT, tags)
    r = await client.chat.completions.create(model="coder", messages=ASK, temperature=0, stream=stream)
    if stream:
        deltas = [c.choices[0].delta async for c in r if c.choices]
        got = ("".join(getattr(d, "reasoning_content", None) or "" for d in deltas),
               "".join(d.content or "" for d in deltas))
    else:
        got = (r.choices[0].message.reasoning_content, r.choices[0].message.content)
    assert got == (REASONING, ANSWER)


@over_http
async def test_a_structured_answer_comes_after_the_reasoning(client, template, answers):
    """response_format on a thinking model: the reasoning first, free, the JSON after </think> (as
    vLLM's reasoning with structured outputs; engine/json_object.py ThinkFirst, whose hold on the
    JSON tests/engine/test_json_object.py checks). A written answer comes back cut there; the
    embedded model, which never closes the block itself, reasons until max_tokens."""
    tags = {"<think>": 3, "</think>": 4}
    template(R1_LIKE, tags)
    asked = dict(model="coder", messages=ASK, temperature=0.8, seed=3, response_format={"type": "json_object"})
    answers('Two numbers.\n</think>\n\n{"sum": 3}', tags)
    message = (await client.chat.completions.create(**asked, max_tokens=300)).choices[0].message
    assert (message.reasoning_content, json.loads(message.content)) == ("Two numbers.", {"sum": 3})


@over_http
async def test_ollamas_format_comes_after_the_reasoning_too(server, http, template, answers):
    tags = {"<think>": 3, "</think>": 4}
    template(R1_LIKE, tags)
    answers('Two numbers.\n</think>\n\n{"sum": 3}', tags)
    body = {"model": "coder", "prompt": "Add.", "stream": False, "format": "json"}
    got = await post(http, f"{server.url}/api/generate", body)
    assert (got["thinking"], json.loads(got["response"])) == ("Two numbers.", {"sum": 3})
    chat = await post(http, f"{server.url}/api/chat", {"model": "coder", "messages": ASK, "stream": False,
                                                       "format": "json"})
    assert (chat["message"]["thinking"], json.loads(chat["message"]["content"])) == ("Two numbers.", {"sum": 3})


@over_http
async def test_a_structured_answer_waits_for_the_reasoning_to_end(client, template):
    template(R1_LIKE, {"<think>": 3, "</think>": 4})
    asked = dict(model="coder", messages=ASK, temperature=0.8, seed=3, response_format={"type": "json_object"})
    left = await client.chat.completions.create(**asked, max_tokens=12)
    assert left.choices[0].finish_reason == "length" and left.choices[0].message.content == ""
    assert left.choices[0].message.reasoning_content  # free text: no JSON before the block closes


@over_http
async def test_a_model_that_does_not_think_keeps_its_text(client, template, answers):
    template(PLAIN)
    answers(THOUGHT)
    r = await client.chat.completions.create(model="coder", messages=ASK, temperature=0)
    assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == (None, THOUGHT)


@over_http
async def test_calls_after_the_reasoning(client, template, answers):
    template(HERMES_THINKING)
    answers('<think>\nThe weather tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call>')
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=tools, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.reasoning_content == "The weather tool."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    stream = await client.chat.completions.create(model="coder", messages=ASK, tools=tools, temperature=0, stream=True)
    deltas = [c.choices[0].delta async for c in stream if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "The weather tool."
    assert [tc.function.name for d in deltas for tc in (d.tool_calls or []) if tc.id] == ["get_weather"]


@over_http
@pytest.mark.parametrize("options, name", [({"messages": []}, "messages"), ({"_secret": 1}, "_secret"),
                                           ({"bos_token": "x"}, "bos_token")])
async def test_template_options_that_would_replace_what_the_template_is_given_are_a_400(server, http, options, name):
    body = {"model": "coder", "messages": ASK, "chat_template_kwargs": options}
    error = (await post(http, f"{server.url}/v1/chat/completions", body, expect=400))["error"]
    assert name in error["message"]


@over_http
@pytest.mark.parametrize("tags", [THINK, SEED_THINK])
async def test_ollama_thinking(server, http, template, answers, tags):
    chat = template(in_tags(QWEN3_LIKE, tags))
    answers(in_tags(THOUGHT, tags))
    url = f"{server.url}/api/chat"
    body = {"model": "coder", "messages": ASK, "stream": False, "think": True}
    got = await post(http, url, body)
    assert (got["message"]["thinking"], got["message"]["content"]) == (REASONING, ANSWER)
    assert got["prompt_eval_count"] == prompt_len(server, chat, ASK, enable_thinking=True)
    async with http.post(url, json={**body, "stream": True}) as r:
        lines = [json.loads(x) for x in (await r.text()).splitlines()]
    assert "".join(x["message"].get("thinking", "") for x in lines) == REASONING
    assert "".join(x["message"]["content"] for x in lines) == ANSWER
    generated = await post(http, f"{server.url}/api/generate", {"model": "coder", "prompt": "Add.", "stream": False})
    assert (generated["thinking"], generated["response"]) == (REASONING, ANSWER)
    show = await post(http, f"{server.url}/api/show", {"model": "coder"})
    assert "thinking" in show["capabilities"]


@over_http
async def test_ollama_think_false_turns_thinking_off_in_the_template(server, http, template, answers):
    chat = template(QWEN3_LIKE)
    answers(ANSWER)
    got = await post(http, f"{server.url}/api/chat", {"model": "coder", "messages": ASK, "stream": False,
                                                      "think": False})
    assert "thinking" not in got["message"] and got["message"]["content"] == ANSWER
    assert got["prompt_eval_count"] == prompt_len(server, chat, ASK, enable_thinking=False)


@over_http
async def test_ollama_think_a_model_cannot_do_is_a_400(server, http, template):
    template(PLAIN)
    body = {"model": "coder", "messages": ASK, "stream": False}
    assert "does not support thinking" in (await post(http, f"{server.url}/api/chat", {**body, "think": True},
                                                      expect=400))["error"]
    template(QWEN3_LIKE)
    assert "levels" in (await post(http, f"{server.url}/api/chat", {**body, "think": "high"}, expect=400))["error"]


@over_http
@pytest.mark.parametrize("tags", [THINK, SEED_THINK])
async def test_anthropic_thinking_blocks(server, template, answers, tags):
    chat = template(in_tags(QWEN3_LIKE, tags))
    answers(in_tags(THOUGHT, tags))
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="none", max_retries=0) as claude:
        asked = dict(model="coder", max_tokens=256, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024})
        message = await claude.messages.create(**asked)
        assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
            ("thinking", REASONING), ("text", ANSWER)]
        assert read(message.usage) == prompt_len(server, chat, ASK, enable_thinking=True)
        async with claude.messages.stream(**asked) as stream:
            streamed = await stream.get_final_message()
        assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in streamed.content] == [
            ("thinking", REASONING), ("text", ANSWER)]
        answers(ANSWER)  # thinking off (Anthropic's default): the template closes the block in the prompt
        plain = await claude.messages.create(model="coder", max_tokens=256, messages=ASK)
        assert [b.type for b in plain.content] == ["text"]
        assert read(plain.usage) == prompt_len(server, chat, ASK, enable_thinking=False)


def read(usage) -> int:
    """The prompt's tokens, computed or taken from the prefix cache."""
    return usage.input_tokens + usage.cache_read_input_tokens


@over_http
async def test_earlier_reasoning_sent_back_reaches_the_template(server, http, template, answers):
    """A tool-calling turn's reasoning, as each API sends it back (OpenAI's reasoning_content,
    Ollama's thinking, Anthropic's thinking block, a Responses API reasoning item), is the
    template's reasoning_content."""
    chat = template(QWEN3_LIKE.replace("<|im_start|>assistant\n{{", "<|im_start|>assistant\n"
                                       "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}{{"))
    answers(ANSWER)
    seen = [*ASK, {"role": "assistant", "content": "Sum.", "reasoning_content": "Add them."},
            {"role": "user", "content": "Again."}]
    expected = prompt_len(server, chat, seen)
    assert expected > prompt_len(server, chat, [*ASK, {**seen[1], "reasoning_content": None}, seen[2]])
    for name in ("reasoning_content", "reasoning"):  # DeepSeek's name, and vLLM's later one
        sent = [*ASK, {"role": "assistant", "content": "Sum.", name: "Add them."}, seen[2]]
        openai_body = {"model": "coder", "messages": sent}
        assert (await post(http, f"{server.url}/v1/chat/completions", openai_body))["usage"]["prompt_tokens"] == expected
    ollama_body = {"model": "coder", "stream": False, "messages": [
        *ASK, {"role": "assistant", "content": "Sum.", "thinking": "Add them."}, seen[2]]}
    assert (await post(http, f"{server.url}/api/chat", ollama_body))["prompt_eval_count"] == expected
    responses_body = {"model": "coder", "input": [
        *ASK, {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Add them."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sum."}]}, seen[2]]}
    assert (await post(http, f"{server.url}/v1/responses", responses_body))["usage"]["input_tokens"] == expected
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="none", max_retries=0) as claude:
        counted = await claude.messages.count_tokens(model="coder", messages=[
            *ASK, {"role": "assistant", "content": [{"type": "thinking", "thinking": "Add them.", "signature": ""},
                                                    {"type": "text", "text": "Sum."}]}, seen[2]])
    assert counted.input_tokens == prompt_len(server, chat, seen, enable_thinking=False)  # Anthropic's default: off
