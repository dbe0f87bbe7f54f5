"""Input/output examples stated in a task's prompt (HumanEval docstrings), parsed conservatively.

Recognised forms, for calls of the entry point with literal arguments only:
- doctest: `>>> f(x)` followed by the expected value on the next line(s);
- inline: `f(x) == y`, `f(x) ➞ y`, `f(x) -> y`, `f(x) => y`, `f(x) ==> y`, `f(x) = y`,
  `f(x) returns y`, `f(x) should return y`, `f(x)  # returns y` (also behind `>>>`, `*`, `for`);
- `For a = x, b = y the output should be z` (every parameter named, none twice);
- `Input: x` / `Output: y` blocks, the input either a bare literal (one parameter) or named ones.
An expected value must be a Python literal (`true`/`false` are read as booleans, a trailing
comment or parenthesised remark is dropped, `... = v` keeps the final `v`). What does not parse
is skipped, never guessed. Only the prompt is read, never a task's tests or solution.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

_OPERATORS = ("should return", "returns", "==>", "==", "=>", "➞", "->", "=")
_CALL_PREFIX = re.compile(r"^\s*(>>>|\*|-|for|assert)?\s*$", re.IGNORECASE)
_OPERATOR = re.compile(r"^\s*(?:#\s*)?(" + "|".join(re.escape(o) for o in _OPERATORS) + r")\s*(.*)$")
_FOR_OUTPUT = re.compile(r"^\s*for\s+(.+?)\s*,?\s+the\s+(?:output|result)\s+should\s+be\s*:?\s*(.+)$",
                         re.IGNORECASE)
_BOOLEAN_WORDS = {"true": True, "false": False}


@dataclass(frozen=True)
class Example:
    """One stated example: the call as written, its literal arguments and the expected value."""

    call: str
    args: tuple
    expected: object


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]
    required: int  # parameters without defaults


def parse_examples(prompt: str, entry_point: str) -> list[Example]:
    """The examples that `prompt` states for `entry_point`, in order of appearance, without repeats."""
    signature = parse_signature(prompt, entry_point)
    if signature is None:
        return []
    text = _docstring(prompt, entry_point) or prompt
    found = (_call_examples(text, entry_point, signature) + _for_examples(text, entry_point, signature)
             + _input_output_examples(text, entry_point, signature))
    unique: dict[str, Example] = {}
    for example in found:
        unique.setdefault(repr((example.args, example.expected)), example)
    return list(unique.values())


def parse_signature(prompt: str, entry_point: str) -> Signature | None:
    function = _function_node(prompt, entry_point)
    if function is None or function.args.vararg or function.args.kwonlyargs:
        return None
    params = tuple(a.arg for a in function.args.posonlyargs + function.args.args)
    return Signature(params, len(params) - len(function.args.defaults))


def outputs_match(expected: object, actual: object) -> bool:
    """`expected == actual` as a test would check it, with a relative tolerance for floats."""
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
            return math.isclose(expected, actual, rel_tol=1e-6, abs_tol=1e-9)
        return False
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return (type(expected) is type(actual) and len(expected) == len(actual)
                and all(outputs_match(e, a) for e, a in zip(expected, actual)))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(outputs_match(v, actual[k]) for k, v in expected.items())
    try:
        return bool(expected == actual)
    except Exception:
        return False


def parse_literal(text: str) -> tuple[bool, object]:
    """(True, value) when `text` states one literal value, (False, None) otherwise."""
    text = text.strip()
    for candidate in _literal_candidates(text):
        ok, value = _literal_eval(candidate)
        if ok and candidate.startswith("(") and not isinstance(value, tuple):
            return False, None  # `("a")`: a string to Python, most likely a 1-tuple to its writer
        if ok:
            return True, value
    return False, None


# --- the prompt's function ----------------------------------------------------------------------

def _function_node(prompt: str, entry_point: str) -> ast.FunctionDef | None:
    for source in (prompt, prompt + "\n    pass\n"):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == entry_point:
                return node
    return None


def _docstring(prompt: str, entry_point: str) -> str | None:
    function = _function_node(prompt, entry_point)
    return ast.get_docstring(function) if function is not None else None


# --- values -------------------------------------------------------------------------------------

def _literal_eval(text: str) -> tuple[bool, object]:
    if not text:
        return False, None
    if text.lower() in _BOOLEAN_WORDS:
        return True, _BOOLEAN_WORDS[text.lower()]
    try:
        return True, ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _literal_candidates(text: str) -> list[str]:
    """`text` as is, then with trailing punctuation, a comment, a parenthesised remark or all but
    the last `= v` of a worked calculation taken off."""
    candidates = [text, text.rstrip(".,;")]
    if "#" in text:
        candidates.append(text.split("#", 1)[0].strip())
    if " = " in text:
        candidates.append(text.rsplit(" = ", 1)[1].strip().rstrip(".,;"))
    remark = re.match(r"^(.*?\S)\s+\([^()]*\)\s*\.?$", text)
    if remark:
        candidates.append(remark.group(1))
    return candidates


def _literal_args(call: ast.Call, signature: Signature) -> tuple | None:
    """The call's arguments as positional values, or None unless all are literals that fit."""
    try:
        values = [ast.literal_eval(a) for a in call.args]
        keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if any(a is None for a in keywords) or any(isinstance(a, ast.Starred) for a in call.args):
        return None
    return _bind(values, keywords, signature)


