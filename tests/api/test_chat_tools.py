"""Tool calls in POST /v1/chat/completions, with the real `openai` client over loopback: the tools
reach the model's chat template, and the calls the model writes come back as OpenAI's
`tool_calls` (whole and streamed). The embedded model never writes a call, so the tests that need
one replay a written answer token by token through the engine (the recorded-token path the trace
replay uses); everything from the template to the HTTP answer is the server's own."""
from __future__ import annotations

import json
import re
import uuid
from types import SimpleNamespace

import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server
from engine import EngineConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "tools-key"
# Qwen2.5's way (Hermes): the tools in a system turn, calls as <tool_call> blocks, results as user turns.
HERMES = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    "Answer a call as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant"
    "{%- for c in m.tool_calls %}\n<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Qwen3-Coder's way: the same turns, each call a <function=NAME> with a <parameter=KEY> per argument.
QWEN3_CODER = HERMES.replace("Answer a call as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>",
                             "Answer a call as <tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n"
                             "</function>\n</tool_call>")
# Llama 3.1's way: JSON calls, <|python_tag|> for its built-in tools.
LLAMA3 = ("{%- if tools %}Functions: {{ tools | tojson }}\nAnswer a call as {\"name\": ..., \"parameters\": ...}"
          " ({{ '<|python_tag|>' }} for code).\n{% endif %}"
          "{%- for m in messages %}{{ m.role }}: {{ m.content }}\n{%- endfor %}assistant: ")
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris and the time?"}]
TWO_CALLS = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>')


def assembled(deltas: list) -> list[SimpleNamespace]:
    """A stream's calls put together from its choice's deltas, as clients do: by index, the id and
    name from a call's first entry, its arguments the entries' pieces in order."""
    calls: dict[int, SimpleNamespace] = {}
    for d in deltas:
        for tc in d.delta.tool_calls or []:
            if tc.id:
                assert tc.index not in calls and tc.function.name
                calls[tc.index] = SimpleNamespace(id=tc.id, function=SimpleNamespace(name=tc.function.name,
                                                                                       arguments=""))
            calls[tc.index].function.arguments += tc.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    engine = build_engine(EngineConfig(num_kv_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=512))
    async with running_server(engine, ServerConfig(served_model_names=("coder",), port=0, api_key=KEY)) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server):
    async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


async def test_calls_come_back_as_tool_calls(client, server, template, answers):
    chat = template(HERMES)
    answers(TWO_CALLS)
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER, CLOCK], temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "now", {})]
    # the tools were in the prompt, as the template writes them
    tools_ids = chat.prompt_ids(server.state.engine.tokenizer, ASK, [WEATHER, CLOCK])
    assert r.usage.prompt_tokens == len(tools_ids) > len(chat.prompt_ids(server.state.engine.tokenizer, ASK))
    one = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER, CLOCK],
                                               parallel_tool_calls=False, temperature=0)
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]


async def test_streamed_calls_go_out_as_they_are_written(client, template, answers):
    template(HERMES)
    answers(TWO_CALLS)
    stream = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER, CLOCK], stream=True,
                                                  n=2, temperature=0)
    chunks = [c async for c in stream]
    for index in (0, 1):
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        content = "".join(d.delta.content or "" for d in deltas)
        assert "<tool" not in content and content.strip() == "Let me check."
        entries = [(i, tc) for i, d in enumerate(deltas) for tc in (d.delta.tool_calls or [])]
        openings = [(tc.index, tc.id, tc.function.name) for _, tc in entries if tc.id]
        assert [(i, name) for i, _, name in openings] == [(0, "get_weather"), (1, "now")]
        arguments = ["".join(tc.function.arguments or "" for _, tc in entries if tc.index == i) for i in (0, 1)]
        assert [json.loads(a) for a in arguments] == [{"city": "Paris"}, {}]
        assert deltas[-1].finish_reason == "tool_calls"


async def test_a_long_argument_goes_out_in_pieces_before_the_answer_ends(client, template, answers):
    """Text no request has seen (the proposer cannot copy it whole): its tokens come a few at a time,
    and so do the call's arguments."""
    template(HERMES)
    text = " ".join(uuid.uuid4().hex for _ in range(6))
    answers('<tool_call>\n{"name": "get_weather", "arguments": {"city": "' + text + '"}}\n</tool_call>')
    stream = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER], stream=True,
                                                  temperature=0)
    deltas = [c.choices[0] for c in [c async for c in stream] if c.choices]
    pieces = [i for i, d in enumerate(deltas) for tc in (d.delta.tool_calls or []) if tc.function.arguments]
    assert len(pieces) > 3 and pieces[0] < len(deltas) - 1
    assert json.loads(assembled(deltas)[0].function.arguments) == {"city": text}


