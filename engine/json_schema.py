"""Output constrained to JSON that a JSON schema accepts (OpenAI's response_format json_schema,
Ollama's `format` with a schema): engine/json_object.py's way, with the schema's automaton.

compile_schema reads the schema once (ValueError naming what it cannot enforce); the automaton
walks the text a character at a time. A state is a frozenset of alternative parses (anyOf, a
type list, $ref), each a stack of immutable frames, innermost last:

  ("V", node)                          a value of `node` is next
  ("O", node, phase, seen, key)        in an object: k0 (after "{"), k (after ","), ks (in a key,
                                       `key` so far), ":" (after a key), a (after a value); `seen`:
                                       the keys written (their number is the properties' count)
  ("A", node, phase, count)            in an array: v0 (after "["), v (after ","), a (after a value)
  ("S", node, count, escape, match)    in a string: characters so far (where its length is bounded);
                                       1 after a backslash, 10 + n with n hex digits of a \\u escape
                                       left; `match` where it has a pattern: (the pattern's state,
                                       the \\u escape's hex digits so far), else None
  ("N", node, phase, text)             in a number (json_object's phases); `text` so far where the
                                       node has bounds or multipleOf ("" otherwise: fewer states)
  ("L", node, prefix)                  in one of the node's exact texts (enum, const, true, false, null)
  ("D",)                               the value is complete: only the end of the text may follow

What it enforces: type (and type lists), properties with required ones (each key at most once,
in any order), additionalProperties (false, or absent beside properties: no other key; true, a
schema, or absent without properties: any other key), minProperties and maxProperties (once the
missing required keys fill what maxProperties leaves, only they may come), items and prefixItems,
minItems and maxItems, minLength and maxLength, pattern (engine/json_pattern.py; not beside a
length; its string written without \\u escapes, so a pattern that needs a control character other
than \\b \\f \\n \\r \\t can be left unfinished), format date, time, date-time, uuid, ipv4 and
email (as patterns), minimum and maximum and their exclusive forms, and multipleOf a whole number
(such a number is written without an exponent, a multiple's point followed by zeros only, and each
character must leave a value within the bounds, and a multiple, reachable), enum and const (as
their compact JSON texts), anyOf and oneOf (as anyOf), allOf of one schema, $ref into $defs or
definitions or "#" (recursion through objects and arrays included), false. A schema that accepts no
value (false, an empty anyOf, oneOf, enum or type list, or one that needs such a value: a required
property's, a first minItems item's, every option's, or itself again at every level) is refused
where a value of it is needed, and never started where it is optional (that key may not come, the
array ends before that item, the anyOf goes without that option). Annotations (title,
description, default, format, ...) are ignored; any other keyword (uniqueItems,
patternProperties, ...) is refused, never silently dropped, and so are a fractional multipleOf (a
validator's floating point disagrees with its exact multiples) and counts, lengths or bounds that
no value meets, wherever they are (they would be a dead end). Keys are written without escapes.
Whitespace between tokens is bounded as in json_object.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

from engine.json_object import MAX_LEADING_WHITESPACE, MAX_WHITESPACE, _ESCAPES, _HEX, _WS, _number
from engine.json_pattern import FORMATS, Pattern, compile_pattern

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                          "readOnly", "writeOnly", "format", "$defs", "definitions", "strict", "name", "nullable"})
_KEYWORDS = {
    "object": {"type", "properties", "required", "additionalProperties", "minProperties", "maxProperties"},
    "array": {"type", "items", "prefixItems", "minItems", "maxItems"},
    "string": {"type", "minLength", "maxLength", "pattern"},
    "integer": {"type", "multipleOf", *_BOUNDS}, "number": {"type", "multipleOf", *_BOUNDS}, "boolean": {"type"},
    "null": {"type"},
}
_NUMBER_START = "-0123456789"
# Parses kept at once: text that leaves more apart (anyOf branches that never part, nested) is not
# allowed, so that a pathological schema costs a bounded time per character.
_MAX_ALTERNATIVES = 64


@dataclass(eq=False)
class Node:
    """One schema, compiled: `kind` is object, array, string, number, integer, literals, any_of,
    any (every JSON value) or ref."""

    kind: str
    props: dict[str, "Node"] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    extra: "Node | None" = None  # the schema of keys not among props (None: none allowed)
    items: "Node | None" = None
    prefix: tuple["Node", ...] = ()
    min_count: int = 0  # an array's items, a string's characters, an object's properties
    max_count: int | None = None
    texts: frozenset[str] = frozenset()
    options: tuple["Node", ...] = ()
    ref: str = ""
    pattern: Pattern | None = None  # a string's
    # A number's bounds: None where unbounded on that side; `*_open` where the bound itself is excluded.
    low: Fraction | None = None
    high: Fraction | None = None
    low_open: bool = False
    high_open: bool = False
    multiple: int | None = None  # a number's multipleOf (a whole number: its values are integers)
    # Looked up per character, so that a long enum or many properties cost no scan of them:
    prefixes: frozenset[str] = frozenset()  # every prefix of `texts`
    # A prefix -> the names it starts, of the props and the required keys:
    key_prefixes: dict[str, list[str]] = field(default_factory=dict)
    # Keys an object may not have though others may come: their schemas accept no value.
    barred: frozenset[str] = frozenset()
    where: str = ""  # the schema's location, for messages
    why: str = ""  # of a schema that accepts nothing by itself (false, an empty anyOf): what it is

    def __post_init__(self) -> None:
        self.prefixes = frozenset(t[:i] for t in self.texts for i in range(1, len(t) + 1))
        # Its text kept and checked a character at a time (written without an exponent):
        self.bounded = self.low is not None or self.high is not None or self.multiple is not None
        self.key_prefixes = _key_prefixes(self)


def _key_prefixes(node: Node) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name in (*node.props, *(node.required - node.props.keys())):
        for i in range(1, len(name) + 1):
            found.setdefault(name[:i], []).append(name)
    return found


ANY_VALUE = Node("any")


class SchemaState(NamedTuple):
    machine: "JsonSchema"
    alts: frozenset  # of (stack, whitespace in a row)


@dataclass(eq=False)
class JsonSchema:
    """A compiled schema: its automaton's start state, and how text moves it (engine/json_object.py
    JsonTokens calls feed, complete and in_string on the state's machine)."""

    root: Node
    defs: dict[str, Node]
    _leaf_cache: dict[int, tuple[Node, ...]] = field(default_factory=dict, repr=False)
    opening: str = ""  # text already written before the output starts (a forced tool call's opening)
    _start: SchemaState | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        state = SchemaState(self, frozenset({((("V", self.root),), 0)}))
        self._start = self.feed(state, self.opening) if self.opening else state
        if self._start is None:
            raise ValueError(f"{self.opening!r} does not start a value the schema accepts")

    @property
    def start(self) -> SchemaState:
        return self._start

    def after(self, opening: str) -> "JsonSchema":
        """The same schema, for an output that continues `opening` (ValueError if it cannot)."""
        return JsonSchema(self.root, self.defs, self._leaf_cache, self.opening + opening)

    def feed(self, state: SchemaState, text: str) -> SchemaState | None:
        alts = state.alts
        for ch in text:
            alts = frozenset(nxt for alt in alts for nxt in self._step(alt, ch))
            if not alts or len(alts) > _MAX_ALTERNATIVES:
                return None
        return SchemaState(self, alts)

    def complete(self, state: SchemaState) -> bool:
        return any(_ends(stack) for stack, _ in state.alts)

    def in_text(self, state: SchemaState) -> bool:
        """Whether the text is inside a free string: a value's, or a key's where any key may come."""
        return any(_in_text(stack[-1]) for stack, _ in state.alts)

    def in_string(self, state: SchemaState) -> bool:
        """Whether a piece without text of its own (a byte of a longer character) may come: inside a
        free string only (not one with a pattern, which must see each character)."""
        return any(stack[-1][0] == "S" and stack[-1][4] is None for stack, _ in state.alts)

    # ------------------------------------------------------------------ one character
    def _step(self, alt: tuple, ch: str) -> list[tuple]:
        stack, ws = alt
        top = stack[-1]
        kind = top[0]
        if kind == "S":
            return [(s, 0) for s in _string(stack, ch)]
        if kind == "O" and top[2] == "ks":  # a key's characters, whitespace too
            return [(s, 0) for s in self._object(stack, ch)]
        if kind == "N":
            node = top[1]
            phase = _number(top[2], ch)
            if phase is not None and not (phase in ("dot", "e") and node.kind == "integer") and not (
                    phase == "e" and node.bounded):
                text = top[3] + ch if node.bounded else ""
                if not node.bounded or _reachable(node, phase, text):
                    return [(stack[:-1] + (("N", node, phase, text),), 0)]
            return self._after_scalar(stack, _number_ends(top), ch)
        if kind == "L":
            grown = top[2] + ch
            if grown in top[1].prefixes:
                return [(stack[:-1] + (("L", top[1], grown),), 0)]
            return self._after_scalar(stack, top[2] in top[1].texts, ch)
        if ch in _WS:
            limit = MAX_LEADING_WHITESPACE if len(stack) == 1 and kind == "V" else MAX_WHITESPACE
            return [] if kind == "D" or ws >= limit else [(stack, ws + 1)]
        if kind == "V":
            return [(s, 0) for s in self._value(stack, ch)]
        if kind == "O":
            return [(s, 0) for s in self._object(stack, ch)]
        if kind == "A":
            return [(s, 0) for s in self._array(stack, ch)]
        return []  # "D": nothing but the end of the text

    def _after_scalar(self, stack: tuple, complete: bool, ch: str) -> list[tuple]:
        """A number or literal that `ch` does not continue: complete, it ends and `ch` goes on."""
        return self._step((_pop(stack), 0), ch) if complete else []

    def _value(self, stack: tuple, ch: str) -> list[tuple]:
        """The start of the value the top ("V", node) frame expects: of each kind of value it may be."""
        rest = stack[:-1]
        return [s for leaf in self._leaves(stack[-1][1]) for s in _start(rest, leaf, ch)]

    def _leaves(self, node: Node) -> tuple[Node, ...]:
        """The schemas of values (object, array, string, number, literals) a node may be, through
        $ref and anyOf, each once: shared definitions are not walked again."""
        cached = self._leaf_cache.get(id(node))
        if cached is None:
            found: dict[int, Node] = {}
            todo, seen = [node], set()
            while todo:
                n = todo.pop()
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if n.kind == "ref":
                    todo.append(self.defs[n.ref])
                elif n.kind == "any_of":
                    todo.extend(reversed(n.options))
                else:
                    for leaf in (_ANY_OPTIONS if n.kind == "any" else (n,)):
                        found.setdefault(id(leaf), leaf)
            cached = self._leaf_cache[id(node)] = _merged(tuple(found.values()))
        return cached

    def _object(self, stack: tuple, ch: str) -> list[tuple]:
        _, node, phase, seen, key = stack[-1]
        rest = stack[:-1]
        if phase in ("k0", "k"):
            if ch == '"' and _key_may_come(node, seen):
                return [rest + (("O", node, "ks", seen, ""),)]
            if ch == "}" and phase == "k0" and _may_close(node, seen):
                return [_pop(stack)]
            return []
        if phase == "ks":
            if ch == '"':
                return [rest + (("O", node, ":", seen, key),)] if _key_fits(node, seen, key, whole=True) else []
            if ch == "\\" or ord(ch) < 0x20:
                return []
            grown = key + ch
            return [rest + (("O", node, "ks", seen, grown),)] if _key_fits(node, seen, grown, whole=False) else []
        if phase == ":":
            if ch != ":":
                return []
            value = node.props.get(key, node.extra)
            return [rest + (("O", node, "a", seen | {key}, ""), ("V", value))]
        if phase == "a":
            if ch == "," and _key_may_come(node, seen):
                return [rest + (("O", node, "k", seen, ""),)]
            if ch == "}" and _may_close(node, seen):
                return [_pop(stack)]
        return []

    def _array(self, stack: tuple, ch: str) -> list[tuple]:
        _, node, phase, count = stack[-1]
        rest = stack[:-1]
        if phase == "a":
            if ch == "," and (node.max_count is None or count < node.max_count):
                return [rest + (("A", node, "v", count),)]
            return [_pop(stack)] if ch == "]" and count >= node.min_count else []
        if ch == "]" and phase == "v0":
            return [_pop(stack)] if node.min_count == 0 else []
        item = node.prefix[count] if count < len(node.prefix) else node.items
        if item is None or (node.max_count is not None and count >= node.max_count):
            return []
        return self._value(rest + (("A", node, "a", count + 1), ("V", item)), ch)


