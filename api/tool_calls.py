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

Streaming: text that may turn out to be a call is held back (from `<tool_call>`, or a piece of
it at the end; for llama3 an answer that starts with `{`) until the choice finishes; then the
calls go out in one delta, and whatever held-back text was not a call as content.

tool_choice `required` or a named function: the answer is started with the opening of a call in
the model's format (`forced_opening`), written after the chat template's generation prompt, so
that the model goes on with a call (of that function); the opening is part of the answer that is
read for calls. Where the call is one JSON value (Hermes, Llama 3.1, Mistral's formats) and the
functions' parameter schemas can be enforced (engine/json_schema.py), the rest of the call is held
to them (`call_schema`): the function's name among the tools, its arguments as its schema says, and
the answer ends where the call's JSON closes. Otherwise (Qwen3-Coder's XML, a schema keyword that
cannot be enforced) nothing constrains what follows: a model that writes no valid call there gets
its text back as content.
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["hermes", "qwen3_coder", "llama3", "mistral", "mistral_args"]
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_ID_CHARS = string.ascii_letters + string.digits
_HERMES_BLOCK = re.compile(re.escape(HERMES_OPEN) + r"(.*?)(?:" + re.escape(HERMES_CLOSE) + r"|\Z)", re.DOTALL)
_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)(?:</function>\s*|\Z)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)
Schemas = dict[str, dict[str, Any]]  # tool name -> its parameters' JSON schema properties


@dataclass(frozen=True)
class ToolCalling:
    """A request's tool calling: the format its model writes, and whether several calls may go back."""

    format: Format
    parallel: bool = True
    schemas: Schemas | None = None  # how qwen3_coder's parameter values are typed
    forced: str = ""  # the answer's opening written for the model (tool_choice required or named)
    kept: tuple[tuple[int, str], ...] = ()  # the format's special tokens (id, text) the text must show

    def parse(self, answer: str) -> tuple[str | None, list[ToolCall]]:
        """The calls of an answer: the forced opening (if any), then what the model generated."""
        content, calls = parse(answer, self.format, self.schemas)
        return content, calls if self.parallel else calls[:1]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI's API carries it
    id: str

    @classmethod
    def new(cls, name: str, arguments: str) -> "ToolCall":
        """A call with an id of its own."""
        return cls(name, arguments, f"call_{uuid.uuid4().hex[:24]}")

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


@dataclass
class HeldCalls:
    """One answer's text as it streams: what may be a tool call is held back until the answer
    ends, when the calls are read from what was held (the forced opening is held from the start)."""

    calls: ToolCalling
    text: str = ""
    sent: int = 0  # how much of `text` went out as content

    def __post_init__(self) -> None:
        self.text = self.text or self.calls.forced

    def add(self, new: str, finished: bool) -> tuple[str, list[ToolCall]]:
        """(the content to send now, the calls made: only once the answer has finished)."""
        self.text += new
        sent = self.sent
        if not finished:
            self.sent = max(sent, held_from(self.text, self.calls.format, sent))
            return self.text[sent:self.sent], []
        self.sent = len(self.text)
        content, made = self.calls.parse(self.text[sent:])
        return (content or "", made) if made else (self.text[sent:], [])


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


