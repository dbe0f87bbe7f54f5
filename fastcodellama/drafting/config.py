"""Configuration of copy-draft speculative decoding, and the proposer built from it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

SOURCES = ("self", "sibling", "other")
POLICIES = ("adaptive", "fixed")
NAMED_COST_CURVES = ("measured", "cpu", "h100", "flat")
INDEX_TABLES = ("auto", "c", "dict")

# A cost curve is a name from NAMED_COST_CURVES or measured points ((tokens in step, cost), ...);
# only the ratios matter: the policy normalizes to the cost of a 1-token step.
CostCurveSpec = Union[str, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class SpecConfig:
    """What to copy drafts from and how much to draft.

    n, max_match: suffix lengths tried, longest (max_match) first, down to n.
    k: the longest draft a sequence gets in one step.
    sources: texts a draft may be copied from: "self" (prompt + own output), "sibling" (the other
        samples of the same request, as far as they have got), "other" (finished outputs of other
        requests, a pool of at most `other_pool_tokens` tokens, oldest evicted first).
    budget: at most this many draft tokens in one step over all sequences (None: the policy and
        the engine's own budget decide).
    policy: "adaptive" gives draft tokens where their expected accepted tokens pay for their cost
        on `cost_curve`; "fixed" drafts min(k, what the copy offers) for every sequence, like the
        ceiling study, trimmed to the budget by expected gain.
    cost_curve: step cost by tokens in the step: "measured" (default) is the engine's own
        measurement at start-up (engine/cost_model.py); "cpu" and "h100" are the project's
        tables of linear-layer cost, "flat" makes drafting free; or ((tokens, cost), ...).
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
    cost_curve: CostCurveSpec = "measured"
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
        curve = self.cost_curve
        if isinstance(curve, str):
            if curve not in NAMED_COST_CURVES:
                raise ValueError(f"cost_curve must be one of {NAMED_COST_CURVES} or points, got {curve!r}")
        else:
            points = tuple((int(t), float(c)) for t, c in curve)
            if not points or any(t < 1 or c <= 0 for t, c in points):
                raise ValueError("cost_curve points must be (tokens >= 1, cost > 0) pairs")
            object.__setattr__(self, "cost_curve", points)
        if self.index_tables not in INDEX_TABLES:
            raise ValueError(f"index_tables must be one of {INDEX_TABLES}, got {self.index_tables!r}")