def _merged(leaves: tuple[Node, ...]) -> tuple[Node, ...]:
    """Leaves with the literals of all in one node: an anyOf of many enums or consts is one set of
    texts to walk, not as many parses as it has options."""
    literals = [leaf for leaf in leaves if leaf.kind == "literals"]
    if len(literals) < 2:
        return leaves
    union = Node("literals", texts=frozenset().union(*(leaf.texts for leaf in literals)))
    return (*(leaf for leaf in leaves if leaf.kind != "literals"), union)


def _start(rest: tuple, node: Node, ch: str) -> list[tuple]:
    """`ch` starting a value of `node` (no $ref, anyOf or any) under the frames `rest`."""
    if node.kind == "object":
        return [rest + (("O", node, "k0", frozenset(), ""),)] if ch == "{" else []
    if node.kind == "array":
        return [rest + (("A", node, "v0", 0),)] if ch == "[" else []
    if node.kind == "string":
        match = None if node.pattern is None else (node.pattern.start, "")
        return [rest + (("S", node, 0, 0, match),)] if ch == '"' else []
    if node.kind in ("number", "integer"):
        phase = "minus" if ch == "-" else "zero" if ch == "0" else "int"
        if ch not in _NUMBER_START or (node.bounded and not _reachable(node, phase, ch)):
            return []
        return [rest + (("N", node, phase, ch if node.bounded else ""),)]
    if node.kind == "literals":
        return [rest + (("L", node, ch),)] if ch in node.prefixes else []
    return []


