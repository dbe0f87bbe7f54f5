"""Tool-call formats read from chat templates, and calls read out of whole answers
(api/tool_calls.py, api/call_stream.py read_calls; streamed answers: test_call_stream.py)."""
from __future__ import annotations

import json
import re

import pytest

from api import tool_calls
from api.call_stream import read_calls
from api.tool_calls import ToolCalling, forced_opening
from engine.json_pattern import FORMATS
from tests.api.test_chat_tools import HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, QWEN3_CODER, TWO_CALLS


def parse(text: str, fmt: str, schemas: dict | None = None):
    return read_calls(text, ToolCalling(fmt, schemas=schemas))


def test_formats_are_read_from_the_templates_and_parsed():
    assert tool_calls.format_of(HERMES) == "hermes" and tool_calls.format_of(LLAMA3) == "llama3"
    assert tool_calls.format_of(QWEN3_CODER) == "qwen3_coder"
    assert tool_calls.format_of("{{ messages }}") is None
    content, calls = parse(TWO_CALLS, "hermes")
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    # a block that is not a call stays text; an unclosed last block (the model stopped) is a call
    assert parse("<tool_call>{not json}</tool_call>", "hermes") == ("<tool_call>{not json}</tool_call>", [])
    assert parse('<tool_call>{"name": "now"}', "hermes")[1][0].arguments == "{}"
    content, calls = parse(' {"name": "f", "parameters": {"q": "a;b"}}; {"name": "g", "parameters": {}}',
                                      "llama3")
    assert content is None and [(c.name, c.arguments) for c in calls] == [("f", '{"q": "a;b"}'), ("g", "{}")]
    assert parse('{"no": "name"}', "llama3") == ('{"no": "name"}', [])
    assert parse("The answer is {1}.", "llama3") == ("The answer is {1}.", [])


def test_qwen3_coder_parameters_are_typed_by_the_schema_or_as_json():
    text = ("Running it.\n<tool_call>\n<function=run>\n<parameter=command>\nls -la\n</parameter>\n"
            "<parameter=n>\n30\n</parameter>\n<parameter=flag>\ntrue\n</parameter>\n</function>\n</tool_call>")
    schemas = {"run": {"command": {"type": "string"}, "n": {"type": "string"}, "flag": {"type": "boolean"}}}
    content, calls = parse(text, "qwen3_coder", schemas)
    assert content == "Running it." and calls[0].name == "run"
    assert json.loads(calls[0].arguments) == {"command": "ls -la", "n": "30", "flag": True}
    assert json.loads(parse(text, "qwen3_coder")[1][0].arguments) == {"command": "ls -la", "n": 30,
                                                                                  "flag": True}
    # a call cut off by max_tokens keeps what it has; a block with no function is text
    cut = parse("<tool_call>\n<function=f>\n<parameter=x>\nabc", "qwen3_coder")[1][0]
    assert (cut.name, json.loads(cut.arguments)) == ("f", {"x": "abc"})
    assert parse('<tool_call>{"name": "f"}</tool_call>', "qwen3_coder")[1] == []


@pytest.mark.parametrize("fmt,named,written", [
    ("hermes", True, ' {"city": "Paris"}}\n</tool_call>'),
    ("hermes", False, ' "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    ("qwen3_coder", True, "\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"),
    ("qwen3_coder", False, "get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"),
    ("llama3", True, ' {"city": "Paris"}}'),
    ("llama3", False, ' "get_weather", "parameters": {"city": "Paris"}}'),
    ("mistral", True, ' {"city": "Paris"}}]'),
    ("mistral", False, ' "get_weather", "arguments": {"city": "Paris"}}]'),
    ("mistral_args", True, '{"city": "Paris"}'),
    ("mistral_args", False, 'get_weather[ARGS]{"city": "Paris"}')])
def test_a_forced_opening_and_what_follows_it_read_as_the_call(fmt, named, written):
    calling = ToolCalling(fmt, forced=forced_opening(fmt, "get_weather" if named else None))
    content, calls = read_calls(calling.forced + written, calling)
    assert content is None and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert not calling.forced.endswith((" ", '"'))  # the model writes the next value's first token itself


def test_mistral_calls_need_their_marker_and_valid_json():
    assert tool_calls.format_of(MISTRAL) == "mistral" and tool_calls.format_of(MISTRAL_ARGS) == "mistral_args"
    for fmt in ("mistral", "mistral_args"):
        for text in ('[{"name": "f", "arguments": {}}]',  # no [TOOL_CALLS]: an answer, not a call
                     'Sure.[TOOL_CALLS] [{"name": "f", "arguments": {]', "[TOOL_CALLS]f[ARGS]{nope"):
            assert parse(text, fmt) == (text, [])
    content, calls = parse('ok[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}][TOOL_CALLS]g[ARGS]{}', "mistral")
    assert content == "ok" and [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1}), ("g", {})]


@pytest.mark.parametrize("fmt, name, rest", [
    ("hermes", "get_weather", ' {"city": "Paris"}}'), ("hermes", None, ' "now", "arguments": {}}'),
    ("llama3", "get_weather", ' {"city": "Paris"}}'), ("mistral", "get_weather", ' {"city": "Paris"}}]'),
    ("mistral", None, ' "now", "arguments": {}}]'), ("mistral_args", "get_weather", '{"city": "Paris"}')])
