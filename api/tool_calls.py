"""Tool calls in chat completions: which format a model writes them in, read from its chat
template, and the calls taken back out of what it generated.

Formats (the template's own text says which one the model was trained on):
  hermes  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, any number, text
          around them (Qwen2.5 / Qwen2.5-Coder / Qwen3, Hermes): the template writes `<tool_call>`;
  qwen3_coder  the same blocks holding `<function=NAME>` and a `<parameter=KEY>VALUE</parameter>`
          per argument (Qwen3-Coder): the template writes `<function=`. A value is read as the
          tool's JSON schema types its parameter (a string as written, less the newline on either
          side; numbers, booleans, objects and arrays as JSON), else as JSON where it parses;
  llama3  the whole answer one JSON object `{"name": ..., "parameters": {...}}`, or several joined
          by `;` (Llama 3.1 / 3.2 / 3.3; their `<|python_tag|>` is a special token, left out of
          the text): the template writes `<|python_tag|>`;
  mistral  `[TOOL_CALLS]` then a JSON list of `{"name": ..., "arguments": {...}}` (Mistral 7B v0.3,
          Mistral Nemo, Codestral): the template writes `[TOOL_CALLS]`;
  mistral_args  `[TOOL_CALLS]NAME[ARGS]{...}` per call (the later Mistral and Devstral
          templates): the template writes `[TOOL_CALLS]` and `[ARGS]`.
          Both markers are special tokens: the request asks the engine to write them into the text
          (`markers`, SamplingParams.special_texts), and its calls get ids of 9 letters and digits,
          the only ids those templates take back.
A template that writes none of these has no format this server reads, and a request with tools for it
is refused. Text that does not parse as calls stays the message's content, as generated.

Reading the calls out of an answer, whole or as it streams: api/call_stream.py.

tool_choice `required` or a named function: the answer is started with the opening of a call in
the model's format (`forced_opening`), written after the chat template's generation prompt, so
that the model goes on with a call (of that function); the opening is part of the answer that is
read for calls. Where the call is one JSON value (Hermes, Llama 3.1, Mistral's formats) and the
functions' parameter schemas can be enforced (engine/json_schema.py), the rest of the call is held
to them (`call_schema`): the function's name among the tools, its arguments as its schema says, and
the answer ends where the call's JSON closes. Qwen3-Coder's XML call is held as
engine/xml_call.py says (xml_call). Otherwise (a schema keyword that cannot be enforced, a raw
string parameter's pattern beside lengths or one that could need a "<") nothing constrains what
follows: a model that writes no valid call there gets its text back as content.
"""
from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from engine.json_pattern import FORMATS, Pattern, compile_pattern
from engine.json_schema import compile_schema
from engine.xml_call import RawText, XmlCall, XmlFunction

Format = Literal["hermes", "qwen3_coder", "llama3", "mistral", "mistral_args"]
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_ID_CHARS = string.ascii_letters + string.digits
_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)(?:</function>\s*|\Z)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)
_STRING_NOTES = frozenset({"type", "description", "title", "default", "examples"})  # what a raw string honours
Schemas = dict[str, dict[str, Any]]  # tool name -> its parameters' JSON schema properties


@dataclass(frozen=True)
class ToolCalling:
    """A request's tool calling: the format its model writes, and whether several calls may go back."""

    format: Format
    parallel: bool = True
    schemas: Schemas | None = None  # how qwen3_coder's parameter values are typed
    forced: str = ""  # the answer's opening written for the model (tool_choice required or named)
    kept: tuple[tuple[int, str], ...] = ()  # the format's special tokens (id, text) the text must show


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI's API carries it
    id: str

    @classmethod
    def new(cls, name: str, arguments: str) -> "ToolCall":
        """A call with an id of its own."""
        return cls(name, arguments, call_id("hermes"))

    def argument_object(self) -> dict[str, Any]:
        """The arguments as an object, as Ollama's and Anthropic's APIs carry them ({} where they are not one)."""
        try:
            arguments = json.loads(self.arguments)
        except ValueError:
            return {}
        return arguments if isinstance(arguments, dict) else {}

    def api(self, index: int | None = None) -> dict[str, Any]:
        """The call as OpenAI writes it in a message (or, with `index`, in a stream's delta)."""
        body: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return body if index is None else {"index": index, **body}


def call_id(fmt: Format) -> str:
    """A new call's id: 9 letters and digits in Mistral's formats (the only ids their templates
    take back), else OpenAI's kind."""
    if fmt in ("mistral", "mistral_args"):
        return "".join(secrets.choice(_ID_CHARS) for _ in range(9))
    return f"call_{uuid.uuid4().hex[:24]}"