def parse(text: str, fmt: Format, schemas: Schemas | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content, calls): the calls in `text` and the text outside them (None where nothing but
    whitespace is left); no calls, and `text` as it is, where none parses."""
    if fmt == "llama3":
        calls, content = _llama3(text)
    elif fmt in ("mistral", "mistral_args"):
        calls, content = _mistral(text)
        calls = [dataclasses.replace(c, id="".join(secrets.choice(_ID_CHARS) for _ in range(9))) for c in calls]
    else:
        calls, content = _blocks(text, (lambda raw: _call(raw, "arguments")) if fmt == "hermes"
                                 else (lambda raw: _xml_call(raw, schemas or {})))
    if not calls:
        return text, []
    return (content if content.strip() else None), calls


def _blocks(text: str, read) -> tuple[list[ToolCall], str]:
    """The calls of every <tool_call> block that `read` makes one of, and the text around them."""
    calls, kept, at = [], [], 0
    for m in _HERMES_BLOCK.finditer(text):
        call = read(m.group(1))
        if call is None:
            continue  # not a call: stays in the content
        calls.append(call)
        kept.append(text[at:m.start()])
        at = m.end()
    kept.append(text[at:])
    return calls, "".join(kept).strip()


def _llama3(text: str) -> tuple[list[ToolCall], str]:
    body = text.strip()
    if not body.startswith("{"):
        return [], text
    calls = [_call_of(obj, "parameters") for obj in _json_objects(body)]
    if not calls or any(c is None for c in calls):
        return [], text
    return calls, ""


def _mistral(text: str) -> tuple[list[ToolCall], str]:
    """The calls after `[TOOL_CALLS]` (each a JSON list of calls, or `NAME[ARGS]{...}`), and the
    text before it; none where any part does not parse."""
    at = text.find(MISTRAL_CALLS)
    if at < 0:
        return [], text
    calls: list[ToolCall | None] = []
    for part in text[at + len(MISTRAL_CALLS):].split(MISTRAL_CALLS):
        if MISTRAL_ARGS in part:
            name, _, args = part.partition(MISTRAL_ARGS)
            try:
                calls.append(_call_of({"name": name.strip(), "arguments": json.loads(args)}, "arguments"))
            except ValueError:
                calls.append(None)
            continue
        values = _json_objects(part.strip())
        calls += [_call_of(v, "arguments") for value in values for v in (value if isinstance(value, list) else [value])]
        if not values:
            calls.append(None)
    if not calls or any(c is None for c in calls):
        return [], text
    return calls, text[:at].strip()


def _json_objects(body: str) -> list[Any]:
    """`body` as JSON values joined by `;` (each may hold `;` in its strings), decoded."""
    decoder, parts, at = json.JSONDecoder(), [], 0
    while at < len(body):
        try:
            obj, end = decoder.raw_decode(body, at)
        except ValueError:
            return []
        parts.append(obj)
        at = end
        while at < len(body) and body[at] in " \t\r\n;":
            at += 1
    return parts


def _call(raw: str, arguments_key: str) -> ToolCall | None:
    """A call from its JSON: a name and its arguments (an object, or JSON text of one)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return _call_of(obj, arguments_key)


def _call_of(obj: Any, arguments_key: str) -> ToolCall | None:
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


def _xml_call(raw: str, schemas: Schemas) -> ToolCall | None:
    """Qwen3-Coder's call: `<function=NAME>` and its `<parameter=KEY>VALUE</parameter>`s."""
    m = _FUNCTION.fullmatch(raw.strip())
    if m is None or not m.group(1).strip():
        return None
    name = m.group(1).strip()
    types = schemas.get(name, {})
    args = {}
    for p in _PARAMETER.finditer(m.group(2)):
        key = p.group(1).strip()
        args[key] = _typed(_strip_newline(p.group(2)), (types.get(key) or {}).get("type"))
    return ToolCall.new(name, json.dumps(args, ensure_ascii=False))


def _strip_newline(value: str) -> str:
    value = value[1:] if value.startswith("\n") else value
    return value[:-1] if value.endswith("\n") else value


def _typed(value: str, kind: Any) -> Any:
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


def held_from(text: str, fmt: Format, since: int = 0) -> int:
    """Where in a choice's text so far streaming must stop until the choice finishes: the start
    of what may be (the beginning of) a call; len(text) where nothing may be. `since`: how much
    of it went out already (nothing there starts a call), so a stream scans only what is new."""
    if fmt in ("mistral", "mistral_args"):  # the marker arrives whole: a special token
        at = text.find(MISTRAL_CALLS, since)
        return at if at >= 0 else len(text)
    if fmt == "llama3":
        if since > 0:
            return len(text)
        stripped = text.lstrip()
        return 0 if not stripped or stripped.startswith("{") else len(text)
    at = text.find(HERMES_OPEN, since)
    if at >= 0:
        return at
    for k in range(min(len(HERMES_OPEN) - 1, len(text)), 0, -1):  # a piece of the marker at the end
        if HERMES_OPEN.startswith(text[-k:]):
            return len(text) - k
    return len(text)


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