def test_a_forced_call_is_json_its_schema_continues_from_the_opening(fmt, name, rest):
    from engine.json_schema import compile_schema
    from api.tool_calls import call_schema, forced_opening

    parameters = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                                  "$defs": {"unused": {"type": "null"}}},
                  "now": None}
    schema, opening = call_schema(fmt, parameters, name)
    assert forced_opening(fmt, name).endswith(opening)
    machine = compile_schema(schema).after(opening)
    state = machine.feed(machine.start, rest)
    assert state is not None and machine.complete(state)
    assert machine.feed(machine.start, rest.replace("Paris", "1").replace('"1"', "1")) is None or name is None
    text = forced_opening(fmt, name) + rest
    assert parse(text, fmt)[1], text  # and it reads back as a call


def test_calls_that_are_not_one_json_value_are_not_held():
    from api.tool_calls import call_schema

    assert call_schema("qwen3_coder", {"run": None}, "run") is None
    assert call_schema("mistral_args", {"run": None}, None) is None
    clash = {"a": {"$defs": {"x": {"type": "null"}}}, "b": {"$defs": {"x": {"type": "string"}}}}
    assert call_schema("hermes", clash, None) is None


def test_a_held_qwen3_coder_call_reads_back_as_a_call_its_schema_accepts():
    """Random walks through tool_calls.xml_call, read back as api/call_stream.py reads Qwen3-Coder's
    calls: each is a call of one of the tools, its arguments valid under that tool's parameters."""
    import random

    import jsonschema

    tools = {"run": {"type": "object", "properties": {"command": {"type": "string"}, "n": {"type": "integer",
                                                                                           "minimum": 1},
                                                      "day": {"type": "string", "format": "date"}},
                     "required": ["command"]},
             "pick": {"type": "object", "properties": {"units": {"enum": ["C", "F"]}, "on": {"type": "boolean"},
                                                       "mode": {"type": "string", "enum": ["r", "rw"]},
                                                       "city": {"type": "string", "minLength": 1, "maxLength": 4},
                                                       "code": {"type": "string", "pattern": "^[CF]{2}-[0-9]+$"}},
                      "required": ["units", "on", "mode"]}}
    rng = random.Random(5)
    alphabet = list("abcdefghijklmnopqrstuvwxyz_<>/=\n \"0123456789CF-") + [
        "<parameter=", "</parameter>", "</function>", "</tool_call>", "command>", "n>", "units>", "on>", '"C"',
        "mode>", "city>", "code>", "day>"]
    held = 0
    for name in (None, "run", "pick"):
        machine = tool_calls.xml_call(tools, name)
        for _ in range(100):
            state, text = machine.start, machine.opening
            while not machine.complete(state):
                options = [p for p in alphabet if machine.feed(state, p) is not None]
                closing = [p for p in options if p.startswith("</") or p.endswith(">") or p == '"C"']
                piece = rng.choice(closing if closing and rng.random() < 0.4 else options)
                state, text = machine.feed(state, piece), text + piece
            calling = ToolCalling("qwen3_coder", schemas={n: t["properties"] for n, t in tools.items()})
            _, (call,) = read_calls(forced_opening("qwen3_coder", None) + text, calling)
            assert name in (None, call.name)
            arguments = json.loads(call.arguments)
            jsonschema.validate(arguments, tools[call.name])  # the pattern included
            if "day" in arguments:
                assert re.search(FORMATS["date"], arguments["day"])
            held += "day" in arguments or "code" in arguments
    assert held > 20  # the walks wrote held patterns, not only left them out


def test_a_held_qwen3_coder_string_follows_its_pattern_or_format():
    def takes(schema: dict, value: str) -> bool:
        machine = tool_calls.xml_call({"f": {"properties": {"s": schema}}}, None)
        state = machine.feed(machine.start, f"f>\n<parameter=s>\n{value}\n</parameter>\n</function>\n</tool_call>")
        return state is not None and machine.complete(state)

    code = {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}
    assert takes(code, "AB-123") and not takes(code, "AB-12") and not takes(code, "ab-123")
    assert not takes(code, "AB-1234") and not takes(code, "AB-123\n")
    assert takes({"type": "string", "pattern": "x"}, "a x b") and not takes({"type": "string", "pattern": "x"}, "ab")
    day = {"type": "string", "format": "date"}
    assert takes(day, "2026-12-06") and not takes(day, "2026-13-06") and not takes(day, "06/12/2026")
    assert takes({"type": "string", "format": "uri"}, "any text")  # a format without a pattern: an annotation
    # an enum beside a pattern: the values the pattern takes
    assert takes({"type": "string", "enum": ["AB-123", "x"], "pattern": "^[A-Z]"}, "AB-123")
    assert not takes({"type": "string", "enum": ["AB-123", "x"], "pattern": "^[A-Z]"}, "x")


def test_what_a_held_qwen3_coder_call_cannot_enforce_is_refused():
    with pytest.raises(ValueError, match="minLength"):
        tool_calls.xml_call({"f": {"properties": {"s": {"type": "string", "pattern": "a", "maxLength": 3}}}}, None)
    with pytest.raises(ValueError, match="'<'"):
        tool_calls.xml_call({"f": {"properties": {"s": {"type": "string", "pattern": "^a<b$"}}}}, None)
    with pytest.raises(ValueError, match="'<'"):
        tool_calls.xml_call({"f": {"properties": {"s": {"type": "string", "pattern": "^a\\x3Cb$"}}}}, None)
    with pytest.raises(ValueError, match="no value of its enum"):
        tool_calls.xml_call({"f": {"properties": {"s": {"type": "string", "enum": ["a"], "pattern": "^b"}}}}, None)
    with pytest.raises(ValueError, match="enum"):
        tool_calls.xml_call({"f": {"properties": {"s": {"type": "string", "enum": ["<b>"]}}}}, None)
    with pytest.raises(ValueError, match="required"):
        tool_calls.xml_call({"f": {"properties": {}, "required": ["x"]}}, None)