async def test_the_openai_clients_stream_helper_assembles_the_calls(client, template, answers):
    """The client's own accumulator (client.chat.completions.stream) gets the calls whole."""
    template(HERMES)
    answers(TWO_CALLS)
    async with client.chat.completions.stream(model="coder", messages=ASK, tools=[WEATHER, CLOCK],
                                              temperature=0) as stream:
        argument_events = [e async for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and message.content.strip() == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("now", {})]
    assert len({c.id for c in message.tool_calls}) == 2
    for i, call in enumerate(message.tool_calls):  # the pieces the helper saw add up to each call's arguments
        assert "".join(e.arguments_delta for e in argument_events if e.index == i) == call.function.arguments


async def test_a_conversation_with_calls_and_results_reaches_the_template(client, server, template, answers):
    """OpenAI sends earlier calls' arguments as JSON text: the template gets them as objects."""
    chat = template(HERMES)
    answers("It is 18 degrees in Paris.")
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    r = await client.chat.completions.create(model="coder", messages=messages, tools=[WEATHER], temperature=0)
    assert r.choices[0].message.content == "It is 18 degrees in Paris." and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    sent = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": {"city": "Paris"}}}
                                 for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]
    text = chat.render(sent, tools=[WEATHER])
    assert '"arguments": {"city": "Paris"}' in text and "<tool_response>\n18 C\n</tool_response>" in text
    assert r.usage.prompt_tokens == len(chat.prompt_ids(server.state.engine.tokenizer, sent, [WEATHER]))


async def test_qwen3_coder_calls_typed_by_the_tool_schemas(client, template, answers):
    template(QWEN3_CODER)
    run = {"type": "function", "function": {"name": "run", "parameters": {"type": "object", "properties": {
        "command": {"type": "string"}, "timeout": {"type": "integer"}, "env": {"type": "object"}}}}}
    answers("<tool_call>\n<function=run>\n<parameter=command>\n2024\n</parameter>\n<parameter=timeout>\n30\n"
            "</parameter>\n<parameter=env>\n{\"A\": \"1\"}\n</parameter>\n</function>\n</tool_call>")
    for stream in (False, True):
        r = await client.chat.completions.create(model="coder", messages=ASK, tools=[run, CLOCK], temperature=0,
                                                 stream=stream)
        if stream:
            deltas = [c.choices[0] for c in [c async for c in r] if c.choices]
            calls = assembled(deltas)
            assert "".join(d.delta.content or "" for d in deltas) == "" and deltas[-1].finish_reason == "tool_calls"
        else:
            calls = r.choices[0].message.tool_calls
            assert r.choices[0].message.content is None and r.choices[0].finish_reason == "tool_calls"
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("run", {"command": "2024", "timeout": 30, "env": {"A": "1"}})]  # a string of digits stays one


async def test_llama3_json_calls(client, template, answers):
    template(LLAMA3)
    answers('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER], temperature=0)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].message.content is None and r.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})


async def test_without_tools_or_with_tool_choice_none_the_text_is_the_answer(client, template, answers):
    template(HERMES)
    answers(TWO_CALLS)
    for extra in ({}, {"tools": [WEATHER], "tool_choice": "none"}):
        r = await client.chat.completions.create(model="coder", messages=ASK, temperature=0, **extra)
        assert r.choices[0].message.content == TWO_CALLS and not r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "stop"


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_named_tool_choice_opens_the_answer_with_that_call(client, server, template, answers, stream):
    chat = template(HERMES)
    answers(' {"city": "Paris"}}\n</tool_call>')  # what the model writes after the opening
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=NAMED,
                                             temperature=0, stream=stream, stream_options={"include_usage": True}
                                             if stream else None)
    if stream:
        chunks = [c async for c in r]
        deltas = [c.choices[0] for c in chunks if c.choices]
        assert "".join(d.delta.content or "" for d in deltas) == "" and deltas[-1].finish_reason == "tool_calls"
        calls, used = assembled(deltas), chunks[-1].usage
    else:
        assert r.choices[0].message.content is None and r.choices[0].finish_reason == "tool_calls"
        calls, used = r.choices[0].message.tool_calls, r.usage
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    opening = '<tool_call>\n{"name": "get_weather", "arguments":'
    tokenizer = server.state.engine.tokenizer
    assert used.prompt_tokens == len(chat.prompt_ids(tokenizer, ASK, [WEATHER, CLOCK], opening))
    assert used.prompt_tokens > len(chat.prompt_ids(tokenizer, ASK, [WEATHER, CLOCK]))


