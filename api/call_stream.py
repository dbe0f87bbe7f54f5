"""A chat answer's tool calls read as it is written: each call goes out once its name is written,
its arguments as they are written (OpenAI's tool_calls deltas, the Responses API's
function_call_arguments.delta events, Anthropic's input_json_delta), the text around the calls as
content. Coding agents write whole files into a call's arguments: held to the end, such a call
would show nothing for as long as it takes to write.

A call streams where it is laid out as the models write them (api/tool_calls.py has the formats):
a JSON object with its name first and then its arguments object (Hermes and Qwen, Llama 3.1,
Mistral's list), `NAME[ARGS]{...}` (Mistral's later format), or Qwen3-Coder's `<function=NAME>`,
whose parameters become JSON as each ends (a string parameter as it is written). The arguments
are the JSON text the model wrote, so a call's deltas add up to its arguments, and an answer read
whole (read_calls) gives the calls it gives streamed in any pieces. A call laid out otherwise
(its arguments first, or as a string of JSON) is held until it ends and read whole; one that does
not read as a call stays content. Once a call's name went out it stays a call: arguments that the
answer cut short are left as written.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Union

from api.tool_calls import (HERMES_CLOSE, HERMES_OPEN, MISTRAL_ARGS, MISTRAL_CALLS, ToolCall, ToolCalling,
                            call_id, call_of, read_call, read_xml_call, strip_newline, typed_value)

# An opening longer than this without the call's name and the start of its arguments is read whole.
HEADER_LIMIT = 512
_JSON_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\S)')
_ARGS_HEADER = re.compile(r"(.*?)" + re.escape(MISTRAL_ARGS) + r"\s*(?=\S)", re.DOTALL)
_XML_HEADER = re.compile(r"\s*<function=([^>\n]+)>")
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>")
_PARAMETER_ENDS = ("</parameter>", "<parameter=", "</function>", HERMES_CLOSE)
_LONGEST_END = max(map(len, _PARAMETER_ENDS))
_STRUCTURE = re.compile(r'[{}\[\]"]')
_IN_STRING = re.compile(r'["\\]')


@dataclass(frozen=True)
class CallDelta:
    """A piece of a streamed call: the first names it (`call`: its id and name, no arguments), the
    others carry more of its arguments' JSON text."""

    index: int
    arguments: str = ""
    call: ToolCall | None = None


Part = Union[str, CallDelta]


