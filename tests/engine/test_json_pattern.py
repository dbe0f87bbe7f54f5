"""engine/json_pattern.py: patterns match what a regular-expression engine matches (Python's `re`
read the ECMA way: ASCII classes, $ only at the very end), every state can still be finished, the
formats accept only strings jsonschema's format checker passes, and what cannot be read is refused;
through engine/json_schema.py the pattern holds the string's value, escapes decoded."""
from __future__ import annotations

import random
import re

import jsonschema
import pytest
import torch

from engine.json_choice import TokenMasks
from engine.json_object import JsonTokens
from engine.json_pattern import FORMATS, PatternText, compile_pattern
from engine.json_schema import compile_schema

PATTERNS = [r"^[a-z]+$", "abc", r"^\d{3}-\d{4}$", "^(foo|bar)+baz?$", r"^[^@\s]+@x\.com$", "a{2,3}", r"^\w*$",
            "^.{0,3}$", "^(?:ab)*c$", r"^[\u00e9a-c-]+$", r"^[A-Z]{2}\d{2,}$", "x|y", r"^a\.b?$", "^[]a]$",
            r"^\x41\u0042[\d\s]$", "^a+?b*?$", "^(a|)$", r"^[\\/]$", "{", "^a{x}$"]
ALPHABET = "abcxyzABfo rAB0123456789-@.é\n_\\/{},]"


def matches(pattern, text: str) -> bool:
    states = pattern.start
    for ch in text:
        states = pattern.step(states, ch)
        if states is None:
            return False
    return pattern.accepts(states)


def python_reads(source: str) -> re.Pattern:
    """The pattern as an ECMA engine reads it, in Python's syntax: ASCII classes, $ at the very end."""
    return re.compile(re.sub(r"\$$", r"\\Z", source), re.ASCII)


