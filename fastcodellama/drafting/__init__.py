"""Copy-draft speculative decoding: the proposer the engine asks for drafts, its n-gram indexes,
the acceptance model, the step-cost model and the policy that decides how much to draft."""
from __future__ import annotations

from typing import Callable

from fastcodellama.drafting.config import SpecConfig
from fastcodellama.drafting.proposer import CopyProposer


def build_proposer(config: SpecConfig | None = None,
                   search_time: float | Callable[[int], float] | None = None) -> CopyProposer:
    """`search_time`: the seconds per query the policy is told a search costs, at every batch or as a
    function of the number of queries (None: measured)."""
    told = (lambda n: search_time) if isinstance(search_time, (int, float)) else search_time
    return CopyProposer(config or SpecConfig(), told)


__all__ = ["SpecConfig", "CopyProposer", "build_proposer"]
