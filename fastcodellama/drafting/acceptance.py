"""Acceptance model of copied drafts, fitted online and exponentially decayed, started from
priors fitted on the real-trace replay (benchmarks/proposer_replay.py --fit-priors), per bucket
b = (source, match-length bucket):
  - a draft's first token is accepted with probability first[b];
  - token i >= 1 is accepted, given tokens 0..i-1 were, with probability cont[b][i] (a
    per-position geometric model: copies that have started tend to go on, so cont rises with i);
  - each sequence's recent accepted/predicted ratio scales the first-token probability.
So the j-th draft token of a candidate is accepted with probability
g_j = a * prod_{i=1..j} cont[b][i], non-increasing in j.
"""
from __future__ import annotations

import bisect
import itertools
import operator
from dataclasses import dataclass
from typing import Sequence

from fastcodellama.drafting.config import SOURCES

MATCH_CAP = 16      # match lengths are measured (backwards past max_match) up to this
POSITIONS = 64      # draft positions with their own continuation statistics; later ones share the last
# Match-length buckets: 1, 2, 3, 4, 5-7, 8-15, 16+ (long matches are rarer and behave alike).
_ML_BUCKET = (0, 0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6)
ML_BUCKETS = ("1", "2", "3", "4", "5-7", "8-15", "16+")


def ml_bucket(match_len: int) -> int:
    if 1 <= match_len <= MATCH_CAP:  # every match the proposer measures: no min/max calls
        return _ML_BUCKET[match_len]
    return _ML_BUCKET[min(max(match_len, 1), MATCH_CAP)]


# Continuation statistics are pooled over these position bins for the priors (bin starts).
CONT_BINS = (1, 2, 3, 4, 6, 9, 13, 20)
# Priors: first-token acceptance [source][match-length bucket] and continuation
# [source][bucket][position bin], fitted on the real-trace
# replay of file3 (CodeGen-16B-mono, first 40 tasks, 100 samples each as one request; every
# source's candidate scored at every step; proxy BPE): `benchmarks/proposer_replay.py
# --fit-priors --tasks 40`. file1/file2 (CodeLlama), on which the policy is evaluated, are held out.
PRIOR_FIRST: dict[str, tuple[float, ...]] = {
    "self": (0.385, 0.28, 0.516, 0.611, 0.684, 0.843, 0.787),
    "sibling": (0.335, 0.483, 0.55, 0.646, 0.679, 0.794, 0.829),
    "other": (0.237, 0.311, 0.394, 0.545, 0.481, 0.516, 0.213),
}
PRIOR_CONT: dict[str, tuple[tuple[float, ...], ...]] = {
    "self": (
        (0.32, 0.528, 0.64, 0.668, 0.73, 0.812, 0.837, 0.837),
        (0.547, 0.611, 0.685, 0.695, 0.751, 0.807, 0.883, 0.883),
        (0.585, 0.691, 0.695, 0.701, 0.773, 0.805, 0.845, 0.845),
        (0.579, 0.714, 0.714, 0.714, 0.784, 0.798, 0.85, 0.85),
        (0.715, 0.715, 0.715, 0.787, 0.787, 0.844, 0.907, 0.907),
        (0.776, 0.799, 0.844, 0.844, 0.87, 0.87, 0.895, 0.895),
        (0.909, 0.909, 0.909, 0.916, 0.92, 0.92, 0.92, 0.92),
    ),
    "sibling": (
        (0.555, 0.555, 0.555, 0.635, 0.745, 0.815, 0.815, 0.815),
        (0.57, 0.627, 0.627, 0.645, 0.763, 0.763, 0.763, 0.763),
        (0.611, 0.699, 0.699, 0.717, 0.782, 0.836, 0.836, 0.836),
        (0.687, 0.706, 0.715, 0.739, 0.797, 0.799, 0.822, 0.822),
        (0.693, 0.705, 0.757, 0.759, 0.767, 0.863, 0.863, 0.863),
        (0.793, 0.8, 0.808, 0.808, 0.839, 0.839, 0.906, 0.906),
        (0.873, 0.892, 0.892, 0.892, 0.892, 0.908, 0.908, 0.908),
    ),
    "other": (
        (0.348, 0.409, 0.521, 0.563, 0.754, 0.911, 0.911, 0.911),
        (0.394, 0.481, 0.506, 0.555, 0.724, 0.778, 0.778, 0.778),
        (0.465, 0.592, 0.633, 0.664, 0.835, 0.86, 0.86, 0.86),
        (0.395, 0.613, 0.613, 0.666, 0.735, 0.78, 0.78, 0.78),
        (0.567, 0.65, 0.677, 0.755, 0.837, 0.837, 0.837, 0.837),
        (0.659, 0.659, 0.659, 0.668, 0.737, 0.859, 0.859, 0.859),
        (0.76, 0.842, 0.864, 0.864, 0.926, 0.926, 0.939, 0.939),
    ),
}
PRIOR_WEIGHT = 20.0         # pseudo-observations behind each prior
DECAY = 0.999               # per observation of a bucket: a memory of ~1000 drafts
SEQ_DECAY = 0.8             # per draft of one sequence
SEQ_PRIOR_TOKENS = 2.0      # shrinks a sequence's accepted/predicted ratio toward 1
SEQ_FACTOR_RANGE = (0.25, 4.0)