@pytest.mark.parametrize("source", PATTERNS)
def test_a_pattern_matches_what_a_regex_engine_finds(source):
    pattern, oracle = compile_pattern(source), python_reads(source)
    rng = random.Random(source)
    hits = 0
    for _ in range(2000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
        expected = oracle.search(text) is not None
        assert matches(pattern, text) == expected, repr(text)
        hits += expected
    samples = [walk(pattern, rng) for _ in range(300)]  # strings the automaton writes: all found by the engine
    assert all(oracle.search(text) for text in samples if text is not None)


def walk(pattern, rng: random.Random) -> str | None:
    """A string written one allowed character at a time until the pattern may end (None: it took too long).
    Every state on the way can still be finished: some character always continues it, or it ends."""
    alphabet = ALPHABET + "".join(sorted({ch for source in PATTERNS for ch in source}))
    states, text = pattern.start, ""
    for _ in range(40):
        if pattern.accepts(states) and rng.random() < 0.3:
            return text
        options = [ch for ch in alphabet if pattern.step(states, ch) is not None]
        assert options or pattern.accepts(states), text  # never a dead end
        if not options:
            return text
        ch = rng.choice(options)
        states, text = pattern.step(states, ch), text + ch
    return text if pattern.accepts(states) else None


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_format_writes_only_what_its_checker_passes(name):
    pattern = compile_pattern(FORMATS[name])
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    rng = random.Random(name)
    alphabet = "0123456789abcdefABCDEFTtZz:+-.@_%"
    written = 0
    for _ in range(400):
        states, text = pattern.start, ""
        for _ in range(60):
            if pattern.accepts(states) and rng.random() < 0.2:
                break
            options = [ch for ch in alphabet if pattern.step(states, ch) is not None]
            if not options:
                break
            ch = rng.choice(options)
            states, text = pattern.step(states, ch), text + ch
        if pattern.accepts(states):
            written += 1
            assert checker.conforms(text, name), text
    assert written > 40
    valid = {"date": "2024-12-31", "time": "23:59:59.5+01:00", "date-time": "2024-02-28T00:00:00Z",
             "uuid": "123e4567-e89b-12d3-a456-426614174000", "ipv4": "192.168.0.255", "email": "a.b@x-y.org"}
    invalid = {"date": "0000-02-03", "time": "24:00:00Z", "date-time": "2024-01-01 00:00", "uuid": "123e4567",
               "ipv4": "256.0.0.1", "email": "a@b"}
    assert matches(pattern, valid[name]) and not matches(pattern, invalid[name])


@pytest.mark.parametrize("source, word", [("(?=a)", "lookaround"), ("(?P<n>a)", "lookaround"), (r"(a)\1", "escape"),
                                          (r"\bword", "escape"), ("a^b", "anchor"), ("a$b", "anchor"),
                                          ("a{65}", "count"), ("a{3,2}", "count"), ("*a", "nothing to repeat"),
                                          ("(ab", "unclosed group"), ("[ab", "unclosed class"), ("[z-a]", "range"),
                                          ("ab)", "unbalanced"), (r"[\D]", "negated escape"), ("\\", "trailing"),
                                          (r"\u12", "hex digits"), ("((a{64}){64}){4}", "positions"),
                                          ("x|^y", "anchor"), ("a{,2}", "lower bound"),
                                          ("(.{0,64}){0,64}x", "too complex"), (r"(\w{1,64}){1,64}", "too complex")])
def test_what_cannot_be_read_is_refused_by_name(source, word):
    with pytest.raises(ValueError, match=word):
        compile_pattern(source)


def test_through_the_schema_the_pattern_holds_the_strings_value():
    machine = compile_schema({"type": "object", "properties": {"code": {"type": "string", "pattern": r"^[A-Z]\n\d$"},
                                                               "day": {"type": "string", "format": "date"}}})

    def accepts(text: str) -> bool:
        state = machine.feed(machine.start, text)
        return state is not None and machine.complete(state)

    assert accepts('{"code": "A\\n7"}')  # escapes decoded
    assert not accepts('{"code": "a\\n7"}') and machine.feed(machine.start, '{"code": "A7') is None
    assert machine.feed(machine.start, '{"code": "A\\n') is not None and not accepts('{"code": "A\\n"}')
    assert accepts('{"day": "2024-01-31"}') and machine.feed(machine.start, '{"day": "2024-13') is None
    # A backslash only where an escaped character may follow; no \\u escape (its digits could lead nowhere).
    assert machine.feed(machine.start, '{"day": "2024-01-31\\') is None
    assert machine.feed(machine.start, '{"code": "\\u0041') is None
    free = compile_schema({"type": "string"})
    assert free.in_string(free.feed(free.start, '"x')) and not machine.in_string(
        machine.feed(machine.start, '{"code": "A'))  # a byte piece: not where the pattern must see the character


def test_a_whole_answer_held_to_a_pattern():
    """PatternText: the pattern matches the whole answer, anchored or not; an end of text only where
    it matches; no piece without text of its own; each state's mask is what allows says."""
    for source in (r"\d{2}-x", r"^\d{2}-x$"):
        text = PatternText.of(source)
        assert text.complete(text.feed(text.start, "12-x")) and text.feed(text.start, "12-xy") is None
        assert text.feed(text.start, "a") is None and not text.complete(text.feed(text.start, "12-"))
    tokens = JsonTokens(["1", "2", "-", "x", "12", "-x", None, "3x"], frozenset({6}))
    masks, machine = TokenMasks(tokens), PatternText.of(r"\d{2}-x")
    for prefix in ("", "1", "12", "12-", "12-x"):
        state = machine.feed(machine.start, prefix)
        assert masks.allowed(state, 8, torch.device("cpu")).tolist() == [tokens.allows(state, t) for t in range(8)]
    assert tokens.allows(machine.feed(machine.start, "12-x"), 6) and not tokens.allows(machine.start, 6)


def test_a_constraint_the_vocabulary_cannot_write_is_refused_or_ends_the_answer():
    """A pattern no token can begin (a character no token has) is refused when the request comes; one
    that a token can begin but none can go on with ends the answer where it stands: the output stays
    a prefix of what the pattern accepts, never free text."""
    from engine import DEFAULT_MODEL, LLM, SamplingParams

    llm = LLM(DEFAULT_MODEL, num_kv_blocks=64, max_num_seqs=2)
    tokens = llm.engine.sampler.json_tokens
    assert not tokens.can_begin(PatternText.of("\x00").start) and tokens.can_begin(PatternText.of("a").start)
    with pytest.raises(ValueError, match="no answer that a token"):
        llm.generate(["x = "], SamplingParams(max_tokens=4, json_object=True, json_schema=PatternText.of("\x00")))
    for temperature in (0.0, 1.0):
        params = SamplingParams(max_tokens=8, temperature=temperature, seed=3, json_object=True,
                                json_schema=PatternText.of("(ab|a)\x00"))
        out = llm.generate(["x = "], params, use_tqdm=False)[0].outputs[0]
        assert out.text in ("a", "ab") and out.finish_reason == "stop"
    assert llm.engine.block_manager.num_free == llm.engine.block_manager.num_blocks