def _pop(stack: tuple) -> tuple:
    """The stack once its top value is complete: its container goes on, or the text is done."""
    return stack[:-1] if len(stack) > 1 else (("D",),)


def _ends(stack: tuple) -> bool:
    """Whether the text may end here: done, or a top-level number or literal that is complete."""
    top = stack[-1]
    if len(stack) != 1:
        return False
    return top[0] == "D" or (top[0] == "N" and _number_ends(top)) or (
        top[0] == "L" and top[2] in top[1].texts)


def _number_ends(top: tuple) -> bool:
    """Whether the number of this ("N", ...) frame may end here: complete, within its bounds, and a
    multiple where it must be one."""
    if top[2] not in ("zero", "int", "frac", "exp"):
        return False
    node = top[1]
    if not node.bounded:
        return True
    value = Fraction(top[3])
    return _allows(node, value, value, False, False) and (node.multiple is None or value % node.multiple == 0)


def _reachable(node: Node, phase: str, text: str) -> bool:
    """Whether a number of `node` that starts with `text` (in `phase`, no exponent) can still end
    within the node's bounds. Its magnitude grows with each digit of the integer part: from a
    leading D it is in [D * 10**k, (D + 1) * 10**k) for some k (integers: up to the end, less
    one); a fraction narrows it to [text, text + a unit of its last place). A multiple of a whole
    number is an integer: after a point only zeros keep one reachable."""
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    integer = node.kind == "integer" or node.multiple is not None
    if phase == "minus":
        return _meets(node, negative, Fraction(0), None, integer)
    if phase in ("dot", "frac"):
        whole, _, fraction = digits.partition(".")
        if node.multiple is not None:
            value = Fraction(int(whole))
            return fraction.strip("0") == "" and _meets(node, negative, value, value + 1, True)
        start = Fraction(f"{whole}.{fraction}") if fraction else Fraction(int(whole))
        return _meets(node, negative, start, start + Fraction(1, 10 ** len(fraction)), False)
    lead = int(digits)
    if lead == 0:
        return _meets(node, negative, Fraction(0), Fraction(1), integer)
    far = node.low if negative else node.high  # the bound the magnitude grows towards
    if far is None:
        return True  # grown long enough, it passes the near bound, if there is one
    k = max(0, len(str(abs(int(far)))) - len(digits) - 1)
    while lead * 10 ** k <= abs(far) + 1:
        if _meets(node, negative, Fraction(lead * 10 ** k), Fraction((lead + 1) * 10 ** k), integer):
            return True
        k += 1
    return False