async def test_required_opens_a_call_in_each_format(client, template, answers):
    for source, written, expected in [
            (HERMES, ' "now", "arguments": {}}\n</tool_call>', ("now", {})),
            (QWEN3_CODER, "run>\n<parameter=command>\nls\n</parameter>\n</function>\n</tool_call>",
             ("run", {"command": "ls"})),
            (LLAMA3, ' "get_weather", "parameters": {"city": "Paris"}}', ("get_weather", {"city": "Paris"}))]:
        template(source)
        answers(written)
        run = {"type": "function", "function": {"name": "run", "parameters": {
            "type": "object", "properties": {"command": {"type": "string"}}}}}
        r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER, CLOCK, run],
                                                 tool_choice="required", temperature=0)
        call = r.choices[0].message.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == expected


FORECAST = {"type": "function", "function": {"name": "forecast", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "units": {"enum": ["C", "F"]}},
    "required": ["city", "units"]}}}


PICK = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"units": {"enum": ["C", "F"]}, "days": {"type": "integer", "minimum": 1,
                                                                            "maximum": 7},
                                     "metric": {"type": "boolean"}},
    "required": ["units", "days"]}}}


BOOK = {"type": "function", "function": {"name": "book", "parameters": {
    "type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                                     "day": {"type": "string", "format": "date"}},
    "required": ["code", "day"]}}}


@pytest.mark.parametrize("source, tool, seed, max_tokens", [(HERMES, FORECAST, 4, 200), (LLAMA3, FORECAST, 4, 200),
                                                        (QWEN3_CODER, PICK, 5, 120), (QWEN3_CODER, FORECAST, 5, 120),
                                                        (QWEN3_CODER, BOOK, 5, 160)])
async def test_a_forced_call_is_held_to_its_functions_parameters(client, template, source, tool, seed, max_tokens):
    """Not replayed: the demo model itself writes the call, held to the schema of the function's
    parameters (a named function) or of any tool's (required); a call that ends comes back whole
    (one cut by max_tokens comes back as text). Qwen3-Coder's XML call too: each parameter's value
    held to its schema, the required ones all written, the answer ending at </tool_call>."""
    import jsonschema

    template(source)
    name = tool["function"]["name"]
    for choice in ({"type": "function", "function": {"name": name}}, "required"):
        r = await client.chat.completions.create(model="coder", messages=ASK, tools=[tool, CLOCK], tool_choice=choice,
                                                 temperature=0.8, seed=seed, n=4, max_tokens=max_tokens)
        assert sum(c.finish_reason == "tool_calls" for c in r.choices) >= 2
        for c in r.choices:
            assert c.finish_reason in ("tool_calls", "length"), c.message.content
            if c.finish_reason == "length":
                continue
            (call,) = c.message.tool_calls
            arguments = json.loads(call.function.arguments)
            if choice != "required" or call.function.name == name:
                assert call.function.name == name
                jsonschema.validate(arguments, tool["function"]["parameters"])
            else:
                assert (call.function.name, arguments) == ("now", {})


async def test_a_forced_call_the_model_does_not_finish_comes_back_as_text(client, template, answers):
    template(HERMES)
    answers(" I do not know")
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER], tool_choice="required",
                                             temperature=0)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == '<tool_call>\n{"name": I do not know'


async def test_what_cannot_be_honoured_is_a_clear_400(client, template):
    cases = [({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nowhere"}}}, None),
             ({"tool_choice": "required"}, None),
             ({"tools": [{"type": "retrieval"}]}, None),
             ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, None),
             ({"tools": [WEATHER], "tool_choice": "required", "extra_body": {"ignore_eos": True}}, None)]
    template(HERMES)
    for extra, code in cases:
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="coder", messages=ASK, max_tokens=4, **extra)
        assert code is None or e.value.code == code
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="coder", messages=ASK, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}})
    assert e.value.code == "schema_unsupported" and "uniqueItems" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="coder", messages=ASK, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x"}})
    assert "json_schema.schema" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="coder", messages=ASK, max_tokens=4, tools=[WEATHER],
                                             response_format={"type": "json_object"})
    assert "json_object" in str(e.value)
    r = await client.chat.completions.create(model="coder", messages=ASK, max_tokens=4,
                                             response_format={"type": "text"})
    assert r.choices[0].finish_reason in ("stop", "length")
    template("{% for m in messages %}{{ m.content }}{% endfor %}")  # writes no call format
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER], max_tokens=4)
    assert e.value.code == "tools_unsupported" and "tool-call format" in str(e.value)