def markers(fmt: Format) -> tuple[str, ...]:
    """The special tokens a format's calls are written with, which the text must show."""
    return {"mistral": (MISTRAL_CALLS,), "mistral_args": (MISTRAL_CALLS, MISTRAL_ARGS)}.get(fmt, ())


def forced_opening(fmt: Format, name: str | None) -> str:
    """The start of a call in `fmt`, of the function `name` (None: any function). It stops before
    the next value's first token (a space or quote): the model writes that token as it would."""
    if fmt == "mistral_args":
        return f"{MISTRAL_CALLS}{name}{MISTRAL_ARGS}" if name else MISTRAL_CALLS
    if fmt == "mistral":
        opening = f'{MISTRAL_CALLS} [{{"name":'
        return opening + f' {json.dumps(name, ensure_ascii=False)}, "arguments":' if name else opening
    if fmt == "qwen3_coder":
        return f"{HERMES_OPEN}\n<function={name}>" if name else f"{HERMES_OPEN}\n<function="
    start = f"{HERMES_OPEN}\n" if fmt == "hermes" else ""
    if name is None:
        return start + '{"name":'
    return start + '{"name": ' + json.dumps(name, ensure_ascii=False) + (', "arguments":' if fmt == "hermes"
                                                                          else ', "parameters":')


def call_schema(fmt: Format, parameters: dict[str, dict | None], name: str | None) -> tuple[dict, str] | None:
    """A forced call as JSON a schema describes: (the schema, the part of forced_opening that is
    that JSON's start), for the function `name` or (None) any of `parameters`' (name -> its
    parameters' schema). None where the call is not one JSON value (Qwen3-Coder's XML, Mistral's
    [ARGS] format without a name) or the parameters' $defs collide."""
    defs: dict[str, Any] = {}
    for schema in parameters.values():
        for key, value in ((schema or {}).get("$defs") or {}).items():
            if defs.setdefault(key, value) != value:
                return None
    args = {n: {k: v for k, v in (p or {"type": "object"}).items() if k != "$defs"} for n, p in parameters.items()}
    if fmt == "mistral_args":
        return ({**args[name], "$defs": defs}, "") if name else None
    if fmt == "qwen3_coder":
        return None
    key = "parameters" if fmt == "llama3" else "arguments"
    calls = [{"type": "object", "properties": {"name": {"const": n}, key: args[n]}, "required": ["name", key],
              "additionalProperties": False} for n in ([name] if name else args)]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    opening = forced_opening(fmt, name)
    if fmt == "mistral":
        return {"type": "array", "prefixItems": [call], "items": False, "$defs": defs}, opening[len(MISTRAL_CALLS):]
    return {**call, "$defs": defs}, opening.removeprefix(f"{HERMES_OPEN}\n")


def xml_call(parameters: dict[str, dict | None], name: str | None) -> XmlCall:
    """A forced Qwen3-Coder call as engine/xml_call.py holds it, for the function `name` or (None)
    any of `parameters`' (name -> its parameters' schema): a string parameter is raw text (as the
    call is read back, api/call_stream.py; held to its enum, lengths, and pattern or format), any
    other's value JSON its compiled schema accepts. ValueError where that cannot be enforced: a
    string parameter whose pattern sits beside lengths or may need a "<", a schema compile_schema
    refuses, a required parameter not listed."""
    functions = {}
    for function, schema in parameters.items():
        schema = schema or {}
        props, defs = schema.get("properties") or {}, schema.get("$defs") or {}
        required = frozenset(schema.get("required") or ())
        if not required <= props.keys():
            raise ValueError(f"{function}: a required parameter is not among its properties")
        params = {}
        for key, prop in props.items():
            if isinstance(prop, dict) and prop.get("type") == "string":
                params[key] = _raw_text(prop, f"{function}.{key}")
            else:
                params[key] = compile_schema({**prop, "$defs": defs} if isinstance(prop, dict) and defs else prop)
        functions[function] = XmlFunction(params, required)
    return XmlCall(functions if name is None else {name: functions[name]}, opening=f"{name}>" if name else "")


