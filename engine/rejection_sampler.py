"""Verification of drafts against the model's own choices.

`accepted_length` is what the engine runs: with the sampler's position-keyed
noise, the token the model would emit at each draft position is known, so the
longest agreeing prefix is accepted and the first disagreeing token is the
model's own. `reference_speculative_sample` is the textbook rule for a
deterministic draft (accept x with probability p(x), else sample p with x
removed); the tests check that both give plain sampling's distribution.
"""
from __future__ import annotations

from typing import Sequence

import torch


def accepted_length(sampled: Sequence[int], draft: Sequence[int]) -> int:
    """How many draft tokens equal the tokens sampled before them (sampled has len(draft) + 1 rows)."""
    m = 0
    while m < len(draft) and sampled[m] == draft[m]:
        m += 1
    return m


def reference_speculative_sample(probs: torch.Tensor, draft: Sequence[int], generator: torch.Generator) -> list[int]:
    """probs: [len(draft) + 1, V], the target distribution after each draft prefix."""
    out: list[int] = []
    for j, x in enumerate(draft):
        p = probs[j]
        if torch.rand((), generator=generator).item() < p[x].item():
            out.append(int(x))
            continue
        residual = p.clone()
        residual[x] = 0.0
        out.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(probs[len(draft)], 1, generator=generator)))
    return out
