"""The one decision per step of whether and how much to draft.

A step of n decoding sequences yields n + (accepted draft tokens) tokens. Searching and drafting
pay when

    (n + expected accepted) / (plain(n) + extra(n, t) + search) > n / plain(n) * (1 + margin(n))

with plain and extra the engine's learned step cost (engine.step_cost.StepCost), t the draft
tokens, `search` the proposer's own measured time to find them (a search made ahead of the token
in flight runs beside the device, but the gate and the throttle count it as any; where the engine
waits on a drafting step's tokens, the overlap that forgoes is in the drafting step's learned cost,
engine/step_cost.py), and the expected accepted tokens from the acceptance model
(fastcodellama.drafting.acceptance). Before any search the policy asks whether even the
likeliest copies the model knows of could pay so at this batch; if not, no search (at large batch
on a CPU, looking copies up for hundreds of sequences costs a step several percent). Once the search has run its time is spent whatever is drafted, so a draft is judged
against n / (plain(n) + search) * (1 + margin(n)): all candidate tokens are ranked by their
acceptance probability g_j, and the policy takes the prefix of that ranking, at most `budget`
long, with the best expected throughput.

A search that finds nothing worth drafting costs its time for nothing, and one whose drafts are
accepted less than they cost loses more. Each search's outcome, in plain steps of time gained
(once its drafts are verified: the tokens accepted, at the plain step's rate per sequence, less
the draft rows' and the search's learned costs; a search that drafted nothing: minus its cost),
is kept as a decayed mean per batch size. While that mean is not positive, the gate's "could pay"
searches only every ceil(c / SEARCH_SHARE) steps (c: what a search loses, in plain steps), so that
losing searches cost about SEARCH_SHARE of the time. Searches that found nothing may only have come
early (samples a few tokens in): c is then the search's own time, the interval is reached by
doubling from 1 with each search since the mean turned, and the first search whose drafts pay sets
the mean to its outcome (searching resumes at once).

Beliefs are corrected by an explicit exploration budget, per batch size (a bucket of n):
  - while drafting is believed to pay, a step now and then runs without drafts (a control step),
    so that the plain cost it is judged against stays fresh: CONTROL_EVERY steps after the last
    step that drafted nothing (a search that found nothing worth drafting is one already), or
    rarer where the gain drafting is believed to bring makes a control step dear (each forgoes
    that gain; they cost at most CONTROL_SHARE of the throughput). An optimistic belief is also
    corrected by the drafting steps' own measured cost and acceptance, every step; a pessimistic
    belief about longer drafts than the best believed is not, since they are never drafted: every
    `interval` steps a drafting step drafts twice the believed best (a probe);
  - while it is believed not to pay (or its cost is unknown), a step drafts anyway: at once where
    nothing is known of draft rows' cost at this batch size, then every `interval` steps,
    EXPLORE_ROWS draft tokens per sequence; where the cost of that many tokens is known, an
    exploring step drafts at most what costs EXPLORE_EXTRA of a plain step.
The interval starts at EXPLORE_MIN when the belief turns and doubles up to EXPLORE_MAX with each
exploration or probe that drafted something (one with nothing to copy measured nothing: the
next step tries again). So a wrong belief lasts at most EXPLORE_MAX steps at a batch size, in
either direction.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from engine.step_cost import ROW_GRID
from fastcodellama.drafting.acceptance import AcceptanceModel

MIN_GAIN = 1e-3      # draft tokens less likely than this are never worth a slot
# Drafting must promise this much more throughput: costs and acceptance are estimates, and a draft
# row's cost, a low quantile of differences to the plain steps, reads on the low side. A batch of at
# most SMALL_BATCH sequences takes SMALL_MARGIN: there drafting's whole gain can be a few percent (a
# CPU, where a draft row costs about what a sequence does), which MARGIN forwent where every fixed
# draft length gained; at larger batches, whose draft rows' costs read noisiest, SMALL_MARGIN lost.
MARGIN = 0.05
SMALL_MARGIN = 0.02
SMALL_BATCH = 8
CONTROL_EVERY = 16   # the most frequent control steps, where drafting is believed to gain little
CONTROL_SHARE = 0.01  # control steps forgo at most this share of the throughput drafting is believed to give
GAIN_DECAY = 0.9     # the believed gain that sets the control interval: a decayed mean over searched steps
SEARCH_SHARE = 0.01  # while searches find nothing worth drafting, they cost at most about this share of the time
# What recent searches brought (net gain, or minus their cost): a decayed mean, weighted alike from
# the first. Long: at one sequence most searches lose a tenth of a step and one in several gains ten,
# and a short mean dipped below 0 between those, throttling the searches that pay most.
OUTCOME_DECAY = 0.95
EXPLORE_MIN, EXPLORE_MAX = 32, 1024
# Draft tokens per sequence on exploring steps, in turn (plus a floor for small batches): the cost
# of several draft sizes gets measured, not only the one a stale belief would pick.
EXPLORE_ROWS = (2.0, 1.0, 4.0, 0.5)
EXPLORE_FLOOR = 4
EXPLORE_EXTRA = 0.5  # where its cost is known, an exploring step costs at most 1.5x a plain one
# Candidate tokens from which the allocation ranks them in numpy rather than Python: numpy's fixed
# cost per call outweighs its speed below several hundred (benchmarks/draft_ranking.py).
NUMPY_FROM = 768
# The gate's verdict (could any copy pay at this batch?) is kept for this many steps of its batch
# size: costs and acceptance drift slowly, and at a large batch the gate reads dozens of costs.
VERDICT_STEPS = 8


class Cost(Protocol):
    """The engine's learned step cost (engine.step_cost.StepCost), in seconds."""

    def plain(self, seqs: int) -> float | None: ...

    def extra(self, seqs: int, draft_rows: int) -> float | None: ...

    def measured(self, seqs: int) -> bool:
        """Whether plain steps of about as many sequences were measured in this run."""


