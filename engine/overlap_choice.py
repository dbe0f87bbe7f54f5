"""After a drafting step, queue the next step ahead of its tokens or wait for them.

Queued ahead, the next step keeps the device busy: its rows move on the device by what the draft
got (engine/step_batch.py's Shift), and its drafts can only continue the copies in flight, which
pay where the whole draft is accepted. Waiting, the device idles while the host applies the
tokens and plans the next step, whose drafts are found with those tokens known. Which is worth
more depends on the device's speed against the host's and on how often copies run on: measured,
not modelled. Per batch size (a power of two), the two ways run in turn for windows of WINDOW
steps, and each pair of windows gives the log of the ratio of their tokens per second of wall time
(adjacent windows, which way first alternating from pair to pair: a steady trend in the workload
favours neither); after PAIRS pairs the way their mean favours runs for EXPLOIT windows, then
another pair is measured, and so on (a decayed mean: a belief that turned stale is corrected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW = 16  # steps of one way, measured together
PAIRS = 4  # pairs of windows before the first decision
EXPLOIT = 16  # windows of the way chosen between two pairs of pairs measured
DECAY = 0.8  # of the mean log ratio, per pair


@dataclass
class _Bucket:
    ahead: bool = True  # the way this window runs
    measuring: bool = True  # this window is half of a pair (else: the chosen way runs)
    windows: int = 0  # windows since the last pair was measured (while exploiting)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    first_rate: float | None = None  # the pair's first window's tokens per second
    pairs: int = 0
    log_ratio: float = 0.0  # decayed sum of log(ahead's rate / waiting's), over pairs (its sign: their mean's)

    @property
    def better(self) -> bool:
        return self.log_ratio >= 0.0


class OverlapChoice:
    """Whether to queue the step after a drafting step ahead of its tokens, by batch size."""

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}

    def ahead(self, seqs: int) -> bool:
        """Whether the step after a drafting step of `seqs` sequences is queued ahead."""
        return self._bucket(seqs).ahead

    def observe(self, seqs: int, tokens: int, seconds: float) -> None:
        """A step of `seqs` sequences gave `tokens` in `seconds` of wall time (from the step before
        it to its own tokens applied)."""
        b = self._bucket(seqs)
        b.steps += 1
        b.tokens += tokens
        b.seconds += seconds
        if b.steps >= WINDOW:
            rate = b.tokens / b.seconds if b.seconds > 0.0 else 0.0
            b.steps, b.tokens, b.seconds = 0, 0, 0.0
            self._window_done(b, rate)

    @staticmethod
    def _window_done(b: _Bucket, rate: float) -> None:
        if not b.measuring:
            b.windows += 1
            if b.windows >= EXPLOIT:
                b.measuring, b.ahead, b.first_rate = True, b.pairs % 2 == 0, None
            return
        if b.first_rate is None:  # the pair's first half: the other way next
            b.first_rate, b.ahead = rate, not b.ahead
            return
        if b.first_rate > 0.0 and rate > 0.0:
            ratio = rate / b.first_rate if b.ahead else b.first_rate / rate  # ahead's over waiting's
            b.log_ratio = DECAY * b.log_ratio + math.log(ratio)
        b.pairs += 1
        b.first_rate = None
        if b.pairs >= PAIRS and b.pairs % 2 == 0:
            b.measuring, b.windows, b.ahead = False, 0, b.better
        else:
            b.ahead = b.pairs % 2 == 0  # the next pair begins with the way this one ended with

    def _bucket(self, seqs: int) -> _Bucket:
        key = round(math.log2(max(seqs, 1)))
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket()
        return b