# Mistral 7B v0.3's way: [TOOL_CALLS] then a JSON list; the later templates' [TOOL_CALLS]NAME[ARGS]{...}.
MISTRAL = ("{%- if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
           "{%- for m in messages %}{%- if m.role == 'user' %}[INST] {{ m.content }}[/INST]"
           "{%- elif m.role == 'assistant' and m.tool_calls %}[TOOL_CALLS] ["
           "{%- for c in m.tool_calls %}{\"name\": \"{{ c.function.name }}\", \"arguments\": "
           "{{ c.function.arguments | tojson }}, \"id\": \"{{ c.id }}\"}{%- if not loop.last %}, {% endif %}"
           "{%- endfor %}]</s>"
           "{%- elif m.role == 'tool' %}[TOOL_RESULTS] {\"content\": {{ m.content | tojson }}, \"call_id\": "
           "\"{{ m.tool_call_id }}\"}[/TOOL_RESULTS]{%- else %}{{ m.content }}</s>{%- endif %}{%- endfor %}")
MISTRAL_ARGS = ("{%- if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
                "{%- for m in messages %}{%- if m.role == 'user' %}[INST] {{ m.content }}[/INST]"
                "{%- elif m.role == 'assistant' and m.tool_calls %}{%- for c in m.tool_calls %}[TOOL_CALLS]"
                "{{ c.function.name }}[ARGS]{{ c.function.arguments | tojson }}{%- endfor %}</s>"
                "{%- elif m.role == 'tool' %}[TOOL_RESULTS]{{ m.content }}[/TOOL_RESULTS]"
                "{%- else %}{{ m.content }}</s>{%- endif %}{%- endfor %}")
# The embedded tokenizer has no [TOOL_CALLS] nor [ARGS]: two of its special tokens stand in for them.
MARKERS = {"[TOOL_CALLS]": 3, "[ARGS]": 4}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("source,written", [
    (MISTRAL, 'Sure.[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "now", '
              '"arguments": {}}]'),
    (MISTRAL_ARGS, 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}')])
async def test_mistral_calls_after_the_special_token(client, template, answers, source, written, stream):
    template(source, MARKERS)
    answers(written, MARKERS)
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER, CLOCK], temperature=0,
                                             stream=stream)
    if stream:
        deltas = [c.choices[0] for c in [c async for c in r] if c.choices]
        content = "".join(d.delta.content or "" for d in deltas)
        calls = assembled(deltas)
        finish = deltas[-1].finish_reason
    else:
        content, calls, finish = r.choices[0].message.content, r.choices[0].message.tool_calls, r.choices[0].finish_reason
    assert content == "Sure." and finish == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("now", {})]
    assert all(re.fullmatch("[A-Za-z0-9]{9}", c.id) for c in calls)  # the only ids these templates take back


async def test_a_mistral_call_goes_back_through_the_template(client, server, template, answers):
    chat = template(MISTRAL, MARKERS)
    answers('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', MARKERS)
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER], temperature=0)
    call = r.choices[0].message.tool_calls[0]
    answers("It is 18 degrees.")
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": "18 C"}]
    again = await client.chat.completions.create(model="coder", messages=history, tools=[WEATHER], temperature=0)
    assert again.choices[0].message.content == "It is 18 degrees."
    assert f'"call_id": "{call.id}"' in chat.render(history, tools=[WEATHER])


async def test_a_named_mistral_call_opens_with_its_name(client, template, answers):
    template(MISTRAL_ARGS, MARKERS)
    answers('{"city": "Paris"}')
    r = await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=NAMED,
                                             temperature=0)
    call = r.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})


async def test_mistral_markers_the_tokenizer_lacks_are_a_400(client, template):
    template(MISTRAL)  # no special token for [TOOL_CALLS]
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="coder", messages=ASK, tools=[WEATHER], max_tokens=4)
    assert e.value.code == "tools_unsupported" and "[TOOL_CALLS]" in str(e.value)
