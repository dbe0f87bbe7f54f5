"""Relative cost of an engine step by the rows in it: curves through measured points, and the
cost of n sequences carrying t draft tokens (StepCost)."""
from __future__ import annotations

import bisect
from typing import Sequence

from fastcodellama.drafting.config import CostCurveSpec


# shared/measurements/cpu_small_llama_cost_and_hf_generate.json: linear layers + LM head of a
# 7M-parameter Llama on this project's 2-core CPU, ms by tokens in the forward (median).
CPU_COST_POINTS = (
    (1, 1.811), (2, 3.077), (4, 4.594), (8, 4.316), (16, 4.807), (32, 6.761), (64, 10.79),
    (100, 13.322), (128, 15.1), (200, 21.309), (256, 27.996), (400, 41.926), (512, 63.311),
    (1024, 109.458),
)
# shared/measurements/h100_linear_cost_by_tokens_codellama7b_shape.json: CodeLlama-7B-shaped
# linear layers on one H100, ms by tokens in the forward.
H100_COST_POINTS = (
    (1, 5.044), (2, 5.156), (4, 5.119), (8, 5.164), (16, 5.316), (32, 5.314), (64, 5.438),
    (128, 5.74), (192, 6.709), (256, 6.701), (384, 8.828), (512, 10.61), (768, 15.456),
    (1024, 19.523), (2048, 41.175), (4096, 77.631),
)
FLAT_COST_POINTS = ((1, 1.0), (1 << 20, 1.0))
NAMED_COSTS = {"cpu": CPU_COST_POINTS, "h100": H100_COST_POINTS, "flat": FLAT_COST_POINTS}


class CostCurve:
    """Relative forward cost by tokens in the step: monotone, linear between measured points and
    past the last one, in units of `unit` (by default the curve's own cost of one token, so 1.0
    there)."""

    def __init__(self, points: Sequence[tuple[int, float]], unit: float | None = None) -> None:
        pts = sorted((int(t), float(c)) for t, c in points)
        if not pts:
            raise ValueError("a cost curve needs at least one point")
        mono = _isotonic(pts)  # measurement noise must not make more tokens cheaper
        base = unit if unit is not None else _interp(mono, 1)
        self.unit = base  # what one unit is in the points' own terms (ms when measured)
        self.points = [(t, c / base) for t, c in mono]
        self._xs = [t for t, _ in self.points]
        self._table: list[float] = [0.0]

    @classmethod
    def from_spec(cls, spec: CostCurveSpec) -> "CostCurve":
        return cls(NAMED_COSTS[spec] if isinstance(spec, str) else spec)

    def __call__(self, tokens: int) -> float:
        return _interp(self.points, tokens, self._xs)

    def table(self, upto: int) -> list[float]:
        """[cost(0), cost(1), ..., cost(upto)], cached (cost(0) = 0)."""
        tab = self._table
        for t in range(len(tab), upto + 1):
            tab.append(self(t))
        return tab


class StepCost:
    """What a step of n sequences costs with t draft tokens among them:

        cost(n, t) = decode(n) * decode_scale + max(verify(n + t) - verify(n), t * row(n))

    decode(n): n single-token sequences, each reading its own KV. The draft rows' work has two
    lower bounds, and the larger one holds: the rows added to a step of that many tokens where
    they share one sequence's KV read (the verify curve, one sequence with many new tokens: what
    a long draft at small batch costs), and row(n) = (pairs(n) - decode(n)) / n, what one more row
    per sequence cost in a step of n sequences (pairs: n sequences feeding 2 tokens each). On a
    CPU, where attention runs per query, row(n) is most of a sequence's own cost at large batch
    (0.20 against 0.32 ms at 128 sequences here) and above the verify slope; a policy that read
    only the verify curve there took draft tokens for cheaper than they were and lost. Measured
    curves share one unit, the verify curve's one token; with one curve for all,
    cost(n, t) = curve(n + t).

    decode_scale corrects the decode part to the steps the engine really runs (set from measured
    step times, see fastcodellama.drafting.proposer.Backoff): the start-up curve gives every sequence its
    own 256-token context and leaves out the engine's per-sequence bookkeeping."""

    def __init__(self, decode: CostCurve, verify: CostCurve | None = None, pairs: CostCurve | None = None) -> None:
        self.decode, self.verify, self.pairs = decode, verify or decode, pairs
        self.decode_scale = 1.0
        self._tables: dict[int, list[float]] = {}

    def rescale(self, decode_scale: float) -> None:
        self.decode_scale = decode_scale
        self._tables.clear()

    @classmethod
    def from_spec(cls, spec) -> "StepCost":
        """A curve name, ((tokens, cost), ...) for all, or an object with .decode, .verify and
        optionally .pairs points (engine.cost_model.StepCostPoints)."""
        if hasattr(spec, "decode") and hasattr(spec, "verify"):
            verify = CostCurve(spec.verify)
            pairs = getattr(spec, "pairs", ())
            return cls(CostCurve(spec.decode, unit=verify.unit), verify,
                       CostCurve(pairs, unit=verify.unit) if pairs else None)
        return cls(CostCurve.from_spec(spec))

    def row(self, n: int) -> float:
        """What one draft row costs beside n sequences, from the pairs curve (0 without one)."""
        if self.pairs is None or n <= 0:
            return 0.0
        return max(0.0, (self.pairs(n) - self.decode(n)) / n)

    def __call__(self, n: int, t: int) -> float:
        return self.at(n, (t,))[0]

    def at(self, n: int, ts: Sequence[int]) -> list[float]:
        """cost(n, t) for each t (not cached per n: see `table`)."""
        vt = self.verify.table(n + max(ts, default=0))
        base, v0, row = self.decode(n) * self.decode_scale, vt[n], self.row(n)
        return [base + max(vt[n + t] - v0, t * row) for t in ts]

    def table(self, n: int, upto: int) -> list[float]:
        """[cost(n, 0), cost(n, 1), ..., cost(n, upto)], cached per n."""
        tab = self._tables.get(n)
        if tab is None:
            if len(self._tables) > 4096:
                self._tables.clear()
            tab = self._tables[n] = []
        if len(tab) <= upto:
            tab.extend(self.at(n, range(len(tab), upto + 1)))
        return tab


def _isotonic(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The non-decreasing fit closest to the points (pool adjacent violators): a noisy point
    out of order is averaged with its neighbours instead of lifting every later point (a
    running maximum would make the tokens after a spike look free)."""
    blocks: list[list[float]] = []  # [sum, count]
    for _, c in points:
        blocks.append([c, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return [(t, c) for (t, _), c in zip(points, fitted)]


def _interp(points: list[tuple[int, float]], x: float, xs: list[int] | None = None) -> float:
    """Piecewise linear through `points`, constant before the first, extended past the last."""
    if xs is None:
        xs = [t for t, _ in points]
    if len(points) == 1 or x <= xs[0]:
        return points[0][1]
    i = min(bisect.bisect_right(xs, x), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
