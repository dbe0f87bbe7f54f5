"""JSON schema's `pattern` (and the string formats written as patterns) as an automaton over a
string's characters, for engine/json_schema.py; and a whole answer held to a pattern (PatternText).

A pattern is a regular expression in the subset every engine reads alike: literals and escapes
(\\d \\w \\s and their negations, \\t \\n \\r \\f \\v \\0 \\xHH \\uHHHH, escaped punctuation),
classes ([a-z0-9_], [^...]), `.` (any character but a line end), groups ((...), (?:...)),
alternation, and the quantifiers * + ? {n} {n,} {n,m} (lazy or not: the same strings). As JSON
schema says, a pattern matches anywhere in the string unless it is anchored: ^ at its start, $ at
its end (anywhere else, a 400). Backreferences, lookarounds, word boundaries and flags are refused
(ValueError), never silently dropped.

It compiles to a nondeterministic automaton (Thompson's construction); a state is the frozenset
of its positions, kept only where the end can still be reached, so every state a string reaches
can still be finished.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_REPEAT = 64  # the largest count a {n,m} may give (each copy is part of the automaton)
MAX_POSITIONS = 16384  # an automaton larger than this is refused
# Nor one whose positions' closures over empty edges hold more than this in all: nested optional
# repeats ((.{0,64}){0,64}) make each closure hold most positions, and building and stepping such an
# automaton takes seconds of the thread every request's prompt waits on.
MAX_CLOSURES = 1 << 19
MAX_STEPS_KEPT = 1 << 16  # (state, character) -> next state, remembered: a mask's walk repeats most steps

# A set of characters: (negated, ((first, last) code point ranges, ...)).
CharSet = tuple[bool, tuple[tuple[int, int], ...]]

_DIGIT = ((48, 57),)
_WORD = ((48, 57), (65, 90), (95, 95), (97, 122))
_SPACE = ((9, 13), (32, 32), (160, 160), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F),
          (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF))
_LINE_ENDS = ((10, 10), (13, 13), (0x2028, 0x2029))
_CLASS_ESCAPES = {"d": (False, _DIGIT), "D": (True, _DIGIT), "w": (False, _WORD), "W": (True, _WORD),
                  "s": (False, _SPACE), "S": (True, _SPACE)}
_CONTROL_ESCAPES = {"t": 9, "n": 10, "r": 13, "f": 12, "v": 11, "0": 0}
ANY_CHAR: CharSet = (True, ())
_DOT: CharSet = (True, _LINE_ENDS)

# The formats a string's `format` holds it to, as patterns (stricter than their RFCs where that
# keeps every string valid: no February 29th, no year 0); other formats are annotations.
_DAY = "((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
_TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
_YEAR = "(000[1-9]|00[1-9][0-9]|0[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9])"  # no year 0: Python's dates start at 1
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
FORMATS = {
    "date": f"^{_YEAR}-{_DAY}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_YEAR}-{_DAY}[Tt]{_TIME}$",
    "uuid": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "ipv4": f"^({_OCTET}\\.){{3}}{_OCTET}$",
    "email": "^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}$",
}


def in_set(chars: CharSet, ch: str) -> bool:
    code = ord(ch)
    return chars[0] != any(first <= code <= last for first, last in chars[1])


@dataclass(frozen=True, eq=False)
class Pattern:
    """The compiled automaton: per position its character edges and its closure over empty edges."""

    source: str
    edges: tuple[tuple[tuple[CharSet, int], ...], ...]
    closures: tuple[frozenset[int], ...]
    live: frozenset[int]  # positions from which the end can be reached
    end: int
    start: frozenset[int]
    _steps: dict = field(default_factory=dict, compare=False, repr=False)

    def step(self, states: frozenset[int], ch: str) -> frozenset[int] | None:
        """The positions after `ch`; None where the string can no longer match."""
        key = (states, ch)
        if key in self._steps:
            return self._steps[key]
        if len(self._steps) >= MAX_STEPS_KEPT:
            self._steps.clear()
        after = self._steps[key] = self._step(states, ch)
        return after

    def _step(self, states: frozenset[int], ch: str) -> frozenset[int] | None:
        after: set[int] = set()
        for position in states:
            for chars, target in self.edges[position]:
                if in_set(chars, ch):
                    after |= self.closures[target]
        after &= self.live
        return frozenset(after) if after else None

    def accepts(self, states: frozenset[int]) -> bool:
        return self.end in states

    def feed(self, states: frozenset[int], text: str) -> frozenset[int] | None:
        """The positions after `text`, a character at a time; None where it can no longer match."""
        for ch in text:
            states = self.step(states, ch)
            if states is None:
                return None
        return states

    def matches(self, text: str) -> bool:
        """Whether the whole of `text` is a string the pattern takes."""
        states = self.feed(self.start, text)
        return states is not None and self.accepts(states)


def compile_pattern(source: str) -> Pattern:
    """ValueError naming what it cannot read (the module's docstring lists what it can)."""
    if not isinstance(source, str):
        raise ValueError("pattern must be a string")
    body = source
    anchored_start, anchored_end = body.startswith("^"), body.endswith("$") and not _escaped_at(body, len(body) - 1)
    body = body[1 if anchored_start else 0:len(body) - 1 if anchored_end else len(body)]
    parser = _Parser(body)
    tree = parser.alternation()
    if parser.at < len(body):
        raise ValueError(f"pattern {source!r}: unbalanced ')' at {parser.at}")
    anywhere = ("rep", ("set", ANY_CHAR), 0, None)
    tree = ("cat", [*([] if anchored_start else [anywhere]), tree, *([] if anchored_end else [anywhere])])
    builder = _Builder()
    entry, end = builder.build(tree)
    return builder.pattern(source, entry, end)


def _escaped_at(text: str, index: int) -> bool:
    """Whether the character at `index` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


class _Parser:
    """Recursive descent over the pattern: trees of ("set", CharSet), ("cat", [...]), ("alt", [...])
    and ("rep", tree, min, max or None)."""

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"pattern: {what} at {self.at} cannot be enforced here (see engine/json_pattern.py)")

    def _peek(self) -> str | None:
        return self.text[self.at] if self.at < len(self.text) else None

    def alternation(self) -> tuple:
        options = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else ("alt", options)

    def _sequence(self) -> tuple:
        items = []
        while self._peek() not in (None, "|", ")"):
            items.append(self._quantified(self._atom()))
        return ("cat", items)

    def _atom(self) -> tuple:
        ch = self.text[self.at]
        self.at += 1
        if ch == "(":
            if self.text.startswith("?:", self.at):
                self.at += 2
            elif self._peek() == "?":
                raise self._fail("a lookaround or named group")
            inner = self.alternation()
            if self._peek() != ")":
                raise self._fail("an unclosed group")
            self.at += 1
            return inner
        if ch == "[":
            return ("set", self._class())
        if ch == ".":
            return ("set", _DOT)
        if ch == "\\":
            return ("set", self._escape(in_class=False))
        if ch in "^$":
            raise self._fail(f"an anchor {ch!r} inside the pattern")
        if ch in "*+?" or (ch == "{" and self._is_count(self.at)):
            raise self._fail(f"a quantifier {ch!r} with nothing to repeat")
        if ch == "{" and re.match(r",\d+}", self.text[self.at:]):
            raise self._fail("a count without a lower bound ({,n}: a literal to some engines, {0,n} to others)")
        return ("set", _single(ord(ch)))

    def _is_count(self, start: int) -> bool:
        """Whether the text from `start` (just after a '{') is a count ({n}, {n,}, {n,m}); else the
        '{' is a literal."""
        end = self.text.find("}", start)
        if end < 0:
            return False
        first, _, second = self.text[start:end].partition(",")
        return first.isdigit() and (second == "" or second.isdigit())

    def _quantified(self, tree: tuple) -> tuple:
        while True:
            ch = self._peek()
            if ch in ("*", "+", "?"):
                self.at += 1
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
            elif ch == "{" and self._is_count(self.at + 1):
                end = self.text.index("}", self.at)
                first, comma, second = self.text[self.at + 1:end].partition(",")
                low, high = int(first), (int(second) if second else None) if comma else int(first)
                self.at = end + 1
                if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
                    raise self._fail(f"a count past {MAX_REPEAT} or out of order")
            else:
                return tree
            if self._peek() == "?":  # lazy: the same strings
                self.at += 1
            tree = ("rep", tree, low, high)

    def _class(self) -> CharSet:
        negated = self._peek() == "^"
        if negated:
            self.at += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            ch = self._peek()
            if ch is None:
                raise self._fail("an unclosed class")
            if ch == "]" and not first:
                self.at += 1
                return (negated, tuple(ranges))
            first = False
            low = self._class_char()
            if isinstance(low, tuple):
                ranges += low
                continue
            if self._peek() == "-" and self.at + 1 < len(self.text) and self.text[self.at + 1] != "]":
                self.at += 1
                high = self._class_char()
                if isinstance(high, tuple) or high < low:
                    raise self._fail("a range out of order")
                ranges.append((low, high))
            else:
                ranges.append((low, low))

    def _class_char(self) -> int | tuple:
        """A class's next character's code, or a class escape's ranges (\\d, \\w, \\s)."""
        ch = self.text[self.at]
        self.at += 1
        if ch != "\\":
            return ord(ch)
        chars = self._escape(in_class=True)
        if chars[0]:
            raise self._fail("a negated escape (\\D, \\W, \\S) inside a class")
        return chars[1] if len(chars[1]) != 1 or chars[1][0][0] != chars[1][0][1] else chars[1][0][0]

    def _escape(self, in_class: bool) -> CharSet:
        if self.at >= len(self.text):
            raise self._fail("a trailing backslash")
        ch = self.text[self.at]
        self.at += 1
        if ch in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[ch]
        if ch in _CONTROL_ESCAPES:
            return _single(_CONTROL_ESCAPES[ch])
        if ch in "xu":
            size = 2 if ch == "x" else 4
            digits = self.text[self.at:self.at + size]
            if len(digits) != size or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self._fail(f"a \\{ch} escape without {size} hex digits")
            self.at += size
            return _single(int(digits, 16))
        if ch == "b" and in_class:
            return _single(8)
        if ch.isalnum():
            raise self._fail(f"the escape \\{ch}")
        return _single(ord(ch))


def _single(code: int) -> CharSet:
    return (False, ((code, code),))


class _Builder:
    """Thompson's construction: positions with character edges and empty edges."""

    def __init__(self) -> None:
        self.chars: list[list[tuple[CharSet, int]]] = []
        self.empty: list[list[int]] = []

    def _new(self) -> int:
        if len(self.chars) >= MAX_POSITIONS:
            raise ValueError(f"pattern: its automaton would pass {MAX_POSITIONS} positions")
        self.chars.append([])
        self.empty.append([])
        return len(self.chars) - 1

    def build(self, tree: tuple) -> tuple[int, int]:
        """(entry, exit) positions of the tree's fragment."""
        kind = tree[0]
        if kind == "set":
            entry, exit_ = self._new(), self._new()
            self.chars[entry].append((tree[1], exit_))
            return entry, exit_
        if kind == "cat":
            entry = exit_ = self._new()
            for item in tree[1]:
                first, last = self.build(item)
                self.empty[exit_].append(first)
                exit_ = last
            return entry, exit_
        if kind == "alt":
            entry, exit_ = self._new(), self._new()
            for option in tree[1]:
                first, last = self.build(option)
                self.empty[entry].append(first)
                self.empty[last].append(exit_)
            return entry, exit_
        _, inner, low, high = tree
        parts = [inner] * low + ([("rep*", inner)] if high is None else [("opt", inner)] * (high - low))
        entry = exit_ = self._new()
        for part in parts:
            if part[0] in ("rep*", "opt"):
                first, last = self.build(part[1])
                after = self._new()
                self.empty[exit_] += [first, after]
                self.empty[last].append(first if part[0] == "rep*" else after)
                if part[0] == "rep*":
                    self.empty[last].append(after)
                exit_ = after
            else:
                first, last = self.build(part)
                self.empty[exit_].append(first)
                exit_ = last
        return entry, exit_

    def pattern(self, source: str, entry: int, end: int) -> Pattern:
        closures, held = [], 0
        for p in range(len(self.chars)):
            closures.append(self._closure(p))
            held += len(closures[-1])
            if held > MAX_CLOSURES:
                raise ValueError(f"pattern {source!r} is too complex to hold: its optional repeats nest too deep")
        closures = tuple(closures)
        reaching: dict[int, set[int]] = {}
        for p in range(len(self.chars)):
            for target in [t for _, t in self.chars[p]] + self.empty[p]:
                reaching.setdefault(target, set()).add(p)
        live, todo = {end}, [end]
        while todo:
            for p in reaching.get(todo.pop(), ()):
                if p not in live:
                    live.add(p)
                    todo.append(p)
        start = closures[entry] & live
        if not start:
            raise ValueError(f"pattern {source!r} matches no string")
        return Pattern(source, tuple(tuple(e) for e in self.chars), closures, frozenset(live), end, frozenset(start))

    def _closure(self, position: int) -> frozenset[int]:
        seen, todo = {position}, [position]
        while todo:
            for target in self.empty[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return frozenset(seen)


class TextState(NamedTuple):
    machine: "PatternText"
    positions: frozenset[int]


@dataclass(frozen=True, eq=False)
class PatternText:
    """A whole answer held to a pattern (vLLM's guided regex and choice): the machine JsonTokens
    reads a constrained row's state through (feed, complete, in_string, in_text), as a compiled
    JSON schema's. The pattern matches the whole answer, anchored or not; the answer may end (its
    end of text) only where it matches, and ends there once nothing else may follow."""

    pattern: Pattern

    @classmethod
    def of(cls, source: str) -> "PatternText":
        body = source[1:] if source.startswith("^") else source
        body = body[:-1] if body.endswith("$") and not _escaped_at(body, len(body) - 1) else body
        return cls(compile_pattern(f"^(?:{body})$"))

    @property
    def start(self) -> TextState:
        return TextState(self, self.pattern.start)

    def feed(self, state: TextState, text: str) -> TextState | None:
        positions = self.pattern.feed(state.positions, text)
        return None if positions is None else TextState(self, positions)

    def complete(self, state: TextState) -> bool:
        return self.pattern.accepts(state.positions)

    def in_string(self, state: TextState) -> bool:
        return False  # a piece without text of its own could be any character: the pattern must see each

    def in_text(self, state: TextState) -> bool:
        return True
