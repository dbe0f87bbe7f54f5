"""What the engine hands back: one RequestOutput per request, one CompletionOutput per sample."""
from __future__ import annotations

import itertools
from collections import abc
from dataclasses import dataclass, field
from typing import Any


class Prefix(abc.Sequence):
    """The first n items of a list that only ever grows (a sample's tokens, their logprobs): a
    snapshot taken for nothing. A stream's output is built anew at every step, and a copy of the
    list there would cost each stream its whole length per token. Reads as a list (slices are
    lists, equal to lists), and pickles as one."""

    __slots__ = ("_items", "_n")
    __hash__ = None  # type: ignore[assignment]  # as a list's

    def __init__(self, items: list, n: int | None = None) -> None:
        self._items, self._n = items, len(items) if n is None else n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step == 1:
                return self._items[start:max(start, stop)]
            return [self._items[j] for j in range(start, stop, step)]
        if not -self._n <= i < self._n:
            raise IndexError("index out of range")
        return self._items[i % self._n]

    def __iter__(self):
        return itertools.islice(self._items, self._n)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, (list, Prefix)):
            return len(other) == self._n and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))

    def __reduce__(self):
        return list, (list(self),)


@dataclass
class SpecStats:
    """Speculation counters of one sample (or summed over a job)."""

    verify_steps: int = 0  # forwards in which this sequence carried a draft
    decode_steps: int = 0  # forwards that produced tokens for this sequence
    drafted: dict[str, int] = field(default_factory=dict)  # by source
    accepted: dict[str, int] = field(default_factory=dict)  # by source

    def add(self, other: "SpecStats") -> None:
        self.verify_steps += other.verify_steps
        self.decode_steps += other.decode_steps
        for src, n in other.drafted.items():
            self.drafted[src] = self.drafted.get(src, 0) + n
        for src, n in other.accepted.items():
            self.accepted[src] = self.accepted.get(src, 0) + n

    @property
    def total_drafted(self) -> int:
        return sum(self.drafted.values())

    @property
    def total_accepted(self) -> int:
        return sum(self.accepted.values())

    def as_dict(self) -> dict:
        return {
            "decode_steps": self.decode_steps,
            "verify_steps": self.verify_steps,
            "drafted": dict(self.drafted),
            "accepted": dict(self.accepted),
        }


@dataclass
class CompletionOutput:
    """One sample now. Its lists are read-only: the engine's are Prefix snapshots."""

    index: int
    text: str
    token_ids: abc.Sequence[int]
    finish_reason: str | None  # "stop", "length", "abort" or None while running
    logprobs: abc.Sequence[float] | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    spec: SpecStats = field(default_factory=SpecStats)
    # Per token, the likeliest tokens and their log probabilities (params.top_logprobs > 0).
    top_logprobs: abc.Sequence[tuple[tuple[int, float], ...]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None
    # Prompt tokens the prefix cache held when the request's first sample started (not computed again).
    cached_prompt_tokens: int = 0

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)
