"""Output constrained to one JSON object (OpenAI's response_format json_object).

A sequence's text is kept a prefix of one JSON object: each token is chosen among those whose
text keeps it so, and once the object closes only an end of text may follow. The check is a
pushdown automaton over characters; a state is an immutable tuple, so a row of a verify step
holds the state after its draft prefix without copying anything.

Token texts are the tokenizer's plain pieces (Tokenizer.plain_texts). A piece without text of
its own (a byte of a character several tokens long, a control token) may only come inside a
string, where any character may; an end-of-text token only once the object has closed.
Whitespace is bounded (MAX_WHITESPACE in a row between values, MAX_LEADING_WHITESPACE before
the object): a model that cannot decide would otherwise write it until max_tokens.

The sampler picks the token it would pick unconstrained where that token is allowed, else the
first allowed one in its own order of preference (engine/sampler.py), so the choice at a
position depends on the logits, the sample's noise and the text before it only: drafting
changes nothing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Sequence

MAX_WHITESPACE = 32
MAX_LEADING_WHITESPACE = 4  # before the object: a piece's own space or a newline, not a page of them
_WS = " \t\n\r"
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_ESCAPES = '"\\/bfnrt'
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}

# (containers open, innermost last: '{' or '['; mode; detail; whitespace in a row)
State = tuple[str, str, str, int]
START: State = ("", "start", "", 0)
# The state after a draft prefix that broke the object: that row is never kept (its draft is
# rejected where it broke), so any token may come.
ANY: State = ("", "any", "", 0)


def feed(state: State | None, text: str) -> State | None:
    """The state after `text`, or None where `text` cannot continue a JSON object from `state`."""
    for ch in text:
        if state is None:
            return None
        state = _step(state, ch)
    return state


def complete(state: State | None) -> bool:
    return state is not None and state[1] == "done"


def _step(state: State, ch: str) -> State | None:
    stack, mode, detail, ws = state
    if mode == "str":
        if ch == '"':
            return (stack, "colon", "", 0) if detail == "key" else _after_value(stack)
        if ch == "\\":
            return (stack, "esc", detail, 0)
        return None if ord(ch) < 0x20 else state
    if mode == "esc":
        if ch == "u":
            return (stack, "uni", detail + ":4", 0)
        return (stack, "str", detail, 0) if ch in _ESCAPES else None
    if mode == "uni":
        kind, left = detail.split(":")
        if ch not in _HEX:
            return None
        return (stack, "str", kind, 0) if left == "1" else (stack, "uni", f"{kind}:{int(left) - 1}", 0)
    if mode == "num":
        nxt = _number(detail, ch)
        if nxt is not None:
            return (stack, "num", nxt, 0)
        if detail not in ("zero", "int", "frac", "exp"):
            return None
        after = _after_value(stack)
        return _step(after, ch)
    if mode == "lit":
        if not detail.startswith(ch):
            return None
        return _after_value(stack) if len(detail) == 1 else (stack, "lit", detail[1:], 0)
    if ch in _WS:
        if mode == "done" or ws >= (MAX_LEADING_WHITESPACE if mode == "start" else MAX_WHITESPACE):
            return None
        return (stack, mode, detail, ws + 1)
    return _structural(stack, mode, ch)


def _structural(stack: str, mode: str, ch: str) -> State | None:
    """A character outside strings, numbers and literals (whitespace handled)."""
    if mode == "start":
        return (stack + "{", "key_or_end", "", 0) if ch == "{" else None
    if mode in ("key_or_end", "key"):
        if ch == '"':
            return (stack, "str", "key", 0)
        if ch == "}" and mode == "key_or_end":
            return _after_value(stack[:-1])
        return None
    if mode == "colon":
        return (stack, "value", "", 0) if ch == ":" else None
    if mode in ("value", "value_or_end"):
        if ch == "]" and mode == "value_or_end":
            return _after_value(stack[:-1])
        return _value_start(stack, ch)
    if mode == "after":
        top = stack[-1]
        if ch == ",":
            return (stack, "key" if top == "{" else "value", "", 0)
        if (ch == "}" and top == "{") or (ch == "]" and top == "["):
            return _after_value(stack[:-1])
        return None
    return None  # done: nothing but the end of text


def _value_start(stack: str, ch: str) -> State | None:
    if ch == "{":
        return (stack + "{", "key_or_end", "", 0)
    if ch == "[":
        return (stack + "[", "value_or_end", "", 0)
    if ch == '"':
        return (stack, "str", "value", 0)
    if ch in _LITERALS:
        return (stack, "lit", _LITERALS[ch], 0)
    if ch == "-":
        return (stack, "num", "minus", 0)
    if ch in _DIGITS:
        return (stack, "num", "zero" if ch == "0" else "int", 0)
    return None


def _number(phase: str, ch: str) -> str | None:
    """The number's next phase after `ch`, or None where `ch` does not continue it."""
    digit = ch in _DIGITS
    if phase == "minus":
        return ("zero" if ch == "0" else "int") if digit else None
    if phase in ("zero", "int"):
        if digit:
            return None if phase == "zero" else "int"
        return "dot" if ch == "." else "e" if ch in "eE" else None
    if phase in ("dot", "frac"):
        if digit:
            return "frac"
        return "e" if ch in "eE" and phase == "frac" else None
    if phase == "e":
        return "exp" if digit else "esign" if ch in "+-" else None
    if phase in ("esign", "exp"):
        return "exp" if digit else None
    return None