@dataclass(slots=True)
class Candidate:
    """One query's best draft: first-token probability `a`, at most `limit` tokens, whose later
    tokens follow `survival` (AcceptanceModel.survival_of its source and match length)."""

    a: float
    limit: int
    survival: list[float]


@dataclass(frozen=True)
class Decision:
    search: bool  # look for copies this step
    explore: bool = False  # draft although it is not believed to pay (the exploration budget)
    rows_per_seq: float = 0.0  # how much an exploring step drafts
    probe: bool = False  # draft twice the believed best (the exploration budget, while drafting pays)


# The decisions of most steps, made once (decide runs every step).
_NO_SEARCH, _SEARCH, _PROBE = Decision(False), Decision(True), Decision(True, probe=True)


@dataclass
class _Budget:
    """Exploration state of one batch-size bucket."""

    step: int = 0
    last_explore: int = 0
    interval: int = EXPLORE_MIN
    believed: bool = False
    explorations: int = 0
    verdict: bool | None = None  # the gate's last verdict, from step verdict_step
    verdict_step: int = 0
    last_control: int = 0
    gain: float = 0.0  # believed throughput gain of drafting over plain steps (0.5: 1.5x), decayed mean
    outcome_sum: float = 0.0  # plain steps searches gained, net of their cost: a decayed sum ...
    outcome_weight: float = 0.0  # ... and its weight (their decayed count)
    last_search: int = 0
    fruitless: int = 0  # searches since the mean outcome last was positive

    @property
    def outcome(self) -> float | None:
        """What a search gains, net of its cost, in plain steps: the decayed mean (None: none yet)."""
        return self.outcome_sum / self.outcome_weight if self.outcome_weight else None


def _control_every(gain: float) -> int:
    """Steps between control steps: a control step forgoes gain / (1 + gain) of a step's tokens."""
    return max(CONTROL_EVERY, math.ceil(gain / (1.0 + gain) / CONTROL_SHARE))


def _throttle(search_cost: float, fruitless: int) -> int:
    """Steps from one throttled search to the next: ceil(c / SEARCH_SHARE) for a search that loses
    c plain steps, reached by doubling from 1 over the searches since the mean turned, so that one
    that came too early (samples that have written a few tokens have little to copy yet) is tried
    again soon, and only searches that keep finding nothing fall to SEARCH_SHARE of the time."""
    return min(math.ceil(search_cost / SEARCH_SHARE), 1 << min(fruitless, 30))


def _batch_bucket(n: int) -> int:
    """n's batch-size bucket: the nearest power of two (in its logarithm), so that a batch held at
    a power of two (max_num_seqs 64, 256), a few sequences short of it at most steps, keeps one
    state instead of two taking turns."""
    return round(math.log2(max(n, 1)))


