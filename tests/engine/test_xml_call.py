"""A forced Qwen3-Coder call held to its functions' parameters (engine/xml_call.py): what it takes
and refuses, and random walks through it that never meet a dead end."""
from __future__ import annotations

import random

import pytest

from engine.json_pattern import compile_pattern
from engine.json_schema import compile_schema
from engine.xml_call import RawText, XmlCall, XmlFunction

FUNCTIONS = {
    "run": XmlFunction({"command": None, "n": compile_schema({"type": "integer", "minimum": 1, "maximum": 99})},
                       frozenset({"command"})),
    "now": XmlFunction({}),
    "pick": XmlFunction({"units": compile_schema({"enum": ["C", "F"]}),
                         "opts": compile_schema({"type": "object", "properties": {"a": {"type": "boolean"}}})},
                        frozenset({"units"})),
    "go": XmlFunction({"mode": RawText(frozenset({"read", "re", "a\nb"})), "city": RawText(None, 2, 5),
                       "code": RawText(pattern=compile_pattern("^[a-c]+-[0-9]{2}$"))},
                      frozenset({"mode"})),
}
END = "</function>\n</tool_call>"
RUN = "run>\n<parameter=command>\nls -la\n</parameter>\n<parameter=n>\n30\n</parameter>\n</function>\n</tool_call>"


def takes(machine: XmlCall, text: str) -> bool:
    state = machine.feed(machine.start, text)
    return state is not None and machine.complete(state)


@pytest.mark.parametrize("text, ok", [
    (RUN, True),
    ("now>\n</function>\n</tool_call>", True),
    ('pick>\n<parameter=opts>\n{"a": true}\n</parameter>\n<parameter=units>\n"F"\n</parameter>\n</function>\n'
     "</tool_call>", True),
    ("run>\n<parameter=command>\na <b> </para\n</parameter>\n</function>\n</tool_call>", True),
    ("run>\n<parameter=n>\n30\n</parameter>\n</function>\n</tool_call>", False),  # the required command
    ("run>\n<parameter=command>\na </function> b\n</parameter>\n</function>\n</tool_call>", False),  # a tag inside
    ("run>\n<parameter=command>\nx\n</parameter>\n<parameter=n>\n0\n</parameter>\n</function>\n</tool_call>", False),
    ("run>\n<parameter=command>\nx\n</parameter>\n<parameter=command>\ny\n</parameter>\n</function>", False),  # twice
    ("pick>\n<parameter=units>\nC\n</parameter>\n</function>\n</tool_call>", False),  # not JSON
    ("ran>", False), ("run>\n<parameter=cmd>", False), (RUN + " ", False),
    ("go>\n<parameter=mode>\nread\n</parameter>\n" + END, True),  # a held string: one of its enum
    ("go>\n<parameter=mode>\nre\n</parameter>\n" + END, True),
    ("go>\n<parameter=mode>\na\nb\n</parameter>\n" + END, True),
    ("go>\n<parameter=mode>\nrea\n</parameter>\n" + END, False),
    ("go>\n<parameter=mode>read</parameter>\n" + END, False),  # its newlines
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=city>\nParis\n</parameter>\n" + END, True),
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=city>\nab\n\n</parameter>\n" + END, True),
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=city>\nP\n</parameter>\n" + END, False),  # lengths
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=city>\nParis!\n</parameter>\n" + END, False),
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=code>\nab-12\n</parameter>\n" + END, True),  # a pattern
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=code>\nab-1\n</parameter>\n" + END, False),
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=code>\nab-123\n</parameter>\n" + END, False),
    ("go>\n<parameter=mode>\nre\n</parameter>\n<parameter=code>\nab-12\n\n</parameter>\n" + END, False),
])
def test_what_a_call_may_be(text, ok):
    assert takes(XmlCall(FUNCTIONS), text) is ok


def test_a_named_function_is_the_only_one():
    machine = XmlCall({"run": FUNCTIONS["run"]}, opening="run>")
    assert takes(machine, RUN[len("run>"):]) and machine.feed(machine.start, "now>") is None
    with pytest.raises(ValueError):
        XmlCall(FUNCTIONS, opening="nope>")


def test_random_walks_never_meet_a_dead_end():
    """A character at a time, any the machine allows (tags and closing ones more often, so walks
    end): every state reached allows some character, or is complete."""
    machine, rng = XmlCall(FUNCTIONS), random.Random(3)
    alphabet = list("abcdefghijklmnopqrstuvwxyz_<>/=\n \"{}:,0123456789CF") + ["<parameter=", "</parameter>", "</function>",
                                                                 "</tool_call>", "command>", "n>", "units>", "opts>",
                                                                 "mode>", "city>", "read", "code>", "-"]
    for _ in range(300):
        state, steps = machine.start, 0
        while not machine.complete(state):
            options = [piece for piece in alphabet if machine.feed(state, piece) is not None]
            assert options, "a dead end"
            closing = [p for p in options if p.startswith("</") or p.endswith(">")]
            state = machine.feed(state, rng.choice(closing if closing and rng.random() < 0.3 else options))
            steps += 1
            assert steps < 5000