def _meets(node: Node, negative: bool, start: Fraction, end: Fraction | None, integer: bool) -> bool:
    """Whether a value whose magnitude is in [start, end) (end None: unbounded; an integer's: its
    integers) with this sign is within the node's bounds."""
    if integer:
        last = None if end is None else end - 1
        if negative:
            return _allows(node, -last if last is not None else None, -start, False, False, integer=True)
        return _allows(node, start, last, False, False, integer=True)
    if negative:
        return _allows(node, -end if end is not None else None, -start, True, False)
    return _allows(node, start, end, False, True)


def _allows(node: Node, low: Fraction | None, high: Fraction | None, low_open: bool, high_open: bool,
            integer: bool = False) -> bool:
    """Whether the interval (low, high) of values (None: unbounded; `*_open`: the end excluded;
    `integer`: its integers only) meets the node's bounds."""
    lo, lo_open = _tighter(low, low_open, node.low, node.low_open, max)
    hi, hi_open = _tighter(high, high_open, node.high, node.high_open, min)
    if lo is None or hi is None:
        return True
    if integer:
        return _first_multiple(node, _ceil(lo, lo_open)) <= _floor(hi, hi_open)
    return lo < hi or (lo == hi and not lo_open and not hi_open)


def _tighter(a: Fraction | None, a_open: bool, b: Fraction | None, b_open: bool, pick) -> tuple[Fraction | None, bool]:
    """The tighter of two ends of intervals on the same side (`pick`: max for low ends, min for high)."""
    if a is None:
        return b, b_open
    if b is None or a != b and pick(a, b) == a:
        return a, a_open
    if a == b:
        return a, a_open or b_open
    return b, b_open


