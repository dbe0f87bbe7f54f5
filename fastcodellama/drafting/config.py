"""Configuration of copy-draft speculative decoding, and the proposer built from it."""
from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("prediction", "self", "sibling", "other")
POLICIES = ("adaptive", "fixed")
INDEX_TABLES = ("auto", "c", "dict")


@dataclass(frozen=True)
class SpecConfig:
    """What to copy drafts from and how much to draft.

    n, max_match: suffix lengths tried, longest (max_match) first, down to n.
    k: the longest draft a sequence gets in one step.
    sources: texts a draft may be copied from: "prediction" (the output a client predicted for its
        request, when it sent one), "self" (prompt + own output), "sibling" (the other samples of
        the same request, as far as they have got), "other" (finished outputs of other requests, a
        pool of at most `other_pool_tokens` tokens, oldest evicted first).
    budget: at most this many draft tokens in one step over all sequences (None: the policy and
        the engine's own budget decide).
    policy: "adaptive" drafts where the expected accepted tokens pay for their cost, as the engine
        learns it from its own steps (fastcodellama/drafting/policy.py); "fixed" drafts
        min(k, what the copy offers) for every sequence every step, like the ceiling study,
        trimmed to the budget by expected gain.
    index_tables: the n-gram indexes' tables: "c" (a C extension built at first use), "dict"
        (Python dicts, the reference) or "auto" (C when it builds). They give the same drafts.
    """

    enabled: bool = True
    n: int = 1
    k: int = 20
    max_match: int = 4
    sources: tuple[str, ...] = SOURCES
    other_pool_tokens: int = 100_000
    budget: int | None = None
    policy: str = "adaptive"
    index_tables: str = "auto"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_match < self.n:
            raise ValueError(f"max_match ({self.max_match}) must be >= n ({self.n})")
        if self.max_match > 8:
            raise ValueError(f"max_match must be <= 8 (keys pack 8 tokens), got {self.max_match}")
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if not isinstance(self.sources, tuple):
            object.__setattr__(self, "sources", tuple(self.sources))
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ValueError(f"unknown sources {bad}; choose from {SOURCES}")
        if self.other_pool_tokens < 0:
            raise ValueError(f"other_pool_tokens must be >= 0, got {self.other_pool_tokens}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget must be >= 0 or None, got {self.budget}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.index_tables not in INDEX_TABLES:
            raise ValueError(f"index_tables must be one of {INDEX_TABLES}, got {self.index_tables!r}")