@dataclass
class Read:
    """What an addition to the answer brings, in order: content text and call deltas; the calls it
    completed (`ended`: for APIs that send a call whole, as soon as it is); once the answer has
    finished, every call (`made`, a call the answer cut short included)."""

    parts: list[Part] = field(default_factory=list)
    ended: list[ToolCall] = field(default_factory=list)  # the calls whose arguments were completed by it
    made: list[ToolCall] = field(default_factory=list)
    # A whole answer's texts (stripped, none empty) and calls in the order written (read_whole).
    written: list[Union[str, ToolCall]] = field(default_factory=list)

    @property
    def content(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def deltas(self) -> list[CallDelta]:
        return [p for p in self.parts if isinstance(p, CallDelta)]


@dataclass
class _Span:
    """Where a JSON value that opens with { or [ closes, read a piece at a time."""

    pos: int
    depth: int = 0
    in_string: bool = False
    escape: bool = False

    def feed(self, text: str) -> int | None:
        """The end of the value (just past its close) if it is in `text`; else None, all of it read."""
        i, n = self.pos, len(text)
        while i < n:
            if self.escape:
                i, self.escape = i + 1, False
            elif self.in_string:
                m = _IN_STRING.search(text, i)
                if m is None:
                    i = n
                elif m.group() == "\\":
                    i, self.escape = m.end(), True
                else:
                    i, self.in_string = m.end(), False
            else:
                m = _STRUCTURE.search(text, i)
                if m is None:
                    i = n
                    break
                i, c = m.end(), m.group()
                if c == '"':
                    self.in_string = True
                elif c in "{[":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth <= 0:
                        self.pos = i
                        return i
        self.pos = n
        return None


@dataclass
class _Call:
    """A call that went out (or, past the first where calls may not be parallel, was read and dropped)."""

    index: int
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    shown: bool = True


@dataclass
class CallStream:
    """One answer's calls and content as its text arrives (`add`); see the module docstring."""

    calling: ToolCalling
    text: str = ""
    _pos: int = 0  # the text before this is settled: sent as content, or read as calls
    _mode: str = "content"
    _start: int = 0  # where the call (or block) being read starts, its marker included
    _span: _Span | None = None
    _sent: int = 0  # how far the open call's streamed text went out
    _call: _Call | None = None
    _calls: list[_Call] = field(default_factory=list)
    _params: int = 0  # Qwen3-Coder: parameters written so far in the open call
    _kind: object = None  # Qwen3-Coder: the open parameter's type in its tool's schema
    _quoted: bool = False  # Qwen3-Coder: the open string parameter's opening quote went out
    _args_form: bool = False  # Mistral: the open call is NAME[ARGS]{...}
    _read: Read | None = None

    def __post_init__(self) -> None:
        self.text = self.text or self.calling.forced

    def add(self, new: str, finished: bool) -> Read:
        self.text += new
        self._read = Read()
        while getattr(self, "_m_" + self._mode)(finished):
            pass
        if finished:
            self._mode = "done"
            self._read.made = [ToolCall(c.name, "".join(c.arguments), c.id) for c in self._calls if c.shown]
        read, self._read = self._read, None
        return read

    # ------------------------------------------------------------------ output
    def _content(self, text: str) -> None:
        if text:
            self._read.parts.append(text)

    def _open(self, name: str) -> _Call:
        shown = self.calling.parallel or not any(c.shown for c in self._calls)
        call = _Call(len([c for c in self._calls if c.shown]), call_id(self.calling.format), name, shown=shown)
        self._calls.append(call)
        if shown:
            self._read.parts.append(CallDelta(call.index, call=ToolCall(name, "", call.id)))
        return call

    def _arguments(self, call: _Call, text: str) -> None:
        if text:
            call.arguments.append(text)
            if call.shown:
                self._read.parts.append(CallDelta(call.index, arguments=text))

    def _whole(self, call: ToolCall) -> None:
        """A call read whole: it goes out at once."""
        opened = self._open(call.name)
        self._arguments(opened, call.arguments)
        self._ended(opened)

    def _ended(self, call: _Call) -> None:
        if call.shown:
            self._read.ended.append(ToolCall(call.name, "".join(call.arguments), call.id))

    # ------------------------------------------------------------------ modes: each returns whether it moved on
    def _m_done(self, finished: bool) -> bool:
        return False

    def _hold(self) -> bool:
        """The call being read does not stream: it is read whole once it ends."""
        fmt = self.calling.format
        self._span = None
        self._mode = "held_block" if fmt in ("hermes", "qwen3_coder") else (
            "held_mistral" if self._pos == self._start + len(MISTRAL_CALLS) and fmt != "llama3" else "held_object")
        return True

    def _content_end(self, finished: bool) -> tuple[int, int | None]:
        """(how far the text is content for sure, where a call's marker starts or None)."""
        fmt, text, pos = self.calling.format, self.text, self._pos
        if fmt == "llama3":  # a call is the whole answer: it starts with `{`
            if pos > 0 or self._calls:
                return len(text), None
            blank = len(text) - len(text.lstrip())
            if blank == len(text):
                return (len(text) if finished else 0), None
            return (0, blank) if text[blank] == "{" else (len(text), None)
        marker = MISTRAL_CALLS if fmt in ("mistral", "mistral_args") else HERMES_OPEN
        at = text.find(marker, pos)
        if at >= 0:
            return at, at
        if not finished:
            for k in range(min(len(marker) - 1, len(text) - pos), 0, -1):  # a piece of the marker at the end
                if marker.startswith(text[-k:]):
                    return len(text) - k, None
        return len(text), None

    def _m_content(self, finished: bool) -> bool:
        end, call_at = self._content_end(finished)
        pending = self.text[self._pos:end]
        if self._calls and not pending.strip():  # whitespace after a call is no content
            if call_at is None and not finished:
                return False  # unless something else follows it
            pending = ""
        self._content(pending)
        self._pos = end
        if call_at is None:
            return False
        self._start = call_at
        if self.calling.format == "llama3":
            self._start, self._mode = self._pos, "json_header"  # the whitespace before it is the answer's too
        elif self.calling.format in ("mistral", "mistral_args"):
            self._pos, self._mode = call_at + len(MISTRAL_CALLS), "mistral"
        else:
            self._pos, self._mode = call_at + len(HERMES_OPEN), "block"
        return True

    def _m_block(self, finished: bool) -> bool:
        """After `<tool_call>`: a JSON call (Hermes), or `<function=` (Qwen3-Coder)."""
        if self.calling.format != "qwen3_coder":
            self._mode = "json_header"
            return True
        m = _XML_HEADER.match(self.text, self._pos)
        if m is None or not m.group(1).strip():
            return self._undecided(finished)
        self._call, self._params = self._open(m.group(1).strip()), 0
        self._pos, self._mode = m.end(), "xml_params"
        return True

    def _undecided(self, finished: bool) -> bool:
        """An opening that does not stream (yet): wait for more, or read the call whole."""
        rest = self.text[self._pos:]
        if finished or HERMES_CLOSE in rest or len(rest) > HEADER_LIMIT or (
                rest.strip() and not _could_open(rest.lstrip(), self.calling.format)):
            return self._hold()
        return False

    def _m_mistral(self, finished: bool) -> bool:
        """After `[TOOL_CALLS]`: a JSON list of calls, or NAME[ARGS]{...}."""
        rest = self.text[self._pos:]
        head = rest.lstrip()
        if head.startswith("["):
            self._pos += len(rest) - len(head) + 1
            self._mode = "json_header"
            return True
        m = _ARGS_HEADER.match(self.text, self._pos)
        if m is not None and MISTRAL_CALLS not in m.group(1) and m.group(1).strip() and self.text[m.end()] == "{":
            self._args_form = True
            return self._stream_arguments(m.group(1).strip(), m.end())
        if finished or MISTRAL_CALLS in rest or (m is not None and MISTRAL_CALLS not in m.group(1)) or (
                len(rest) > HEADER_LIMIT):
            return self._hold()
        return False

    def _stream_arguments(self, name: str, at: int) -> bool:
        """A call whose name is read and whose arguments object starts at `at`: it goes out."""
        self._call = self._open(name)
        self._pos = self._sent = at
        self._span, self._mode = _Span(at), "json_args"
        return True

    def _m_json_header(self, finished: bool) -> bool:
        """A JSON call's opening: its name, then the start of its arguments object."""
        m = _JSON_HEADER.match(self.text, self._pos)
        if m is None:
            return self._undecided(finished)
        try:
            name = json.loads(m.group(1))
        except ValueError:
            name = ""
        if not name or self.text[m.end()] != "{":  # arguments that are not an object: read whole
            return self._hold()
        self._args_form = False
        return self._stream_arguments(name, m.end())

    def _m_json_args(self, finished: bool) -> bool:
        end = self._span.feed(self.text)
        upto = len(self.text) if end is None else end
        self._arguments(self._call, self.text[self._sent:upto])
        self._sent = upto
        if end is None:
            if finished:
                self._mode = "done"  # cut short: the arguments as written
            return False
        self._pos = end
        self._ended(self._call)
        if self._args_form:
            self._mode = "content"
        else:
            self._span, self._mode = _Span(end, depth=1), "json_rest"
        return True

    def _m_json_rest(self, finished: bool) -> bool:
        """The rest of the call's object, past its arguments."""
        end = self._span.feed(self.text)
        if end is None:
            if finished:
                self._mode = "done"
            return False
        self._pos, self._mode = end, "after_object"
        return True

    def _m_after_object(self, finished: bool) -> bool:
        """Past a call: the end of its block, or the next call of a list."""
        fmt, text = self.calling.format, self.text
        if fmt in ("hermes", "qwen3_coder"):
            at = text.find(HERMES_CLOSE, self._pos)
            if at < 0:
                self._mode = "done" if finished else self._mode
                return False
            self._pos, self._mode = at + len(HERMES_CLOSE), "content"
            return True
        at = self._pos
        while at < len(text) and text[at] in (" \t\r\n;" if fmt == "llama3" else " \t\r\n"):
            at += 1
        if at == len(text):
            self._mode = "done" if finished else self._mode
            return False
        if fmt == "llama3":
            self._pos, self._start, self._mode = at, at, "json_header" if text[at] == "{" else "content"
        elif text[at] == ",":
            self._pos, self._start, self._mode = at + 1, at + 1, "json_header"
        else:
            self._pos, self._mode = at + (text[at] == "]"), "content"
        return True

    def _m_held_block(self, finished: bool) -> bool:
        """A <tool_call> block read whole once it closes; content where it is no call."""
        at = self.text.find(HERMES_CLOSE, self._pos)
        if at < 0 and not finished:
            return False
        end = len(self.text) if at < 0 else at + len(HERMES_CLOSE)
        body = self.text[self._start + len(HERMES_OPEN):end if at < 0 else at]
        call = (read_xml_call(body, self.calling.schemas or {}) if self.calling.format == "qwen3_coder"
                else read_call(body, "arguments"))
        return self._read_whole(call, end)

    def _m_held_mistral(self, finished: bool) -> bool:
        """NAME[ARGS] whose arguments are not an object (or nothing readable after the marker):
        read whole at the next marker or the answer's end."""
        nxt = self.text.find(MISTRAL_CALLS, self._pos)
        if nxt < 0 and not finished:
            return False
        end = len(self.text) if nxt < 0 else nxt
        name, sep, args = self.text[self._pos:end].partition(MISTRAL_ARGS)
        try:
            call = call_of({"name": name.strip(), "arguments": json.loads(args)}, "arguments") if sep else None
        except ValueError:
            call = None
        return self._read_whole(call, end)

    def _read_whole(self, call: ToolCall | None, end: int) -> bool:
        """A held call that ends at `end`: out at once, or (None: it is no call) its text as content."""
        if call is None:
            self._content(self.text[self._start:end])
        else:
            self._whole(call)
        self._pos, self._mode = end, "content"
        return True

    def _m_held_object(self, finished: bool) -> bool:
        """A JSON call read whole once its object closes (Llama 3.1's, an item of Mistral's list);
        where it is no call, it and the rest of the answer are content."""
        rest = self.text[self._pos:]
        at = self._pos + len(rest) - len(rest.lstrip())
        if at == len(self.text) or self.text[at] != "{":
            return self._not_a_call() if finished or at < len(self.text) else False
        if self._span is None:
            self._span = _Span(at)
        end = self._span.feed(self.text)
        if end is None and not finished:
            return False
        call = read_call(self.text[at:end], "parameters")
        if call is None:
            return self._not_a_call()
        self._whole(call)
        self._span, self._pos, self._mode = None, end or len(self.text), "after_object"
        return True

    def _not_a_call(self) -> bool:
        """What was taken for a call is none: it (from its marker) and all that follows are content."""
        self._pos, self._mode = self._start, "plain"
        return True

    def _m_plain(self, finished: bool) -> bool:
        self._content(self.text[self._pos:])
        self._pos = len(self.text)
        return False

    def _m_xml_params(self, finished: bool) -> bool:
        """Qwen3-Coder: the open call's next parameter, or the end of its function."""
        text, pos = self.text, self._pos
        m = _PARAMETER.search(text, pos)
        ends = [a for a in (text.find("</function>", pos), text.find(HERMES_CLOSE, pos)) if a >= 0]
        close = min(ends) if ends else -1
        if m is not None and (close < 0 or m.start() < close):
            key = m.group(1).strip()
            self._kind = ((self.calling.schemas or {}).get(self._call.name, {}).get(key) or {}).get("type")
            self._arguments(self._call, ("{" if self._params == 0 else ", ") + json.dumps(key, ensure_ascii=False) + ": ")
            self._params += 1
            self._pos = self._sent = m.end()
            self._quoted, self._mode = False, "xml_string" if self._kind == "string" else "xml_value"
            return True
        if close < 0 and not finished:
            return False
        self._arguments(self._call, "}" if self._params else "{}")
        self._ended(self._call)
        self._pos = len(text) if close < 0 else close + len("</function>") * text.startswith("</function>", close)
        self._mode = "after_object"
        return True

    def _value_end(self, finished: bool) -> tuple[int, int] | None:
        """Where the open parameter's value ends, and where what follows it starts (None: not yet)."""
        since = max(self._pos, self._sent - _LONGEST_END)  # what went out holds no end tag
        found = [(at, tag) for tag in _PARAMETER_ENDS if (at := self.text.find(tag, since)) >= 0]
        if not found:
            return (len(self.text), len(self.text)) if finished else None
        at, tag = min(found)
        return at, at + len(tag) if tag == "</parameter>" else at

    def _m_xml_value(self, finished: bool) -> bool:
        """A parameter's value that is not a string: as JSON once it has ended."""
        ends = self._value_end(finished)
        if ends is None:
            return False
        raw = strip_newline(self.text[self._pos:ends[0]])
        self._arguments(self._call, json.dumps(typed_value(raw, self._kind), ensure_ascii=False))
        self._pos, self._mode = ends[1], "xml_params"
        return True

    def _m_xml_string(self, finished: bool) -> bool:
        """A string parameter, escaped as JSON as it is written, less one newline at either end."""
        ends = self._value_end(finished)
        if ends is None and len(self.text) == self._pos:
            return False  # its first character tells whether a newline is left out
        start = self._pos + self.text.startswith("\n", self._pos)
        frm = max(self._sent, start)
        if ends is None:
            upto = _held_tail(self.text, frm)
        else:
            upto = ends[0] - (ends[0] > frm and self.text[ends[0] - 1] == "\n")
        piece = json.dumps(self.text[frm:max(frm, upto)], ensure_ascii=False)[1:-1]
        self._arguments(self._call, ("" if self._quoted else '"') + piece + ('"' if ends is not None else ""))
        self._quoted, self._sent = True, max(frm, upto)
        if ends is None:
            return False
        self._pos, self._mode = ends[1], "xml_params"
        return True


def _held_tail(text: str, start: int) -> int:
    """How far a string parameter's text may go out: short of a newline at its end (the one left
    out before </parameter>) and of what may be the start of the tag that ends it."""
    end = len(text)
    at = text.rfind("<", start)
    if at >= 0 and any(tag.startswith(text[at:]) for tag in _PARAMETER_ENDS):
        end = at
    if end > start and text[end - 1] == "\n":
        end -= 1
    return max(start, end)


def _could_open(rest: str, fmt: str) -> bool:
    """Whether text after a marker may still become an opening that streams."""
    if fmt == "qwen3_coder":
        return rest.startswith("<function=") or "<function=".startswith(rest)
    return rest.startswith("{")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def read_calls(answer: str, calling: ToolCalling) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a whole answer, the forced opening included: the text outside the calls
    (None where only whitespace is left), and the calls; `answer` as it is where it holds none, or
    a call whose arguments are not JSON (streamed, such a call went out before that was known)."""
    read = read_whole(answer, calling)
    return (read.content or None, read.made) if read.made else (answer, [])


def read_whole(answer: str, calling: ToolCalling) -> Read:
    """A whole answer as read_calls reads it: `content` the text outside the calls, stripped,
    `made` the calls, `written` the texts between them and the calls in the order written (an
    API that lists them as items keeps that order); no calls where read_calls finds none."""
    read = CallStream(dataclasses.replace(calling, forced="")).add(answer, finished=True)
    if not read.made or not all(_is_json(call.arguments) for call in read.made):
        return Read([answer] if answer else [], written=[answer.strip()] if answer.strip() else [])
    written: list[Union[str, ToolCall]] = []
    calls, text = iter(read.made), ""
    for part in read.parts:
        if isinstance(part, str):
            text += part
        elif part.call is not None:
            written += [text.strip(), next(calls)] if text.strip() else [next(calls)]
            text = ""
    written += [text.strip()] if text.strip() else []
    content = read.content.strip()
    return Read([content] if content else [], ended=read.made, made=read.made, written=written)