def _first_multiple(node: Node, n: int) -> int:
    """The least integer at or above n that the node's multipleOf (if any) divides."""
    step = node.multiple or 1
    return -(-n // step) * step


def _ceil(x: Fraction, exclusive: bool) -> int:
    """The least integer at or above x (above it where `exclusive` and x is one)."""
    n = -(-x.numerator // x.denominator)
    return n + 1 if exclusive and n == x else n


def _floor(x: Fraction, exclusive: bool) -> int:
    """The greatest integer at or below x (below it where `exclusive` and x is one)."""
    n = x.numerator // x.denominator
    return n - 1 if exclusive and n == x else n


def _in_text(top: tuple) -> bool:
    """A value's string, or a key where any key may come."""
    if top[0] == "S":
        return True
    return top[0] == "O" and top[2] == "ks" and top[1].extra is not None and not _required_only(top[1], top[3])


def _key_may_come(node: Node, seen: frozenset[str]) -> bool:
    """Whether another key may start: one is left, and maxProperties leaves room for it."""
    if node.max_count is not None and len(seen) >= node.max_count:
        return False
    return node.extra is not None or any(p not in seen for p in node.props)


def _may_close(node: Node, seen: frozenset[str]) -> bool:
    return node.required <= seen and len(seen) >= node.min_count


def _required_only(node: Node, seen: frozenset[str]) -> bool:
    """Whether maxProperties leaves room for the missing required keys alone (it never leaves
    less: a key that is not required comes only while there is room to spare)."""
    return node.max_count is not None and len(seen) + len(node.required - seen) >= node.max_count


def _key_fits(node: Node, seen: frozenset[str], text: str, whole: bool) -> bool:
    """Whether `text` is (`whole`) or starts (else) a key that may come next: one not written yet,
    of the props or any other where those are allowed; a missing required one where only those fit."""
    if _required_only(node, seen):
        names = (text,) if whole else node.key_prefixes.get(text, ())
        return any(name in node.required and name not in seen for name in names)
    if whole:
        return text not in seen and text not in node.barred and (text in node.props or node.extra is not None)
    return node.extra is not None or any(name not in seen for name in node.key_prefixes.get(text, ()))


def _string(stack: tuple, ch: str) -> list[tuple]:
    _, node, count, escape, match = stack[-1]
    rest = stack[:-1]
    if escape == 1:
        if ch == "u":  # not in a patterned string: the digits could lead to no character it takes
            return [rest + (("S", node, count, 14, match),)] if match is None else []
        return _character(rest, node, count, match, _UNESCAPED[ch]) if ch in _ESCAPES and _room(node, count) else []
    if escape > 10:
        if ch not in _HEX:
            return []
        if escape == 11:
            code = int(match[1] + ch, 16) if match is not None else 0
            return _character(rest, node, count, match, chr(code)) if _room(node, count) else []
        return [rest + (("S", node, count, escape - 1, match and (match[0], match[1] + ch)),)]
    if ch == '"':
        ends = count >= node.min_count and (match is None or node.pattern.accepts(match[0]))
        return [_pop(stack)] if ends else []
    if ch == "\\":  # only where an escaped character may come next
        fits = _room(node, count) and (match is None or any(node.pattern.step(match[0], value) is not None
                                                             for value in _UNESCAPED.values()))
        return [rest + (("S", node, count, 1, match),)] if fits else []
    if ord(ch) < 0x20 or not _room(node, count):
        return []
    return _character(rest, node, count, match, ch)


_UNESCAPED = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _character(rest: tuple, node: Node, count: int, match: tuple | None, value: str) -> list[tuple]:
    """The string's frame once `value` (one character of the string's value) is written: counted
    where its length is bounded (else every count is one state), through its pattern if it has one."""
    count = count + 1 if node.max_count is not None or node.min_count else count
    if match is None:
        return [rest + (("S", node, count, 0, None),)]
    states = node.pattern.step(match[0], value)
    return [rest + (("S", node, count, 0, (states, "")),)] if states is not None else []


def _room(node: Node, count: int) -> bool:
    return node.max_count is None or count < node.max_count


# ---------------------------------------------------------------------- compiling


def compile_schema(schema: Any) -> JsonSchema:
    """The schema's automaton; ValueError naming the first keyword it cannot enforce."""
    if not isinstance(schema, (dict, bool)):
        raise ValueError("a JSON schema is an object")
    raw_defs = {}
    if isinstance(schema, dict):
        for key in ("$defs", "definitions"):
            defs = schema.get(key, {})
            if not isinstance(defs, dict):
                raise ValueError(f"{key} must be an object")
            raw_defs.update({f"#/{key}/{name}": value for name, value in defs.items()})
    compiled = {ref: _node(value, ref) for ref, value in raw_defs.items()}
    compiled["#"] = root = _node(schema, "#")
    nodes = _all_nodes(root, compiled)
    _check_refs(root, compiled, nodes)
    satisfiable = _satisfiable(nodes, compiled)
    if id(root) not in satisfiable:
        raise ValueError(_why_empty(root, compiled, satisfiable))
    for node in nodes:
        _prune(node, satisfiable)
    return JsonSchema(root, compiled)


def _all_nodes(root: Node, defs: dict[str, Node]) -> list[Node]:
    """Every node of the schema and its definitions, once each (a $ref's target is a definition)."""
    seen: set[int] = set()
    found, todo = [], [root, *defs.values()]
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen.add(id(node))
            found.append(node)
            todo += [*node.props.values(), *node.prefix, *node.options] + [n for n in (node.extra, node.items) if n]
    return found


def _check_refs(root: Node, defs: dict[str, Node], nodes: list[Node]) -> None:
    """Every $ref names a definition (or "#", the whole schema), and no chain of $ref and anyOf
    comes back to where it started without an object or array between (it would never end).
    Linear in the schema's size: each node is walked once."""
    for node in nodes:
        if node.kind == "ref" and node.ref not in defs:
            raise ValueError(f"$ref {node.ref!r}: no such definition (refs point into $defs or definitions)")
    done: set[int] = set()
    for start in (root, *defs.values()):
        if id(start) not in done:
            _no_loop_from(start, defs, done)


def _no_loop_from(start: Node, defs: dict[str, Node], done: set[int]) -> None:
    """Depth-first over the $ref and anyOf edges from `start` (iteratively: chains may be long)."""
    on_path: set[int] = set()
    stack = [(start, iter(_edges(start, defs)))]
    on_path.add(id(start))
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            done.add(id(node))
        elif id(child) in on_path:
            raise ValueError("the schema refers to itself through $ref or anyOf alone: it describes no finite value")
        elif id(child) not in done:
            on_path.add(id(child))
            stack.append((child, iter(_edges(child, defs))))


def _edges(node: Node, defs: dict[str, Node]) -> tuple[Node, ...]:
    return (defs[node.ref],) if node.kind == "ref" else node.options


# A node's conditions for a value of it to exist: all its gates met, a gate (need, [(child, weight)])
# met once the weights of its children known to accept a value add up to `need`.
Gate = tuple[int, list[tuple[Node, int]]]


def _satisfiable(nodes: list[Node], defs: dict[str, Node]) -> set[int]:
    """The ids of the nodes that accept some finite value: the least fixed point, found as in
    Horn satisfiability (each child, once known, counts down its parents' gates), so linear in the
    schema's size; a recursion needed at every level never counts itself down and stays out."""
    left: dict[int, list[int]] = {}
    parents: dict[int, list[tuple[Node, int, int]]] = {}
    known, todo = set(), []
    for node in nodes:
        gates = _gates(node, defs)
        left[id(node)] = [need for need, _ in gates]
        for index, (_, children) in enumerate(gates):
            for child, weight in children:
                parents.setdefault(id(child), []).append((node, index, weight))
        if all(need <= 0 for need in left[id(node)]):
            known.add(id(node))
            todo.append(node)
    while todo:
        for parent, index, weight in parents.get(id(todo.pop()), ()):
            gates = left[id(parent)]
            gates[index] -= weight
            if id(parent) not in known and all(need <= 0 for need in gates):
                known.add(id(parent))
                todo.append(parent)
    return known


def _gates(node: Node, defs: dict[str, Node]) -> list[Gate]:
    """What a value of `node` needs of its children's: its $ref's target; one of its options; an
    object's required properties, and enough others to make minProperties (any other key counts
    as all it lacks); an array's first minItems items."""
    if node.kind == "ref":
        return [(1, [(defs[node.ref], 1)])]
    if node.kind == "any_of":
        return [(1, [(option, 1) for option in node.options])]
    if node.kind == "object":
        needed = [node.props.get(name, node.extra) for name in node.required]
        lacking = node.min_count - len(node.required)
        others = [(child, 1) for name, child in node.props.items() if name not in node.required]
        others += [(node.extra, max(lacking, 1))] if node.extra is not None else []
        return [(len(needed), [(child, 1) for child in needed if child is not None]), (lacking, others)]
    if node.kind == "array":
        needed = list(node.prefix[:node.min_count])
        needed += [node.items] if node.min_count > len(node.prefix) else []
        return [(len(needed), [(child, 1) for child in needed if child is not None])]
    return []


def _why_empty(root: Node, defs: dict[str, Node], satisfiable: set[int]) -> str:
    """Why `root` accepts no value: down the children it needs that accept none, to the first
    that accepts none by itself, or to a $ref back into the way there (a recursion without end)."""
    node, path, needer = root, set(), ""
    while True:
        path.add(id(node))
        if node.kind == "ref" and id(defs[node.ref]) in path:
            why = f"$ref {node.ref!r} needs itself again at every level, so no finite value ends it"
            break
        if node.kind == "ref":
            node = defs[node.ref]
            continue
        if node.kind == "any_of":
            why = node.why or "none of its options accepts one"
            break
        (_, needed), *_ = _gates(node, defs)
        empty = next((child for child, _ in needed if id(child) not in satisfiable), None)
        if empty is None:
            why = f"minProperties {node.min_count}: too few of its keys have a schema that accepts one"
            break
        node, needer = empty, node.where
    return f"{node.where}: accepts no value ({why})" + (f", and {needer} needs one" if needer else "")


def _node(schema: Any, where: str) -> Node:
    if schema is True or schema == {}:
        return ANY_VALUE
    if schema is False:
        return _nothing(where, "false")
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: a schema must be an object or a boolean")
    if "$ref" in schema:
        _only(schema, {"$ref"}, where)
        return Node("ref", ref=str(schema["$ref"]), where=where)
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        _only(schema, {"enum", "const", "type"}, where)
        if not isinstance(values, list):
            raise ValueError(f"{where}: enum must be a list")
        if "enum" in schema and "const" in schema:  # both must hold
            values = [v for v in values if _same(v, schema["const"])]
        if "type" in schema:
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            values = [v for v in values if any(_of_type(v, kind) for kind in kinds)]
        if not values:
            return _nothing(where, "an empty enum" if "type" not in schema and "const" not in schema
                            else "no value of its enum or const meets the rest")
        return Node("literals", texts=frozenset(json.dumps(v, ensure_ascii=False, separators=(",", ":"))
                                                for v in values))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            _only(schema, {key}, where)
            if not schema[key]:
                return _nothing(where, f"an empty {key}")
            return Node("any_of", options=tuple(_node(s, f"{where}/{key}/{i}") for i, s in enumerate(schema[key])),
                        where=where)
    if "allOf" in schema:
        parts = schema["allOf"]
        if not isinstance(parts, list) or len(parts) != 1:
            raise ValueError(f"{where}: allOf is supported with one schema only")
        _only(schema, {"allOf"}, where)
        return _node(parts[0], f"{where}/allOf/0")
    kind = schema.get("type")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind is None:
            _only(schema, set(), where)
            return ANY_VALUE
    if isinstance(kind, list):
        if not kind:
            return _nothing(where, "an empty type list")
        return Node("any_of", options=tuple(_node({**schema, "type": k}, where) for k in kind), where=where)
    if kind not in _KEYWORDS:
        raise ValueError(f"{where}: unknown type {kind!r}")
    _only(schema, _KEYWORDS[kind], where)
    if kind == "object":
        return _object_node(schema, where)
    if kind == "array":
        return _array_node(schema, where)
    if kind == "string":
        return _string_node(schema, where)
    if kind == "boolean":
        return Node("literals", texts=frozenset({"true", "false"}))
    if kind == "null":
        return Node("literals", texts=frozenset({"null"}))
    node = Node(kind, **_bounds(schema, where), multiple=_multiple(schema, where))
    if not _allows(node, None, None, False, False, integer=kind == "integer" or node.multiple is not None):
        raise ValueError(f"{where}: no {kind} meets its bounds{' and multipleOf' if node.multiple else ''}")
    return node


def _of_type(value: Any, kind: Any) -> bool:
    """Whether a JSON value is of a schema type (1.0 is an integer, as JSON schema reads it; true is not)."""
    if isinstance(value, bool):
        return kind == "boolean"
    if isinstance(value, (int, float)):
        return kind == "number" or (kind == "integer" and float(value).is_integer())
    return {str: "string", type(None): "null", list: "array", dict: "object"}.get(type(value)) == kind


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 and 1.0 are equal, true and 1 are not."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        _of_type(a, "number") and _of_type(b, "number") and a == b)


def _nothing(where: str, why: str) -> Node:
    """A schema that accepts no value: refused where a value of it is needed, else never started."""
    return Node("any_of", where=where, why=why)


def _prune(node: Node, satisfiable: set[int]) -> None:
    """Take out of `node` the schemas that accept no value where they are optional, so that the
    automaton never starts one (a dead end): options dropped, keys barred, items capped."""
    if node.kind == "any_of":
        node.options = tuple(option for option in node.options if id(option) in satisfiable)
    elif node.kind == "object":
        barred = frozenset(name for name, child in node.props.items() if id(child) not in satisfiable)
        if node.extra is not None and id(node.extra) not in satisfiable:
            node.extra = None
        if barred:
            node.props = {name: child for name, child in node.props.items() if name not in barred}
            node.barred, node.key_prefixes = barred, _key_prefixes(node)
    elif node.kind == "array":
        items = (*node.prefix, node.items)
        cap = next((i for i, item in enumerate(items) if item is not None and id(item) not in satisfiable), None)
        if cap is not None:
            node.max_count = cap if node.max_count is None else min(node.max_count, cap)


def _multiple(schema: dict, where: str) -> int | None:
    """multipleOf, a whole number only: a fraction's multiples (0.01) are not what a validator's
    floating point division finds (0.07 / 0.01 is not a whole number there)."""
    if "multipleOf" not in schema:
        return None
    value = _bound(schema["multipleOf"], "multipleOf", where)
    if value <= 0 or value.denominator != 1:
        raise ValueError(f"{where}: multipleOf {schema['multipleOf']!r} cannot be enforced here "
                         "(a whole number > 0 can)")
    return int(value)


def _bounds(schema: dict, where: str) -> dict[str, Any]:
    """A number's bounds as Node fields: minimum/maximum, exclusiveMinimum/exclusiveMaximum as
    numbers (or, draft 4's way, as true beside minimum/maximum); the tighter where both are given."""
    out: dict[str, Any] = {}
    for side, inclusive, exclusive in (("low", "minimum", "exclusiveMinimum"), ("high", "maximum", "exclusiveMaximum")):
        pick = max if side == "low" else min
        found: tuple[Fraction | None, bool] = (None, False)
        if inclusive in schema:
            found = (_bound(schema[inclusive], inclusive, where), schema.get(exclusive) is True)
        if exclusive in schema and not isinstance(schema[exclusive], bool):
            found = _tighter(found[0], found[1], _bound(schema[exclusive], exclusive, where), True, pick)
        elif schema.get(exclusive) is True and inclusive not in schema:
            raise ValueError(f"{where}: {exclusive} true needs {inclusive} beside it")
        out[side], out[f"{side}_open"] = found
    return out


def _bound(value: Any, key: str, where: str) -> Fraction:
    """A bound as an exact number: a float as the decimal it is written as (0.1 is 1/10, as the text
    "0.1" reads), so that a value written as the bound meets it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        raise ValueError(f"{where}: {key} must be a finite number")
    return Fraction(value) if isinstance(value, int) else Fraction(repr(value))


def _object_node(schema: dict, where: str) -> Node:
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise ValueError(f"{where}: properties must be an object")
    for name in props:
        if any(ch in name for ch in '"\\') or any(ord(ch) < 0x20 for ch in name):
            raise ValueError(f"{where}: property name {name!r} needs escapes, which keys here are written without")
    required = schema.get("required", [])
    if not isinstance(required, list) or not set(required) <= set(props) and schema.get(
            "additionalProperties", "properties" not in schema) is False:
        raise ValueError(f"{where}: required names a property the object cannot have")
    # Absent additionalProperties: no other key where properties are listed (what a schema written for
    # a model means), any key where none are.
    extra = schema.get("additionalProperties", "properties" not in schema)
    min_count, max_count = _property_counts(schema, len(set(required)), len(props) if extra is False else None, where)
    return Node("object", props={name: _node(s, f"{where}/properties/{name}") for name, s in props.items()},
                required=frozenset(required),
                extra=None if extra is False else _node(extra, f"{where}/additionalProperties"),
                min_count=min_count, max_count=max_count, where=where)


def _property_counts(schema: dict, required: int, limit: int | None, where: str) -> tuple[int, int | None]:
    """minProperties and maxProperties, refused where no object meets them beside `required` keys and
    at most `limit` keys in all (None: any number): the automaton would reach a dead end."""
    low, high = _count(schema, "minProperties", 0), _count(schema, "maxProperties", None)
    if high is not None and high < max(low, required):
        raise ValueError(f"{where}: maxProperties {high} is below minProperties {low} or the {required} "
                         "required properties")
    if limit is not None and low > limit:
        raise ValueError(f"{where}: minProperties {low} is more than the {limit} properties the object may have")
    return low, high


def _string_node(schema: dict, where: str) -> Node:
    """A string's lengths, and its pattern: `pattern`, else that of a `format` FORMATS knows (other
    formats are annotations)."""
    source = schema.get("pattern", FORMATS.get(schema.get("format")))
    min_count, max_count = _count(schema, "minLength", 0), _count(schema, "maxLength", None)
    if max_count is not None and min_count > max_count:
        raise ValueError(f"{where}: accepts no value (minLength {min_count} is above maxLength {max_count})")
    if source is not None and (min_count or max_count is not None):
        raise ValueError(f"{where}: a pattern (or format) beside minLength or maxLength cannot be enforced here")
    try:
        pattern = None if source is None else compile_pattern(source)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return Node("string", min_count=min_count, max_count=max_count, pattern=pattern)


def _array_node(schema: dict, where: str) -> Node:
    prefix = tuple(_node(s, f"{where}/prefixItems/{i}") for i, s in enumerate(schema.get("prefixItems", [])))
    items = schema.get("items", True)
    min_count, max_count = _count(schema, "minItems", 0), _count(schema, "maxItems", None)
    if max_count is not None and min_count > max_count:
        raise ValueError(f"{where}: accepts no value (minItems {min_count} is above maxItems {max_count})")
    if items is False and min_count > len(prefix):
        raise ValueError(f"{where}: accepts no value (minItems {min_count} is more than the {len(prefix)} "
                         "prefixItems that items false leaves)")
    if items is False:
        max_count = len(prefix) if max_count is None else min(max_count, len(prefix))
    return Node("array", items=None if items is False else _node(items, f"{where}/items"), prefix=prefix,
                min_count=min_count, max_count=max_count, where=where)


def _count(schema: dict, key: str, default: int | None) -> int | None:
    value = schema.get(key, default)
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{key} must be an integer >= 0")
    return value


def _only(schema: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(schema) - allowed - _ANNOTATIONS)
    if extra:
        raise ValueError(f"{where}: {', '.join(extra)} cannot be enforced here (supported: type, properties, required, "
                         "additionalProperties, minProperties, maxProperties, items, prefixItems, minItems, maxItems, "
                         "minLength, maxLength, pattern, minimum, maximum, exclusiveMinimum, exclusiveMaximum, "
                         "multipleOf, enum, const, anyOf, oneOf, allOf, $ref)")


_ANY_OBJECT = Node("object", extra=ANY_VALUE)
_ANY_ARRAY = Node("array", items=ANY_VALUE)
_ANY_OPTIONS = (_ANY_OBJECT, _ANY_ARRAY, Node("string"), Node("number"), Node("literals", texts=frozenset(
    {"true", "false", "null"})))
