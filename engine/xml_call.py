"""A forced tool call in Qwen3-Coder's format held to its functions' parameters, as the JSON call
formats are held by engine/json_schema.py (tool_choice required, or a named function):

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    VALUE
    </parameter>
    ...
    </function>
    </tool_call>

NAME is one of the functions; each KEY one of its parameters, at most once, its required ones all
before </function>; a string parameter's VALUE is raw text (any character, but not the tags that
would end it early as api/call_stream.py reads it; where its enum, lengths or pattern hold it, a
newline, the text, a newline, and no "<"), any other's is JSON its schema accepts (its compiled automaton
steps inside). Whitespace between tags is bounded. The call ends at
</tool_call>: then only the end of the text may follow. The machine reads text as JsonTokens reads
a schema's (feed, complete, in_string, in_text on the state's machine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from engine.json_pattern import Pattern
from engine.json_schema import JsonSchema

PARAMETER, PARAMETER_END, FUNCTION_END, CALL_END = "<parameter=", "</parameter>", "</function>", "</tool_call>"
# The tags that end a string value where api/call_stream.py reads one: it may hold none but its own.
_VALUE_ENDS = (PARAMETER_END, PARAMETER, FUNCTION_END, CALL_END)
MAX_GAP = 4  # whitespace characters between two tags
_WS = " \t\r\n"


@dataclass(frozen=True)
class RawText:
    """A string parameter's value held as raw text: one newline, the text (one of `values`, of
    `low` to `high` characters, matching `pattern`), one newline, then </parameter>: the reader
    strips one newline at either end, so the text is the value. It holds no "<" (a tag could start
    there): a pattern must be one that text without "<" can always go on to match."""

    values: frozenset[str] | None = None
    low: int = 0
    high: int | None = None
    pattern: Pattern | None = None


@dataclass(frozen=True)
class XmlFunction:
    """A function's parameters: name -> its value's compiled schema, None (a string, raw text, free),
    or RawText (a string whose text is held)."""

    params: dict[str, JsonSchema | RawText | None]
    required: frozenset[str] = frozenset()


class XmlState(NamedTuple):
    machine: "XmlCall"
    phase: str  # name, gap, tag, key, string, raw, json, after_json, end, done
    name: str = ""  # the function's name (so far, in phase name)
    seen: frozenset[str] = frozenset()  # the parameters written
    text: str = ""  # the tag, key or string's possible end tag so far; before a tag, the whitespace
    inner: object = None  # a JSON value's state, in phase json; the RawText, in phase raw
    match: frozenset[int] | None = None  # phase raw: a held pattern's states after the text (a last newline left out)


@dataclass(eq=False)
class XmlCall:
    """The automaton of one call to one of `functions`, from just after `<function=` on."""

    functions: dict[str, XmlFunction]
    opening: str = ""  # text already written of the name onwards (a named tool_choice's)
    _start: XmlState | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        state = self.feed(XmlState(self, "name"), self.opening)
        if state is None:
            raise ValueError(f"{self.opening!r} does not start a call of these functions")
        self._start = state

    @property
    def start(self) -> XmlState:
        return self._start

    def feed(self, state: XmlState, text: str) -> XmlState | None:
        for ch in text:
            state = self._step(state, ch)
            if state is None:
                return None
        return state

    def complete(self, state: XmlState) -> bool:
        return state.phase == "done"

    def in_string(self, state: XmlState) -> bool:
        """A piece without text of its own (a byte of a longer character) may come in a string
        value, or in a JSON value's free string."""
        if state.phase == "json":
            return state.inner.machine.in_string(state.inner)
        return state.phase == "string" and not state.text

    def in_text(self, state: XmlState) -> bool:
        if state.phase == "raw":
            return state.inner.values is None and state.inner.pattern is None
        return state.phase == "string" or (state.phase == "json" and state.inner.machine.in_text(state.inner))

    # ------------------------------------------------------------------ one character
    def _step(self, s: XmlState, ch: str) -> XmlState | None:
        return getattr(self, "_" + s.phase)(s, ch)

    def _name(self, s: XmlState, ch: str) -> XmlState | None:
        if ch == ">":
            return s._replace(phase="gap", text="") if s.name in self.functions else None
        grown = s.name + ch
        return s._replace(name=grown) if any(n.startswith(grown) for n in self.functions) else None

    def _gap(self, s: XmlState, ch: str) -> XmlState | None:
        if ch in _WS:
            return s._replace(text=s.text + ch) if len(s.text) < MAX_GAP else None
        return self._tag(s._replace(phase="tag", text=""), ch) if ch == "<" else None

    def _tag(self, s: XmlState, ch: str) -> XmlState | None:
        grown = s.text + ch
        if grown == PARAMETER:
            return s._replace(phase="key", text="") if self._keys_left(s) else None
        may_end = self.functions[s.name].required <= s.seen
        if grown == FUNCTION_END:
            return s._replace(phase="end", text="") if may_end else None
        if (PARAMETER.startswith(grown) and self._keys_left(s)) or (FUNCTION_END.startswith(grown) and may_end):
            return s._replace(text=grown)
        return None

    def _keys_left(self, s: XmlState) -> bool:
        return any(k not in s.seen for k in self.functions[s.name].params)

    def _key(self, s: XmlState, ch: str) -> XmlState | None:
        params = self.functions[s.name].params
        if ch == ">":
            if s.text not in params or s.text in s.seen:
                return None
            value = params[s.text]
            seen = s.seen | {s.text}
            if value is None:
                return s._replace(phase="string", seen=seen, text="")
            if isinstance(value, RawText):
                match = None if value.pattern is None else value.pattern.start
                return s._replace(phase="raw", seen=seen, text="", inner=value, match=match)
            return s._replace(phase="json", seen=seen, text="", inner=value.start)
        grown = s.text + ch
        return s._replace(text=grown) if any(k.startswith(grown) and k not in s.seen for k in params) else None

    def _string(self, s: XmlState, ch: str) -> XmlState | None:
        """Raw text up to </parameter>: `text` holds what may be the start of an end tag."""
        grown = s.text + ch
        if grown == PARAMETER_END:
            return s._replace(phase="gap", text="")
        if any(tag.startswith(grown) for tag in _VALUE_ENDS):
            return None if grown in _VALUE_ENDS else s._replace(text=grown)
        return s._replace(text="<" if ch == "<" else "")

    def _raw(self, s: XmlState, ch: str) -> XmlState | None:
        """A held string: `text` is its first newline, the value written so far, and a newline at
        the end that may be the last one (the end tag follows that one) or the value's."""
        held: RawText = s.inner
        if not s.text:
            return s._replace(text=ch) if ch == "\n" else None
        pending = len(s.text) > 1 and s.text.endswith("\n")
        value = s.text[1:-1] if pending else s.text[1:]
        match = s.match
        if ch == "<":
            return s._replace(phase="after_json", text="<") if pending and _ends(held, value, match) else None
        if pending:
            value += "\n"  # the newline before was the value's
            match = _matched(held, match, "\n")
            if not _may_grow(held, value, match):
                return None
        if ch == "\n":
            ok = _ends(held, value, match) or _may_grow(held, value + "\n", _matched(held, match, "\n"))
            return s._replace(text="\n" + value + "\n", match=match) if ok else None
        value += ch
        match = _matched(held, match, ch)
        return s._replace(text="\n" + value, match=match) if _may_grow(held, value, match) else None

    def _json(self, s: XmlState, ch: str) -> XmlState | None:
        inner = s.inner.machine.feed(s.inner, ch)
        if inner is not None:
            return s._replace(inner=inner)
        if not s.inner.machine.complete(s.inner):
            return None
        return self._after_json(s._replace(phase="after_json", text=""), ch)

    def _after_json(self, s: XmlState, ch: str) -> XmlState | None:
        """Past a JSON value: </parameter>."""
        return _then(s, ch, PARAMETER_END, "gap")

    def _end(self, s: XmlState, ch: str) -> XmlState | None:
        """Past </function>: </tool_call>."""
        return _then(s, ch, CALL_END, "done")

    def _done(self, s: XmlState, ch: str) -> XmlState | None:
        return None


