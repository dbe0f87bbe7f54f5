"""What a long command shows while it works: each start-up phase on one line as it happens, and a
bar over generated tokens with the live tokens/s and an estimate of the time left.

The estimate: a sample that has produced g tokens is expected to end at the mean length of the
finished samples longer than g (at max_tokens while none is); samples not started yet at the mean
of all finished ones. It starts as an upper bound and sharpens as samples finish.
"""
from __future__ import annotations

import bisect
import itertools
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

TOKEN_BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/~{total_fmt} tokens "
                    "[{elapsed}<~{remaining}, {rate_fmt}]{postfix}")


class Phases:
    """Start-up phases, each printed as `label ... 1.2 s` on one line (on stderr) as it happens."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        out = self.stream or sys.stderr
        self._write(out, f"{label} ...")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self._write(out, " stopped\n")  # the error or "interrupted" then starts a line of its own
            raise
        self._write(out, f" {time.perf_counter() - start:.1f} s\n")

    def _write(self, out: TextIO, text: str) -> None:
        if self.enabled:
            out.write(text)
            out.flush()


def expected_total(finished: list[int], running: list[int], unseen: int, max_tokens: int) -> float:
    """Expected tokens of a job: `finished` are the lengths of finished samples (sorted), `running`
    the tokens so far of the others, `unseen` the samples not started yet."""
    suffix = [0, *itertools.accumulate(reversed(finished))]  # suffix[j]: sum of the j longest

    def expected_end(g: int) -> float:
        longer = len(finished) - bisect.bisect_right(finished, g)
        return suffix[longer] / longer if longer else float(max(max_tokens, g))

    return (sum(finished) + sum(max(g, expected_end(g)) for g in running)
            + unseen * (expected_end(-1) if finished else max_tokens))


class TokenProgress:
    """A bar over generated tokens of `samples` samples of at most `max_tokens` each.

    `due()` says when the caller should hand over a snapshot of every running request
    (`observe`) and the engine's token count (`refresh`); in between, only finished requests
    need to be observed."""

    def __init__(self, samples: int, max_tokens: int, enabled: bool = True, refresh_s: float = 0.5,
                 desc: str = "generating") -> None:
        self.samples, self.max_tokens, self.refresh_s, self.enabled = samples, max_tokens, refresh_s, enabled
        self._finished: list[int] = []  # sorted lengths
        self._running: dict[tuple[str, int], int] = {}
        self._done: set[tuple[str, int]] = set()
        self._last = 0.0
        interactive = enabled and (sys.stderr.isatty() if hasattr(sys.stderr, "isatty") else False)
        # delay: the first display is __enter__'s, inside `with`, so that __exit__ ends a line Ctrl-C cut short
        self.bar = tqdm(total=samples * max_tokens, desc=desc, unit=" tokens", disable=not enabled, delay=1e-3,
                        bar_format=TOKEN_BAR_FORMAT, mininterval=0.5 if interactive else 10.0, dynamic_ncols=True)

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self._last >= self.refresh_s

    def observe(self, request_id: str, completions) -> None:
        """The state of one request's samples (engine CompletionOutputs)."""
        for c in completions:
            key = (request_id, c.index)
            if key in self._done:
                continue
            if c.finish_reason is not None:
                self._done.add(key)
                self._running.pop(key, None)
                bisect.insort(self._finished, len(c.token_ids))
            else:
                self._running[key] = len(c.token_ids)

    def refresh(self, generated: int) -> None:
        """`generated`: tokens generated so far by the job's samples."""
        self._last = time.monotonic()
        unseen = max(0, self.samples - len(self._done) - len(self._running))
        total = expected_total(self._finished, list(self._running.values()), unseen, self.max_tokens)
        self.bar.total = max(generated, round(total))
        self.bar.set_postfix_str(f"samples {len(self._done)}/{self.samples}", refresh=False)
        self.bar.update(generated - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "TokenProgress":
        if self.enabled:
            try:
                self.bar.refresh()
            except BaseException as e:  # Ctrl-C right as the bar first shows: `with` never calls __exit__
                self.__exit__(type(e), e, e.__traceback__)
                raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close()
        if exc_type is not None and self.enabled:
            sys.stderr.write("\n")  # what follows (an error, "interrupted: ...") starts a line of its own
