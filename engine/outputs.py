"""What the engine hands back: one RequestOutput per request, one CompletionOutput per sample."""
from __future__ import annotations

from dataclasses import dataclass, field


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
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "abort" or None while running
    logprobs: list[float] | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    spec: SpecStats = field(default_factory=SpecStats)
    # Per token, the likeliest tokens and their log probabilities (params.top_logprobs > 0).
    top_logprobs: list[tuple[tuple[int, float], ...]] | None = None

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