@functools.lru_cache(maxsize=4096)
def _probe_points(limit: int) -> tuple[int, ...]:
    """Where the cost of draft tokens is read: the last size of each of the step cost's row buckets
    below `limit` (1, 2, 3, 5, 7, 11, 15, 23, ...), and `limit`. A measured bucket costs the same
    at every size in it, so more tokens of it are never worse; between measured buckets the cost is
    interpolated, and the best size is missed by less than a bucket."""
    tops = [ROW_GRID[i + 1] - 1 for i in range(1, len(ROW_GRID) - 1) if ROW_GRID[i + 1] - 1 < limit]
    return (*tops, limit) if limit > 0 else ()


@dataclass
class DraftPolicy:
    model: AcceptanceModel
    adaptive: bool = True
    margin: float = MARGIN
    small_margin: float = SMALL_MARGIN
    _budgets: dict[int, _Budget] = field(default_factory=dict)
    # The searches that drafted, (sequences, draft tokens, their seconds), by the key allocate was
    # given, until their outcome is known (two are in flight where drafting steps are queued back to back).
    _drafting: dict[object, tuple[int, int, float]] = field(default_factory=dict)

    # ------------------------------------------------------------------ before the search
    def decide(self, n: int, budget: int, cost: Cost, search_s: float,
               sources: Sequence[str] | None = None) -> Decision:
        """Whether to search for copies this step (and whether that is exploration); `sources`:
        those a copy can come from now (default: all the acceptance model knows)."""
        if n <= 0 or budget <= 0:
            return _NO_SEARCH
        if not self.adaptive:
            return _SEARCH
        state = self._state(n)
        if state is None:
            state = self._budgets[_batch_bucket(n)] = _Budget()
        state.step += 1
        plain = cost.plain(n)
        if plain is None or not cost.measured(n):
            return _NO_SEARCH  # first measure plain steps at this batch, in this run: the baseline
        if state.verdict is None or state.step - state.verdict_step >= VERDICT_STEPS:
            state.verdict = self._could_pay(n, budget, cost, plain, search_s, sources)
            state.verdict_step = state.step
        if state.verdict != state.believed:  # the belief turned: explore from the shortest interval again
            state.believed, state.last_explore, state.interval = state.verdict, state.step, EXPLORE_MIN
            state.last_control = state.step
        due = state.step - state.last_explore >= state.interval
        if state.verdict:
            if state.step - state.last_control >= _control_every(state.gain):
                state.last_control = state.step
                return _NO_SEARCH
            if (state.outcome is not None and state.outcome <= 0.0 and state.step - state.last_search
                    < _throttle(search_s / plain, state.fruitless)):
                state.last_control = state.step  # a plain step anyway
                return _NO_SEARCH  # recent searches found nothing worth drafting: not every step
            state.last_search = state.step
            return _PROBE if due else _SEARCH
        # Nothing known about draft rows at this batch (nor within 2x, nor from an earlier run's
        # cache): explore at once. Known costs wait for the interval like any other belief.
        if due or (state.explorations == 0 and cost.extra(n, n) is None):
            return Decision(True, explore=True,
                            rows_per_seq=EXPLORE_ROWS[(state.explorations + 1) % len(EXPLORE_ROWS)])
        return _NO_SEARCH

    def _margin(self, n: int) -> float:
        return self.small_margin if n <= SMALL_BATCH else self.margin

    def _state(self, n: int) -> _Budget | None:
        """The exploration state of n's batch-size bucket (None before its first decision)."""
        return self._budgets.get(_batch_bucket(n))

    def _explored(self, n: int) -> None:
        """An exploration or probe drafted: the next one waits twice as long."""
        state = self._state(n)
        if state is not None:
            state.last_explore = state.step
            state.interval = min(2 * state.interval, EXPLORE_MAX)
            state.explorations += 1

    def _plain_step(self, n: int) -> None:
        """A step that drafts nothing is as good a control step as a forced one."""
        state = self._state(n)
        if state is not None:
            state.last_control = state.step

    def _note_gain(self, n: int, gain: float) -> None:
        state = self._state(n)
        if state is not None:
            state.gain = GAIN_DECAY * state.gain + (1.0 - GAIN_DECAY) * gain

    def realize(self, accepted: int, cost: Cost, key: object = None) -> None:
        """The outcome of the search that drafted under `key` (allocate's), once its drafts are
        verified (`accepted`: the tokens of them the model took): the plain steps of time its step gained, from what was
        accepted (a plain step brings one token per sequence) and the step cost's learned costs
        of its draft rows and of the search. Not the gain
        expected when drafting: ranking many candidates by estimated probability and drafting the
        likeliest reads their probability high."""
        pending = self._drafting.pop(key, None)
        if pending is None:
            return
        n, drafted, search_s = pending
        plain, extra = cost.plain(n), cost.extra(n, drafted)
        if plain is not None and extra is not None and plain > 0:
            self._note_outcome(n, accepted / n - (extra + search_s) / plain)

    def _note_outcome(self, n: int, outcome: float) -> None:
        """A search's outcome: the plain steps it gained net of its cost (below 0: it did not pay)."""
        state = self._state(n)
        if state is None:
            return
        if outcome > 0.0 and state.outcome_sum <= 0.0:
            state.outcome_sum, state.outcome_weight = outcome, 1.0  # drafts that paid after searches that found nothing: resume at once
        else:
            state.outcome_sum = OUTCOME_DECAY * state.outcome_sum + outcome
            state.outcome_weight = OUTCOME_DECAY * state.outcome_weight + 1.0
        state.fruitless = 0 if state.outcome_sum > 0.0 else state.fruitless + 1

    def _could_pay(self, n: int, budget: int, cost: Cost, plain: float, search_s: float,
                   sources: Sequence[str] | None) -> bool:
        """Whether drafts as likely as the best the acceptance model knows of from `sources`, for
        every sequence, would beat plain decoding at a known cost (unknown costs do not count)."""
        self.model.refresh()
        gains = self.model.best_gains(sources)
        cum = [0.0]
        for g in gains:
            cum.append(cum[-1] + g)
        target = n / plain * (1.0 + self._margin(n))
        for t in _probe_points(min(budget, n * len(gains))):
            extra = cost.extra(n, t)
            if extra is None:
                continue
            full, part = divmod(t, n)
            acc = n * cum[-1] if full >= len(gains) else n * cum[full] + part * gains[full]
            if (n + acc) / (plain + extra + search_s) > target:
                return True
        return False

    # ------------------------------------------------------------------ after the search
    def allocate(self, cands: Sequence[Candidate | None], budget: int, cost: Cost, search_s: float,
                 explore: Decision | None = None, spent: float | None = None, key: object = None) -> list[int]:
        """Draft lengths, one per query (None = nothing to copy), each <= its limit, summing <= budget;
        `search_s`: what the search cost the device, paid whatever is drafted; `explore`: an
        exploring decision, whose size is drafted whatever the costs say; `spent`: what a search
        that drafts nothing is counted to lose (default search_s: a search beside the device's
        step costs it nothing, but its host time is not free where the host is what a step waits on);
        `key`: the search's, which realize() is given with its outcome."""
        n = len(cands)
        if budget <= 0 or n == 0:
            return [0] * n
        if not self.adaptive:
            return self._fixed(cands, budget)
        ranked, owners = self._ranking(cands, budget)
        if explore is not None and explore.explore:
            take = self._explore_size(n, len(ranked), explore.rows_per_seq, cost)
            if take > 0:
                self._explored(n)
        else:
            best, gain = self._best_prefix(n, ranked, cost, search_s)
            take = min(len(ranked), 2 * best) if explore is not None and explore.probe else best
            self._note_gain(n, gain)
            plain = cost.plain(n)
            if best > 0:
                self._drafting[key] = (n, take, search_s)  # its outcome: once its drafts are verified (realize)
            elif plain:
                self._note_outcome(n, -(search_s if spent is None else spent) / plain)
            if take > best:
                self._explored(n)
        if take == 0:
            self._plain_step(n)
        return _counts(owners, take, n)

    @staticmethod
    def _ranking(cands: Sequence[Candidate | None], budget: int,
                 every: bool = False) -> tuple[list[float], list[int]]:
        """The `budget` likeliest candidate tokens, likeliest first (ties in query order), and
        each one's query: from _ranked, sorted, or in numpy (_ranked_array) where the candidates
        are many (a large batch), whose fixed cost per call would dominate a small one."""
        if sum(c.limit for c in cands if c is not None) >= NUMPY_FROM:
            gains, owner = _ranked_array(cands, every)
            order = np.argsort(-gains, kind="stable")[:budget]
            return gains[order].tolist(), owner[order].tolist()
        gains, owner = DraftPolicy._ranked(cands, every)
        if owner and owner[0] == owner[-1]:  # one query's tokens (batch 1): ranked already
            return gains[:budget], owner[:budget]
        order = sorted(range(len(gains)), key=gains.__getitem__, reverse=True)[:budget]
        return [gains[i] for i in order], [owner[i] for i in order]

    @staticmethod
    def _explore_size(n: int, available: int, rows_per_seq: float, cost: Cost) -> int:
        """An exploring step's draft tokens: the schedule's size, halved while its known cost
        would make the step dearer than EXPLORE_EXTRA of a plain one (so exploring costs a
        bounded share of the steps it runs between)."""
        take = min(available, max(EXPLORE_FLOOR, round(rows_per_seq * n)))
        plain = cost.plain(n)
        while take > EXPLORE_FLOOR and plain is not None:
            extra = cost.extra(n, take)
            if extra is None or extra <= EXPLORE_EXTRA * plain:
                break
            take //= 2
        return take

    def _fixed(self, cands: Sequence[Candidate | None], budget: int) -> list[int]:
        """Every copy as long as it goes (the fixed policy), trimmed to the budget by likelihood."""
        lens = [c.limit if c is not None else 0 for c in cands]
        if sum(lens) <= budget:
            return lens
        _, owners = self._ranking(cands, budget, every=True)
        return _counts(owners, budget, len(cands))

    @staticmethod
    def _ranked(cands: Sequence[Candidate | None], every: bool = False) -> tuple[list[float], list[int]]:
        """Each candidate token's acceptance probability and its query (likelier tokens of a
        query always come first: g_j does not grow with j)."""
        gains: list[float] = []
        owner: list[int] = []
        for qi, c in enumerate(cands):
            if c is None or c.limit <= 0 or (c.a <= 0.0 and not every):
                continue
            surv, a = c.survival, c.a
            last = len(surv) - 1
            for j in range(c.limit):
                g = a * surv[j if j < last else last]
                if g < MIN_GAIN and not every:
                    break
                gains.append(g)
                owner.append(qi)
        return gains, owner

    def _best_prefix(self, n: int, ranked: list[float], cost: Cost, search_s: float) -> tuple[int, float]:
        """The number of top-ranked tokens with the best expected throughput (0: plain is best),
        and the throughput gain over plain steps without a search it is expected to bring (below 0
        where the draft does not make up for the search)."""
        plain = cost.plain(n)
        if plain is None or not ranked:
            return 0, 0.0
        cum = list(itertools.accumulate(ranked, initial=0.0))  # [t]: the first t gains, summed in order
        # The search is paid by now, drafted or not: the draft is judged against a step that pays it too.
        best_t, best = 0, n / (plain + search_s) * (1.0 + self._margin(n))
        for t in _probe_points(len(ranked)):
            extra = cost.extra(n, t)
            if extra is None:
                continue
            value = (n + cum[t]) / (plain + extra + search_s)
            if value > best:
                best_t, best = t, value
        return best_t, (best * plain / n - 1.0 if best_t > 0 else 0.0)


