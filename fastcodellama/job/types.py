"""The pass@k job's data: its parameters, one task's pending request, what each Ray replica
builds, and the job's counters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine (and torch) load only when a job runs, not to parse its options
    from engine import EngineConfig, SamplingParams
    from engine.outputs import SpecStats
    from fastcodellama.drafting import SpecConfig

CODEX_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def _spec_stats() -> "SpecStats":
    from engine.outputs import SpecStats

    return SpecStats()


@dataclass
class JobStats:
    samples: int = 0  # written by this run
    tokens: int = 0
    wall: float = 0.0  # generation only: from the first step to the last sample written
    spec: "SpecStats" = field(default_factory=_spec_stats)
    resumed: int = 0  # samples the file held already


@dataclass(frozen=True)
class JobParams:
    """How every task is sampled: `passk` samples each; `params(n, seed)` gives the request of
    the n samples still missing from a task."""

    passk: int
    seed: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = CODEX_STOPS

    def __post_init__(self) -> None:
        # Checked here, without the engine, so that a bad value stops a job before anything loads;
        # SamplingParams checks them again.
        object.__setattr__(self, "stop", tuple(self.stop))
        problems = [
            (self.passk >= 1, f"passk must be >= 1, got {self.passk}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (0.0 <= self.temperature < float("inf"), f"temperature must be >= 0, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty")]
        for ok, message in problems:
            if not ok:
                raise ValueError(message)

    @property
    def effective_top_p(self) -> float:
        return self.top_p if self.temperature > 0 else 1.0  # greedy ignores it

    def params(self, n: int, seed: int) -> "SamplingParams":
        from engine import SamplingParams

        top_p = self.effective_top_p
        return SamplingParams(n=n, temperature=self.temperature, top_p=top_p, max_tokens=self.max_tokens,
                              stop=self.stop, seed=seed)


@dataclass(frozen=True)
class PendingTask:
    """One task's missing samples as one engine request (its samples draft from each other)."""

    request_id: str
    task_id: str
    prompt: str
    params: SamplingParams


@dataclass(frozen=True)
class ReplicaSpec:
    """What each Ray replica builds: the engine and the speculation (None: plain decoding)."""

    engine: EngineConfig
    spec: SpecConfig | None
