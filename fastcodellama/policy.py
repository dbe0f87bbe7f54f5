"""How many draft tokens each sequence gets in a step: expected gain against forward cost.

Acceptance model (fitted online, exponentially decayed, started from priors fitted on the
real-trace replay, see benchmarks/proposer_replay.py --fit-priors), per bucket b = (source,
match-length bucket):
  - a draft's first token is accepted with probability first[b];
  - token i >= 1 is accepted, given tokens 0..i-1 were, with probability cont[b][i] (a
    per-position geometric model: copies that have started tend to go on, so cont rises with i);
  - each sequence's recent accepted/predicted ratio scales the first-token probability.
So the j-th draft token of a candidate is accepted with probability
g_j = a * prod_{i=1..j} cont[b][i], non-increasing in j.

Allocation: the step's throughput is (N + accepted) / cost(N, drafted) for N sequences (each
yields accepted + 1 tokens, each feeds 1 + draft tokens; StepCost below). All candidate tokens are ranked by
g_j; the policy takes the prefix of that ranking, at most `budget` long, that maximizes the
expected throughput on the cost curve. The whole prefix is searched, not stopped at the first
token that does not pay, because measured curves are flat in steps. On a flat curve that gives
long drafts; on a steep one (or at large batch, where the step is already compute bound) short
drafts or none.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from fastcodellama.spec_config import SOURCES, CostCurveSpec

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

MATCH_CAP = 16      # match lengths are measured (backwards past max_match) up to this
POSITIONS = 64      # draft positions with their own continuation statistics; later ones share the last
# Match-length buckets: 1, 2, 3, 4, 5-7, 8-15, 16+ (long matches are rarer and behave alike).
_ML_BUCKET = (0, 0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6)
ML_BUCKETS = ("1", "2", "3", "4", "5-7", "8-15", "16+")


def ml_bucket(match_len: int) -> int:
    return _ML_BUCKET[min(max(match_len, 1), MATCH_CAP)]


# Continuation statistics are pooled over these position bins for the priors (bin starts).
CONT_BINS = (1, 2, 3, 4, 6, 9, 13, 20)
# Priors: first-token acceptance [source][match-length bucket] and continuation
# [source][bucket][position bin], fitted on the real-trace
# replay of file3 (CodeGen-16B-mono, first 40 tasks, 100 samples each as one request; every
# source's candidate scored at every step; proxy BPE): `benchmarks/proposer_replay.py
# --fit-priors --tasks 40`. file1/file2 (CodeLlama), on which the policy is evaluated, are held out.
PRIOR_FIRST: dict[str, tuple[float, ...]] = {
    "self": (0.385, 0.28, 0.516, 0.611, 0.684, 0.843, 0.787),
    "sibling": (0.335, 0.483, 0.55, 0.646, 0.679, 0.794, 0.829),
    "other": (0.237, 0.311, 0.394, 0.545, 0.481, 0.516, 0.213),
}
PRIOR_CONT: dict[str, tuple[tuple[float, ...], ...]] = {
    "self": (
        (0.32, 0.528, 0.64, 0.668, 0.73, 0.812, 0.837, 0.837),
        (0.547, 0.611, 0.685, 0.695, 0.751, 0.807, 0.883, 0.883),
        (0.585, 0.691, 0.695, 0.701, 0.773, 0.805, 0.845, 0.845),
        (0.579, 0.714, 0.714, 0.714, 0.784, 0.798, 0.85, 0.85),
        (0.715, 0.715, 0.715, 0.787, 0.787, 0.844, 0.907, 0.907),
        (0.776, 0.799, 0.844, 0.844, 0.87, 0.87, 0.895, 0.895),
        (0.909, 0.909, 0.909, 0.916, 0.92, 0.92, 0.92, 0.92),
    ),
    "sibling": (
        (0.555, 0.555, 0.555, 0.635, 0.745, 0.815, 0.815, 0.815),
        (0.57, 0.627, 0.627, 0.645, 0.763, 0.763, 0.763, 0.763),
        (0.611, 0.699, 0.699, 0.717, 0.782, 0.836, 0.836, 0.836),
        (0.687, 0.706, 0.715, 0.739, 0.797, 0.799, 0.822, 0.822),
        (0.693, 0.705, 0.757, 0.759, 0.767, 0.863, 0.863, 0.863),
        (0.793, 0.8, 0.808, 0.808, 0.839, 0.839, 0.906, 0.906),
        (0.873, 0.892, 0.892, 0.892, 0.892, 0.908, 0.908, 0.908),
    ),
    "other": (
        (0.348, 0.409, 0.521, 0.563, 0.754, 0.911, 0.911, 0.911),
        (0.394, 0.481, 0.506, 0.555, 0.724, 0.778, 0.778, 0.778),
        (0.465, 0.592, 0.633, 0.664, 0.835, 0.86, 0.86, 0.86),
        (0.395, 0.613, 0.613, 0.666, 0.735, 0.78, 0.78, 0.78),
        (0.567, 0.65, 0.677, 0.755, 0.837, 0.837, 0.837, 0.837),
        (0.659, 0.659, 0.659, 0.668, 0.737, 0.859, 0.859, 0.859),
        (0.76, 0.842, 0.864, 0.864, 0.926, 0.926, 0.939, 0.939),
    ),
}
PRIOR_WEIGHT = 20.0         # pseudo-observations behind each prior
DECAY = 0.999               # per observation of a bucket: a memory of ~1000 drafts
SEQ_DECAY = 0.8             # per draft of one sequence
SEQ_PRIOR_TOKENS = 2.0      # shrinks a sequence's accepted/predicted ratio toward 1
SEQ_FACTOR_RANGE = (0.25, 4.0)
MIN_GAIN = 1e-3             # draft tokens less likely than this are never worth a slot
DRAFT_MARGIN = 0.05         # drafts must promise this much more throughput than plain decoding:
                            # acceptance and cost are estimates, and drafting must never lose


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
    step times, see fastcodellama.proposer.Backoff): the start-up curve gives every sequence its
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


@dataclass(slots=True)
class _Bucket:
    num: float
    den: float

    def add(self, x: float, decay: float) -> None:
        self.num = self.num * decay + x
        self.den = self.den * decay + 1.0

    @property
    def rate(self) -> float:
        return self.num / self.den if self.den > 0 else 0.0


class AcceptanceModel:
    """Online acceptance statistics by (source, match-length bucket) and draft position."""

    def __init__(self, sources: Sequence[str] = SOURCES, prior_weight: float = PRIOR_WEIGHT,
                 decay: float = DECAY, max_draft: int = POSITIONS) -> None:
        self.sources = tuple(sources)
        self.decay = decay
        self.table_len = min(max(max_draft, 1), POSITIONS)   # survival tables cover this many positions
        w = prior_weight
        nb = len(ML_BUCKETS)
        self.first = {(s, b): _Bucket(_prior_first(s, b) * w, w) for s in SOURCES for b in range(nb)}
        self.cont = {(s, b): [_Bucket(_prior_cont(s, b, i) * w, w) for i in range(POSITIONS)]
                     for s in SOURCES for b in range(nb)}
        self.seq: dict[int, list[float]] = {}      # seq_id -> [accepted, predicted], decayed
        self._dirty: dict[tuple[str, int], bool] = dict.fromkeys(self.first, True)  # stale -> survival too
        self.first_rate: dict[tuple[str, int], float] = {}
        self.survival: dict[tuple[str, int], list[float]] = {}   # [j] = prod_{i=1..j} cont[i]
        self.cumulative: dict[tuple[str, int], list[float]] = {}  # [j] = sum_{i<j} survival[i]
        self._best: list[float] = []
        self._best_age = 0
        self.best_version = 0   # bumped whenever best_gains changes

    def record(self, source: str, match_len: int, drafted: int, accepted: int,
               seq_id: int | None = None, predicted: float | None = None) -> None:
        if drafted <= 0:
            return
        d, b = self.decay, (source, ml_bucket(match_len))
        self.first[b].add(1.0 if accepted > 0 else 0.0, d)
        cont = self.cont[b]
        for i in range(1, min(accepted, drafted - 1) + 1):   # positions reached after the first
            cont[min(i, POSITIONS - 1)].add(1.0 if i < accepted else 0.0, d)
        if seq_id is not None and predicted is not None:
            st = self.seq.setdefault(seq_id, [0.0, 0.0])
            st[0] = st[0] * SEQ_DECAY + accepted
            st[1] = st[1] * SEQ_DECAY + predicted
        self._dirty[b] = self._dirty.get(b, False) or accepted > 0
        self._best_age += 1

    def forget(self, seq_id: int) -> None:
        self.seq.pop(seq_id, None)

    def seq_factor(self, seq_id: int) -> float:
        st = self.seq.get(seq_id)
        if st is None:
            return 1.0
        f = (st[0] + SEQ_PRIOR_TOKENS) / (st[1] + SEQ_PRIOR_TOKENS)
        lo, hi = SEQ_FACTOR_RANGE
        return lo if f < lo else hi if f > hi else f

    def refresh(self) -> None:
        """Recompute the tables of the buckets recorded since the last refresh."""
        n = self.table_len
        for key, cont_changed in self._dirty.items():
            self.first_rate[key] = self.first[key].rate
            if not cont_changed:
                continue
            surv, cum, p, c = [], [0.0], 1.0, 0.0
            for i, b in enumerate(self.cont[key][:n]):
                if i > 0:
                    p *= b.num / b.den if b.den > 0 else 0.0
                surv.append(p)
                c += p
                cum.append(c)
            self.survival[key], self.cumulative[key] = surv, cum
        if not self._best or self._best_age >= 16:  # every 16 drafts: a gate, not an estimate
            self._best = [max(min(self.first_rate[(s, b)], 0.99) * self.survival[(s, b)][j]
                              for s in self.sources for b in range(len(ML_BUCKETS)))
                          for j in range(self.table_len)]
            self._best_age = 0
            self.best_version += 1
        self._dirty.clear()

    def best_gains(self) -> list[float]:
        """[j] = the highest probability, over the sources in use and match lengths, that the
        j-th token of a draft is accepted (call refresh first): what the likeliest copy brings."""
        return self._best

    def first_prob(self, source: str, match_len: int, factor: float = 1.0) -> float:
        a = self.first_rate[(source, ml_bucket(match_len))] * factor
        return 0.99 if a > 0.99 else a

    def survival_of(self, source: str, match_len: int) -> list[float]:
        return self.survival[(source, ml_bucket(match_len))]

    def expected(self, source: str, match_len: int, a: float, length: int) -> float:
        """Expected accepted tokens among the first `length` of a draft whose first token has probability a."""
        key = (source, ml_bucket(match_len))
        cum = self.cumulative[key]
        if length < len(cum):
            return a * cum[length]
        return a * (cum[-1] + self.survival[key][-1] * (length - len(cum) + 1))

    def snapshot(self, positions: int = 12) -> dict:
        """Current rates: first[source][bucket], cont[source][bucket][position 1..positions]."""
        self.refresh()
        return {s: {"first": [round(self.first_rate[(s, b)], 3) for b in range(len(ML_BUCKETS))],
                    "cont": [[round(x.rate, 3) for x in self.cont[(s, b)][1:positions + 1]]
                             for b in range(len(ML_BUCKETS))]}
                for s in self.sources}


def _prior_first(source: str, bucket: int) -> float:
    if source in PRIOR_FIRST:
        return PRIOR_FIRST[source][bucket]
    return (0.3, 0.4, 0.5, 0.55, 0.65, 0.75, 0.85)[bucket] * (0.6 if source == "other" else 1.0)


def _prior_cont(source: str, bucket: int, i: int) -> float:
    if source in PRIOR_CONT:
        return PRIOR_CONT[source][bucket][max(bisect.bisect_right(CONT_BINS, i) - 1, 0)]
    return min(0.5 + 0.05 * i, 0.9)


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