@dataclass(slots=True)
class _Bucket:
    num: float
    den: float

    def add(self, x: float, decay: float) -> None:
        self.num = self.num * decay + x
        self.den = self.den * decay + 1.0

    @property
    def rate(self) -> float:
        return self.num / self.den if self.den > 0 else 0.0


class AcceptanceModel:
    """Online acceptance statistics by (source, match-length bucket) and draft position."""

    def __init__(self, sources: Sequence[str] = SOURCES, prior_weight: float = PRIOR_WEIGHT,
                 decay: float = DECAY, max_draft: int = POSITIONS) -> None:
        self.sources = tuple(sources)
        self.decay = decay
        self.table_len = min(max(max_draft, 1), POSITIONS)   # survival tables cover this many positions
        w = prior_weight
        nb = len(ML_BUCKETS)
        self.first = {(s, b): _Bucket(_prior_first(s, b) * w, w) for s in SOURCES for b in range(nb)}
        self.cont = {(s, b): [_Bucket(_prior_cont(s, b, i) * w, w) for i in range(POSITIONS)]
                     for s in SOURCES for b in range(nb)}
        self.seq: dict[int, list[float]] = {}      # seq_id -> [accepted, predicted], decayed
        self._dirty: dict[tuple[str, int], bool] = dict.fromkeys(self.first, True)  # stale -> survival too
        self.first_rate: dict[tuple[str, int], float] = {}
        self.survival: dict[tuple[str, int], list[float]] = {}   # [j] = prod_{i=1..j} cont[i]
        self.cumulative: dict[tuple[str, int], list[float]] = {}  # [j] = sum_{i<j} survival[i]
        self._best: dict[tuple[str, ...], list[float]] = {}  # best_gains by the sources asked for
        self._best_age = 0
        # Per bucket of the sources in use, min(first, 0.99) * survival: best_gains' rows, each
        # recomputed only when its bucket was recorded since.
        self._gains: dict[tuple[str, int], list[float]] = {}
        self._stale_gains: set[tuple[str, int]] = {k for k in self.first if k[0] in self.sources}
        self.refresh()  # every table, now: not in the first step's search, whose time the policy weighs

    def record(self, source: str, match_len: int, drafted: int, accepted: int,
               seq_id: int | None = None, predicted: float | None = None) -> None:
        if drafted > 0:
            self.record_at((source, ml_bucket(match_len)), drafted, accepted, seq_id, predicted)

    def record_at(self, key: tuple[str, int], drafted: int, accepted: int,
                  seq_id: int | None = None, predicted: float | None = None) -> None:
        """record() of the bucket key (source, ml_bucket(match_len)) of a draft of drafted > 0
        tokens (a proposer keeps the key of each draft it made: one record a drafted sequence a step)."""
        d = self.decay
        self.first[key].add(1.0 if accepted > 0 else 0.0, d)
        if accepted > 0:
            cont = self.cont[key]
            for i in range(1, min(accepted, drafted - 1) + 1):  # positions reached after the first
                cont[i if i < POSITIONS else POSITIONS - 1].add(1.0 if i < accepted else 0.0, d)
            self._dirty[key] = True  # survival too
        elif key not in self._dirty:
            self._dirty[key] = False
        if seq_id is not None and predicted is not None:
            st = self.seq.get(seq_id)
            if st is None:
                st = self.seq[seq_id] = [0.0, 0.0]
            st[0] = st[0] * SEQ_DECAY + accepted
            st[1] = st[1] * SEQ_DECAY + predicted
        if key[0] in self.sources:
            self._stale_gains.add(key)
        self._best_age += 1

    def forget(self, seq_id: int) -> None:
        self.seq.pop(seq_id, None)

    def seq_factor(self, seq_id: int) -> float:
        st = self.seq.get(seq_id)
        if st is None:
            return 1.0
        f = (st[0] + SEQ_PRIOR_TOKENS) / (st[1] + SEQ_PRIOR_TOKENS)
        lo, hi = SEQ_FACTOR_RANGE
        return lo if f < lo else hi if f > hi else f

    def refresh(self) -> None:
        """Recompute the tables of the buckets recorded since the last refresh."""
        n = self.table_len
        for key, cont_changed in self._dirty.items():
            self.first_rate[key] = self.first[key].rate
            if not cont_changed:
                continue
            # survival[j] = the product of the rates of positions 1..j, cumulative its running sum
            # (itertools' C loops: the same products and sums, in the same order, as a Python loop).
            rates = [1.0] + [b.num / b.den if b.den > 0 else 0.0 for b in self.cont[key][1:n]]
            surv = list(itertools.accumulate(rates, operator.mul))
            self.survival[key], self.cumulative[key] = surv, list(itertools.accumulate(surv, initial=0.0))
        self._dirty.clear()
        if not self._gains or self._best_age >= 16:  # every 16 drafts: a gate, not an estimate
            for key in self._stale_gains:
                a = min(self.first_rate[key], 0.99)
                self._gains[key] = [a * p for p in self.survival[key]]
            self._stale_gains.clear()
            self._best.clear()
            self._best_age = 0

    def best_gains(self, sources: Sequence[str] | None = None) -> list[float]:
        """[j] = the highest probability, over `sources` (default: all in use) and match lengths,
        that the j-th token of a draft is accepted (call refresh first): what the likeliest copy brings."""
        key = self.sources if sources is None else tuple(sources)
        best = self._best.get(key)
        if best is None:
            rows = [g for (source, _), g in self._gains.items() if source in key]
            best = self._best[key] = list(map(max, zip(*rows))) if rows else [0.0] * self.table_len
        return best

    def first_prob(self, source: str, match_len: int, factor: float = 1.0) -> float:
        return self.first_prob_at((source, ml_bucket(match_len)), factor)

    def first_prob_at(self, key: tuple[str, int], factor: float = 1.0) -> float:
        """first_prob() of the bucket key (source, ml_bucket(match_len))."""
        a = self.first_rate[key] * factor
        return 0.99 if a > 0.99 else a

    def survival_of(self, source: str, match_len: int) -> list[float]:
        return self.survival[(source, ml_bucket(match_len))]

    def expected(self, source: str, match_len: int, a: float, length: int) -> float:
        """Expected accepted tokens among the first `length` of a draft whose first token has probability a."""
        return self.expected_at((source, ml_bucket(match_len)), a, length)

    def expected_at(self, key: tuple[str, int], a: float, length: int) -> float:
        """expected() of the bucket key (source, ml_bucket(match_len))."""
        cum = self.cumulative[key]
        if length < len(cum):
            return a * cum[length]
        return a * (cum[-1] + self.survival[key][-1] * (length - len(cum) + 1))

    def snapshot(self, positions: int = 12) -> dict:
        """Current rates: first[source][bucket], cont[source][bucket][position 1..positions]."""
        self.refresh()
        return {s: {"first": [round(self.first_rate[(s, b)], 3) for b in range(len(ML_BUCKETS))],
                    "cont": [[round(x.rate, 3) for x in self.cont[(s, b)][1:positions + 1]]
                             for b in range(len(ML_BUCKETS))]}
                for s in self.sources}


# A client's predicted output has no trace to fit on: assumed mostly right (an edit keeps most of
# the old text), which the online statistics then correct.
PREDICTION_FIRST = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def _prior_first(source: str, bucket: int) -> float:
    if source in PRIOR_FIRST:
        return PRIOR_FIRST[source][bucket]
    return PREDICTION_FIRST[bucket]


def _prior_cont(source: str, bucket: int, i: int) -> float:
    if source in PRIOR_CONT:
        return PRIOR_CONT[source][bucket][max(bisect.bisect_right(CONT_BINS, i) - 1, 0)]
    return min(0.7 + 0.03 * i, 0.95)