def _ranked_array(cands: Sequence[Candidate | None], every: bool) -> tuple[np.ndarray, np.ndarray]:
    """DraftPolicy._ranked in numpy: the same gains in the same order, and their queries."""
    rows: dict[int, int] = {}  # id(survival) -> its row (candidates of one bucket share their list)
    survivals: list[list[float]] = []
    queries: list[tuple[float, int, int]] = []  # (first-token probability, limit, survival row) per query
    for c in cands:
        if c is None:
            queries.append((0.0, 0, 0))
            continue
        r = rows.get(id(c.survival))
        if r is None:
            r = rows[id(c.survival)] = len(survivals)
            survivals.append(list(c.survival))
        queries.append((c.a, c.limit, r))
    if not survivals:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    a, limit, row = (np.array(column) for column in zip(*queries))
    width = max(int(limit.max()), 1)
    table = np.array([(s + s[-1:] * width)[:width] for s in survivals])  # the last position repeats
    gains = a[:, None] * table[row]
    keep = np.arange(width)[None, :] < limit[:, None]
    if not every:  # a query's tokens stop at the first below MIN_GAIN, and at a first probability of 0
        keep &= np.logical_and.accumulate(gains >= MIN_GAIN, axis=1) & (a[:, None] > 0.0)
    return gains[keep], np.nonzero(keep)[0]


def _counts(owners: list[int], take: int, n: int) -> list[int]:
    """Draft lengths: how many of the first `take` ranked tokens each of the n queries owns."""
    lens = [0] * n
    for q in owners[:take]:
        lens[q] += 1
    return lens
