"""The pass@k job's data: its parameters, one task's pending request, what each Ray replica
builds, and the job's counters."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine import EngineConfig, SamplingParams
from engine.outputs import SpecStats
from fastcodellama.drafting import SpecConfig

CODEX_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass
class JobStats:
    samples: int = 0
    tokens: int = 0
    wall: float = 0.0
    spec: SpecStats = field(default_factory=SpecStats)


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
        if self.passk < 1:
            raise ValueError(f"passk must be >= 1, got {self.passk}")
        self.params(1, 0)  # the sampling values are checked here, before any model loads

    def params(self, n: int, seed: int) -> SamplingParams:
        top_p = self.top_p if self.temperature > 0 else 1.0
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
