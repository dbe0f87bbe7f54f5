"""The prompt of an /infill request, in the model's own infilling format, cut to fit the context.

Layout: other files (`input_extra`) first, with the model's repo-level tokens where it has them
(engine/tokenizer.py fim_prompt), then prefix / suffix / middle token, then `prompt` (the cursor's
line so far) after the middle token, as llama.cpp places it.

What does not fit goes, in this order: other files, oldest first; then the suffix is kept to a
quarter of the room and the prefix loses its first lines. Cuts are at line boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from engine.tokenizer import Tokenizer


@dataclass(frozen=True)
class InfillParts:
    prefix: str
    suffix: str
    files: tuple[tuple[str, str], ...]  # (name, text), oldest first
    middle: str  # llama.cpp's `prompt`: text after the middle token


@dataclass(frozen=True)
class InfillPrompt:
    ids: list[int]
    truncated: bool  # whether something was left out to fit


def infill_ids(tokenizer: Tokenizer, parts: InfillParts) -> list[int]:
    ids = tokenizer.fim_prompt(parts.prefix, parts.suffix, files=parts.files)
    return ids + tokenizer.encode_continuation(parts.middle)  # running text: no dummy-prefix space


def fit_infill(tokenizer: Tokenizer, parts: InfillParts, budget: int, max_token_chars: int | None) -> InfillPrompt:
    """The prompt in at most `budget` tokens (longer only when the middle alone is: the caller's
    length check refuses it). `max_token_chars`: most characters one token covers, which bounds
    how much text can be read at all before tokenizing."""
    start = parts
    if max_token_chars:  # text beyond `most` characters is more than `budget` tokens: it can never fit
        most = budget * max_token_chars
        parts = replace(parts, prefix=_last_lines(parts.prefix, most), suffix=_first_lines(parts.suffix, most),
                        files=_newest_files(parts.files, most))
    ids = infill_ids(tokenizer, parts)
    if len(ids) <= budget:
        return InfillPrompt(ids, parts != start)
    fits = lambda p: len(infill_ids(tokenizer, p)) <= budget  # noqa: E731
    files = parts.files
    kept = _largest(lambda k: fits(replace(parts, files=files[len(files) - k:])), len(files))
    if kept is not None:
        return InfillPrompt(infill_ids(tokenizer, replace(parts, files=files[len(files) - kept:])), True)
    parts = replace(parts, files=())
    suffix_lines = parts.suffix.splitlines(keepends=True)
    quarter = _largest(lambda j: len(tokenizer.encode("".join(suffix_lines[:j]), add_bos=False)) <= budget // 4,
                       len(suffix_lines)) or 0
    for suffix in ("".join(suffix_lines[:quarter]), ""):
        trial = replace(parts, suffix=suffix)
        prefix_lines = trial.prefix.splitlines(keepends=True)
        n = len(prefix_lines)
        kept = _largest(lambda i: fits(replace(trial, prefix="".join(prefix_lines[n - i:]))), n)
        if kept is not None:
            return InfillPrompt(infill_ids(tokenizer, replace(trial, prefix="".join(prefix_lines[n - kept:]))), True)
    return InfillPrompt(infill_ids(tokenizer, replace(parts, prefix="", suffix="")), True)


def _largest(fits: Callable[[int], bool], most: int) -> int | None:
    """The largest k in [0, most] with fits(k), for fits true up to some k and false after; None
    when even 0 does not fit."""
    if not fits(0):
        return None
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _newest_files(files: tuple[tuple[str, str], ...], chars: int) -> tuple[tuple[str, str], ...]:
    """The newest files whose texts add up to at most `chars` characters."""
    total, kept = 0, 0
    for _, text in reversed(files):
        total += len(text)
        if total > chars:
            break
        kept += 1
    return files[len(files) - kept:]


def _last_lines(text: str, chars: int) -> str:
    """The end of `text`: its last `chars` characters, from the first line start among them."""
    if len(text) <= chars:
        return text
    tail = text[-chars:]
    nl = tail.find("\n")
    return tail[nl + 1:] if nl >= 0 else ""


def _first_lines(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    head = text[:chars]
    nl = head.rfind("\n")
    return head[:nl + 1] if nl >= 0 else ""
