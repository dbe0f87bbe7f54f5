"""Copy-draft speculative decoding: the proposer the engine asks for drafts, its n-gram indexes,
the acceptance model, the step-cost model and the policy that decides how much to draft."""
from __future__ import annotations

from fastcodellama.drafting.config import SpecConfig
from fastcodellama.drafting.proposer import CopyProposer


def build_proposer(config: SpecConfig | None = None, search_time: float | None = None) -> CopyProposer:
    return CopyProposer(config or SpecConfig(), search_time)


__all__ = ["SpecConfig", "CopyProposer", "build_proposer"]