def _then(s: XmlState, ch: str, tag: str, phase: str) -> XmlState | None:
    """Bounded whitespace, then `tag` (its text so far in s.text), then `phase`."""
    if not s.text.startswith("<"):
        if ch in _WS:
            return s._replace(text=s.text + ch) if len(s.text) < MAX_GAP else None
        if ch != "<":
            return None
        grown = ch
    else:
        grown = s.text + ch
    if grown == tag:
        return s._replace(phase=phase, text="")
    return s._replace(text=grown) if tag.startswith(grown) else None


def _ends(held: RawText, value: str, match: frozenset[int] | None) -> bool:
    """Whether a held string's text may end as `value` (`match`: its pattern's states after it)."""
    return (held.low <= len(value) and _may_grow(held, value, match) and (held.values is None or value in held.values)
            and (held.pattern is None or held.pattern.accepts(match)))


def _may_grow(held: RawText, value: str, match: frozenset[int] | None) -> bool:
    """Whether `value` can still be (the start of) a held string's text."""
    if held.high is not None and len(value) > held.high:
        return False
    if held.pattern is not None and match is None:
        return False
    return held.values is None or any(v.startswith(value) for v in held.values)


def _matched(held: RawText, match: frozenset[int] | None, ch: str) -> frozenset[int] | None:
    """A held pattern's states after one more character (None: it can no longer match)."""
    return None if held.pattern is None or match is None else held.pattern.step(match, ch)
