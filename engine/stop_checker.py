"""Appends a sequence's new tokens: its text (incremental detokenization), and where it ends
(an EOS or stop token, a stop string, a line that dedents out of the cursor's block, max_tokens,
the model's context)."""
from __future__ import annotations

import functools
import re
from typing import Sequence as Seq

from engine.sequence import Sequence

DEDENT = "dedent"  # stop_reason of a sequence ended by stop_at_dedent
_BLANK = " \t\r"  # what a line may hold and still be blank (indentation counts spaces and tabs)


class StopChecker:
    def __init__(self, eos_ids: Seq[int], max_model_len: int) -> None:
        self.eos_ids = frozenset(eos_ids)
        self.max_model_len = max_model_len

    def append(self, seq: Sequence, tokens: Seq[int], logprobs: Seq[float] | None,
               top: Seq[tuple[tuple[int, float], ...]] | None = None) -> None:
        """Appends tokens one at a time until the sequence ends (the rest are dropped)."""
        for j, token in enumerate(tokens):
            self.append_one(seq, token, logprobs[j] if logprobs else None, top[j] if top else None)
            if seq.is_finished:
                return

    def append_one(self, seq: Sequence, token: int, logprob: float | None = None,
                   top: tuple[tuple[int, float], ...] | None = None) -> None:
        """Appends one token (the whole of most sequences' steps: no loop, no tuples around it)."""
        p = seq.params
        output = seq.output_token_ids
        output.append(token)
        if seq.first_token_time is None:
            seq.mark_first_token()
        if logprob is not None:
            seq.logprobs.append(logprob)
        if top is not None:
            seq.top_logprobs.append(top)
        if (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            seq.text += seq.detokenizer.flush()
            seq.finish("stop", token)
            return
        piece = seq.detokenizer.add(token)
        if piece:
            seq.text += piece
            if (p.stop or p.stop_at_dedent) and _text_stop(seq, len(piece)):
                return
        # Outputs this long end it: max_tokens, or the model's context.
        if len(output) >= p.max_tokens or len(output) >= self.max_model_len - len(seq.prompt_token_ids):
            seq.text += seq.detokenizer.flush()
            seq.finish("length")


def _text_stop(seq: Sequence, piece_len: int) -> bool:
    """Ends the sequence where the new piece completes a stop string or starts a dedented line,
    whichever comes first in the text (a stop string on a tie; the text stops before it)."""
    p, text = seq.params, seq.text
    hit = stop_string(text, piece_len, p.stop) if p.stop else None
    if p.stop_at_dedent:
        cut = dedent_cut(text, len(text) - piece_len, p.stop_at_dedent)
        if cut is not None and (hit is None or cut < hit[0]):
            hit = (cut, DEDENT)
    if hit is None:
        return False
    seq.text = text[:hit[0]]
    seq.finish("stop", hit[1])
    return True


def stop_string(text: str, piece_len: int, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """The first stop string the new piece (the text's last piece_len characters) completes and
    where it starts; of several starting there, the least in string order."""
    pattern, longest = compiled_stops(stops)
    m = pattern.search(text, max(0, len(text) - piece_len - longest + 1))
    return (m.start(), m.group()) if m is not None else None


@functools.lru_cache(maxsize=1024)
def compiled_stops(stops: tuple[str, ...]) -> tuple[re.Pattern, int]:
    """One search for all of a request's stop strings (checked after every token), in string order
    (a regex takes the first alternative that matches at the leftmost position), and the length of
    the longest."""
    return re.compile("|".join(map(re.escape, sorted(stops)))), max(map(len, stops))


def dedent_cut(text: str, new_from: int, limit: int) -> int | None:
    """Where `text` must end because a line whose first visible character is at or after
    `new_from` is indented by fewer than `limit` columns: that line's start; else None.

    Only lines after a newline count (the first is the rest of the cursor's line); each line is
    judged once, when its first visible character arrives, so a call costs the new text and the
    whitespace runs around it, never the whole line."""
    starts = []
    i = new_from - 1
    while i >= 0 and text[i] in _BLANK:
        i -= 1
    if i >= 0 and text[i] == "\n":  # the line before the new text was still blank: undecided
        starts.append(i + 1)
    j = text.find("\n", new_from)
    while j >= 0:
        starts.append(j + 1)
        j = text.find("\n", j + 1)
    for start in starts:
        k = start
        while k < len(text) and text[k] in _BLANK:
            k += 1
        if k < len(text) and text[k] != "\n":
            indent = sum(c in " \t" for c in text[start:k])
            if indent < limit:
                return start
    return None


def undecided_line_start(text: str) -> int | None:
    """Start of the last line when it may still turn out dedented (after a newline, blank so
    far): a stream holds it back until its first visible character decides."""
    i = len(text) - 1
    while i >= 0 and text[i] in _BLANK:
        i -= 1
    return i + 1 if i >= 0 and text[i] == "\n" else None