def _after_value(stack: str) -> State:
    return (stack, "after", "", 0) if stack else ("", "done", "", 0)


class _AnyObject:
    """This module's automaton, as a machine: what JsonTokens calls on a state's machine (a
    schema's states carry theirs, engine/json_schema.py; this one's plain tuples do not)."""

    feed = staticmethod(feed)
    complete = staticmethod(complete)

    @staticmethod
    def in_string(state: State) -> bool:
        return state[1] == "str"

    @staticmethod
    def in_text(state: State) -> bool:
        return state[1] in ("str", "esc", "uni")


_ANY_OBJECT = _AnyObject()


class ThinkFirst(NamedTuple):
    """A thinking model's constrained answer: its reasoning first, free, then the constraint from
    `then` (its start state). The tags are single tokens, read by id (a tokenizer may give them no
    plain text). `inside`: the block is open, and any token but an end of text may come until
    `close_id`; else the block's opening (`open_id`) or the constraint's first token."""

    inside: bool
    open_id: int | None
    close_id: int
    then: object


@dataclass(frozen=True)
class JsonTokens:
    """What each token does to a constrained text (one JSON object, or JSON a schema accepts): the
    tokenizer's plain texts and its end ids."""

    texts: Sequence[str | None]
    eos_ids: frozenset[int]

    @functools.cached_property
    def first_chars(self) -> tuple[str, ...]:
        """Every character a token's text starts with, in order."""
        return tuple(sorted({t[0] for t in self.texts if t}))

    def can_begin(self, state) -> bool:
        """Whether some token can be written from `state`, by its first character (a cheap test
        for a constraint this vocabulary cannot begin to write: one whose text needs characters
        no token has)."""
        machine = self.machine(state)
        return machine.complete(state) or any(machine.feed(state, ch) is not None for ch in self.first_chars)

    @property
    def end_id(self) -> int | None:
        """The end of text a row takes where its state allows no token (the smallest end id)."""
        return min(self.eos_ids) if self.eos_ids else None

    @staticmethod
    def machine(state):
        """The automaton a state belongs to: a schema's, or this module's."""
        return getattr(state, "machine", _ANY_OBJECT)

    def allows(self, state, token: int) -> bool:
        """Whether `token` may come after `state`."""
        if state is ANY:
            return True
        if type(state) is ThinkFirst:
            if state.inside:
                return token not in self.eos_ids
            return token == state.open_id or self.allows(state.then, token)
        machine = self.machine(state)
        if token in self.eos_ids:
            return machine.complete(state)
        text = self.texts[token] if 0 <= token < len(self.texts) else None
        if text is None:
            return machine.in_string(state)
        return machine.feed(state, text) is not None

    def in_text(self, state) -> bool:
        """Whether the state is inside a string (most tokens may come: a mask walks nearly all)."""
        if type(state) is ThinkFirst:
            return state.inside or self.in_text(state.then)
        return state is not ANY and self.machine(state).in_text(state)

    def after(self, state, token: int):
        """The state once `token` is written (an end of text, or a piece without text of its own
        inside a string, leaves it as it was); ANY where the token breaks the constraint."""
        if type(state) is ThinkFirst:
            if state.inside:
                return state.then if token == state.close_id else state
            return state._replace(inside=True) if token == state.open_id else self.after(state.then, token)
        if state is ANY or token in self.eos_ids:
            return state
        machine = self.machine(state)
        text = self.texts[token] if 0 <= token < len(self.texts) else None
        if text is None:
            return state if machine.in_string(state) else ANY
        return machine.feed(state, text) or ANY
