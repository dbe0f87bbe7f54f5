"""How many draft tokens each sequence gets in a step: expected gain against step cost.

The step's throughput is (N + accepted) / cost(N, drafted) for N sequences (each yields
accepted + 1 tokens, each feeds 1 + draft tokens; fastcodellama.drafting.cost.StepCost). All
candidate tokens are ranked by their acceptance probability g_j (fastcodellama.drafting.acceptance);
the policy takes the prefix of that ranking, at most `budget` long, that maximizes the expected
throughput on the cost curve. The whole prefix is searched, not stopped at the first token that
does not pay, because measured curves are flat in steps. On a flat curve that gives long drafts;
on a steep one (or at large batch, where the step is already compute bound) short drafts or none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fastcodellama.drafting.acceptance import AcceptanceModel
from fastcodellama.drafting.cost import CostCurve, StepCost

MIN_GAIN = 1e-3             # draft tokens less likely than this are never worth a slot
DRAFT_MARGIN = 0.05         # drafts must promise this much more throughput than plain decoding:
                            # acceptance and cost are estimates, and drafting must never lose


@dataclass(slots=True)
class Candidate:
    """One query's best draft: first-token probability `a`, at most `limit` tokens, whose later
    tokens follow `survival` (AcceptanceModel.survival_of its source and match length)."""

    a: float
    limit: int
    survival: list[float]


def _probe_points(budget: int) -> list[int]:
    """1..16, then powers of two up to the budget, and the budget: enough to tell whether any
    draft length pays on a measured (piecewise linear) curve."""
    points = list(range(1, min(budget, 16) + 1))
    k = 32
    while k < budget:
        points.append(k)
        k *= 2
    if budget > 16:
        points.append(budget)
    return points


class DraftPolicy:
    """Splits a step's draft budget across sequences (see the module docstring)."""

    def __init__(self, model: AcceptanceModel, cost: StepCost | CostCurve, adaptive: bool = True) -> None:
        self.model, self.adaptive = model, adaptive
        self.cost = cost

    @property
    def cost(self) -> StepCost:
        return self._cost

    @cost.setter
    def cost(self, cost: StepCost | CostCurve) -> None:
        self._cost = cost if isinstance(cost, StepCost) else StepCost(cost)
        self._can_pay: dict[tuple[int, int, int], bool] = {}

    def rescale(self, decode_scale: float) -> None:
        self._cost.rescale(decode_scale)
        self._can_pay = {}

    def allocate(self, cands: Sequence[Candidate | None], budget: int) -> list[int]:
        """Draft lengths, one per query (None = nothing to copy), each <= its limit, summing <= budget."""
        n_q = len(cands)
        lens = [0] * n_q
        if budget <= 0 or n_q == 0:
            return lens
        if not self.adaptive:
            for i, c in enumerate(cands):
                if c is not None:
                    lens[i] = c.limit
            if sum(lens) <= budget:
                return lens
        gains: list[float] = []
        owner: list[int] = []
        for qi, c in enumerate(cands):
            if c is None or c.limit <= 0 or c.a <= 0.0:
                continue
            surv = c.survival
            a = c.a
            last = len(surv) - 1
            for j in range(c.limit):
                g = a * surv[j if j < last else last]
                if g < MIN_GAIN and self.adaptive:
                    break
                gains.append(g)
                owner.append(qi)
        if not gains:
            return [0] * n_q
        order = sorted(range(len(gains)), key=gains.__getitem__, reverse=True)
        if len(order) > budget:
            del order[budget:]
        take = len(order) if not self.adaptive else self._best_prefix(n_q, gains, order)
        lens = [0] * n_q
        for idx in order[:take]:
            lens[owner[idx]] += 1
        return lens

    def can_pay(self, n_q: int, budget: int) -> bool:
        """Whether drafts as likely as the best the acceptance model now knows of (for every
        sequence) could beat plain decoding by DRAFT_MARGIN at this batch. When not (a large
        batch on a compute-bound device, or copies that are rarely accepted), the search for
        copies is skipped: looking them up for hundreds of sequences costs a step several percent."""
        self.model.refresh()
        key = (n_q, budget, self.model.best_version)
        if key not in self._can_pay:
            if len(self._can_pay) > 4096:
                self._can_pay.clear()
            self._can_pay[key] = self._can_pay_now(n_q, budget)
        return self._can_pay[key]

    def _can_pay_now(self, n_q: int, budget: int) -> bool:
        gains = self.model.best_gains()
        cum = [0.0]
        for g in gains:
            cum.append(cum[-1] + g)
        points = [0, *sorted(set(_probe_points(budget)) | {n_q * j for j in range(1, len(gains) + 1)
                                                          if n_q * j <= budget})]
        costs = self.cost.at(n_q, points)
        plain = n_q / costs[0] * (1.0 + DRAFT_MARGIN)
        for t, cost in zip(points[1:], costs[1:]):
            full, part = divmod(t, n_q)
            acc = n_q * cum[-1] if full >= len(gains) else n_q * cum[full] + part * gains[full]
            if (n_q + acc) / cost > plain:
                return True
        return False

    def _best_prefix(self, n_q: int, gains: list[float], order: list[int]) -> int:
        cost = self.cost.table(n_q, len(order))
        best, best_t, acc = n_q / cost[0] * (1.0 + DRAFT_MARGIN), 0, float(n_q)
        for t, idx in enumerate(order, 1):
            acc += gains[idx]
            v = acc / cost[t]
            if v > best:
                best, best_t = v, t
        return best_t