def _raw_text(prop: dict, where: str) -> RawText | None:
    """A string parameter as raw text: free (None), or held to its enum, lengths, and pattern (a
    `format` JSON schema holds names its pattern; others are annotations, as there) (RawText)."""
    extra = set(prop) - _STRING_NOTES - {"enum", "minLength", "maxLength", "pattern", "format"}
    if extra:
        raise ValueError(f"{where}: a string parameter's raw text is not held to {', '.join(sorted(extra))}")
    values = prop.get("enum")
    if values is not None and not (isinstance(values, list) and values
                                   and all(isinstance(v, str) and "<" not in v for v in values)):
        raise ValueError(f"{where}: an enum of a raw string parameter lists strings without '<'")
    low, high = prop.get("minLength", 0), prop.get("maxLength")
    if not (type(low) is int and low >= 0 and (high is None or (type(high) is int and high >= low))):
        raise ValueError(f"{where}: minLength and maxLength must be counts, the first at most the second")
    pattern = _raw_pattern(prop, where, low != 0 or high is not None)
    if pattern is not None and values is not None:  # the enum holds it: the values the pattern takes
        values = [v for v in values if pattern.matches(v)]
        if not values:
            raise ValueError(f"{where}: no value of its enum matches its pattern")
        pattern = None
    if values is None and low == 0 and high is None and pattern is None:
        return None
    return RawText(None if values is None else frozenset(values), low, high, pattern)


def _raw_pattern(prop: dict, where: str, bounded: bool) -> Pattern | None:
    """A raw string's pattern (its own, else its format's), where raw text can always go on to
    match it: not beside lengths (a pattern's state may need more characters than are left), and
    with no "<" it could need (raw text holds none)."""
    source = prop.get("pattern", FORMATS.get(prop.get("format")))
    if source is None:
        return None
    if not isinstance(source, str):
        raise ValueError(f"{where}: pattern must be a string")
    if bounded:
        raise ValueError(f"{where}: a pattern (or format) beside minLength or maxLength cannot be held in raw text")
    if any(lt in source.lower() for lt in ("<", "\\x3c", "\\u003c")):
        raise ValueError(f"{where}: a pattern that may need '<' cannot be held in raw text")
    return compile_pattern(source)


def format_of(template_source: str) -> Format | None:
    """The tool-call format a chat template's model writes, from what the template writes."""
    if "<function=" in template_source:
        return "qwen3_coder"
    if HERMES_OPEN in template_source:
        return "hermes"
    if MISTRAL_CALLS in template_source:
        return "mistral_args" if MISTRAL_ARGS in template_source else "mistral"
    if "<|python_tag|>" in template_source:
        return "llama3"
    return None


def read_call(raw: str, arguments_key: str) -> ToolCall | None:
    """A call from its JSON: a name and its arguments (an object, or JSON text of one)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return call_of(obj, arguments_key)


def call_of(obj: Any, arguments_key: str) -> ToolCall | None:
    """A call from its decoded JSON."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get(arguments_key, obj.get("arguments", {}))
    if isinstance(args, str):
        try:
            json.loads(args)
        except ValueError:
            return None
        text = args
    elif isinstance(args, dict):
        text = json.dumps(args, ensure_ascii=False)
    else:
        return None
    return ToolCall.new(obj["name"], text)


def read_xml_call(raw: str, schemas: Schemas) -> ToolCall | None:
    """Qwen3-Coder's call: `<function=NAME>` and its `<parameter=KEY>VALUE</parameter>`s."""
    m = _FUNCTION.fullmatch(raw.strip())
    if m is None or not m.group(1).strip():
        return None
    name = m.group(1).strip()
    types = schemas.get(name, {})
    args = {}
    for p in _PARAMETER.finditer(m.group(2)):
        key = p.group(1).strip()
        args[key] = typed_value(strip_newline(p.group(2)), (types.get(key) or {}).get("type"))
    return ToolCall.new(name, json.dumps(args, ensure_ascii=False))


def strip_newline(value: str) -> str:
    value = value[1:] if value.startswith("\n") else value
    return value[:-1] if value.endswith("\n") else value


def typed_value(value: str, kind: Any) -> Any:
    """A parameter's value as its schema types it; untyped, JSON where it parses, else the text."""
    if kind == "string":
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if kind in (None, "object", "array") or (kind == "boolean" and isinstance(parsed, bool)):
        return parsed
    if kind in ("integer", "number") and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return parsed
    return value


def arguments_as_objects(messages: list[dict]) -> list[dict]:
    """Earlier assistant tool calls as templates expect them: OpenAI sends each call's
    arguments as JSON text, the templates write them out as objects (`| tojson`)."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            m = {**m, "tool_calls": [_with_object_arguments(c) for c in calls]}
        out.append(m)
    return out


def _with_object_arguments(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    args = call["function"].get("arguments")
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            return call
        return {**call, "function": {**call["function"], "arguments": parsed}}
    return call