def _bind(values: list, keywords: dict, signature: Signature) -> tuple | None:
    names = signature.params
    if len(values) > len(names) or any(k not in names[len(values):] for k in keywords):
        return None
    bound = values + [keywords[n] for n in names[len(values):] if n in keywords]
    if len(bound) != len(values) + len(keywords) or len(bound) < signature.required:
        return None  # a keyword skipped a parameter, or required ones are missing
    return tuple(bound)


# --- form 1: calls of the entry point -----------------------------------------------------------

def _call_examples(text: str, entry_point: str, signature: Signature) -> list[Example]:
    examples = []
    definitions = _states_definitions(text, entry_point, signature)
    for match in re.finditer(rf"(?<![\w.]){re.escape(entry_point)}\s*\(", text):
        end = _closing_paren(text, match.end() - 1)
        if end is None:
            continue
        line_start = text.rfind("\n", 0, match.start()) + 1
        if not _CALL_PREFIX.match(text[line_start:match.start()]):
            continue
        call_text = text[match.start():end + 1]
        args = _call_args(call_text, signature)
        if args is None:
            continue
        expected = _expected_after(text, end + 1, doctest=">>>" in text[line_start:match.start()],
                                   allow_assignment=not definitions)
        if expected is not None:
            examples.append(Example(" ".join(call_text.split()), args, expected[0]))
    return examples


def _call_args(call_text: str, signature: Signature) -> tuple | None:
    try:
        node = ast.parse(call_text.strip(), mode="eval").body
    except SyntaxError:
        return None
    return _literal_args(node, signature) if isinstance(node, ast.Call) else None


def _closing_paren(text: str, open_at: int) -> int | None:
    """Index of the parenthesis that closes the one at `open_at`, skipping string literals."""
    depth, quote, i = 0, "", open_at
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return i if char == ")" else None
        i += 1
    return None


def _states_definitions(text: str, entry_point: str, signature: Signature) -> bool:
    """Whether the docstring defines the function by equations like `f(n) = f(n - 1) + ...`: its
    `f(x) = v` lines are then part of a definition (e.g. of a sequence), not of the return value."""
    for match in re.finditer(rf"(?<![\w.]){re.escape(entry_point)}\s*\(([^()\n]*)\)\s*=(?!=)", text):
        if _call_args(f"{entry_point}({match.group(1)})", signature) is None:
            return True
    return False


def _expected_after(text: str, position: int, doctest: bool, allow_assignment: bool) -> tuple | None:
    """(value,) stated after a call that ends at `position`, or None."""
    line_end = text.find("\n", position)
    line_end = len(text) if line_end < 0 else line_end
    rest = text[position:line_end]
    operator = _OPERATOR.match(rest)
    if operator and (operator.group(1) != "=" or allow_assignment):
        return _value_from(operator.group(2), text[line_end:])
    if doctest and not rest.strip():
        lines = []
        for line in text[line_end + 1:].split("\n"):
            if not line.strip() or line.strip().startswith(">>>"):
                break
            lines.append(line.strip())
        ok, value = parse_literal(" ".join(lines)) if lines else (False, None)
        return (value,) if ok else None
    return None


def _value_from(first_line: str, following: str) -> tuple | None:
    """A literal that starts on `first_line` and may continue over the next lines while brackets
    are open."""
    ok, value = parse_literal(first_line)
    if ok:
        return (value,)
    text = first_line
    for line in following.split("\n")[1:6]:
        if _bracket_depth(text) <= 0:
            break
        text += " " + line.strip()
        ok, value = parse_literal(text)
        if ok:
            return (value,)
    return None


def _bracket_depth(text: str) -> int:
    return sum(text.count(c) for c in "([{") - sum(text.count(c) for c in ")]}")


# --- form 2: "For a = x, b = y the output should be z" ------------------------------------------

def _for_examples(text: str, entry_point: str, signature: Signature) -> list[Example]:
    examples = []
    for line in text.split("\n"):
        match = _FOR_OUTPUT.match(line)
        if not match:
            continue
        args = _named_args(match.group(1), signature)
        ok, expected = parse_literal(match.group(2))
        if args is not None and ok:
            examples.append(Example(_call_text(entry_point, args), args, expected))
    return examples


def _named_args(text: str, signature: Signature) -> tuple | None:
    """Arguments from `a = x, b = y` (or `a: x`) naming parameters of the signature; a bare literal
    stands for the only parameter."""
    text = re.sub(r"(?m)^\s*(\w+)\s*:\s*", r"\1 = ", text.strip()).replace("\n", ", ")
    try:
        node = ast.parse(f"_f({text})", mode="eval").body
    except SyntaxError:
        node = None
    if isinstance(node, ast.Call) and not node.args and node.keywords:
        return _literal_args(node, signature)
    if len(signature.params) == 1:
        ok, value = parse_literal(text)
        return (value,) if ok else None
    return None


def _call_text(entry_point: str, args: tuple) -> str:
    return f"{entry_point}({', '.join(repr(a) for a in args)})"


# --- form 3: "Input: ... Output: ..." blocks ----------------------------------------------------

def _input_output_examples(text: str, entry_point: str, signature: Signature) -> list[Example]:
    examples = []
    pattern = re.compile(r"^[ \t]*Input\s*:(.*?)^[ \t]*Output\s*:(.*?)$", re.MULTILINE | re.DOTALL)
    for match in pattern.finditer(text):
        args = _named_args(match.group(1), signature)
        ok, expected = parse_literal(match.group(2))
        if args is not None and ok:
            examples.append(Example(_call_text(entry_point, args), args, expected))
    return examples
