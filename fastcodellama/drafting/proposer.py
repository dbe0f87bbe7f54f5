"""CopyProposer: drafts copied from text already produced or seen (engine.proposer.Proposer).

Each running sequence's draft is the continuation of the most recent earlier occurrence of
its last m tokens (m from max_match down to n) in one of:
  self     its own prompt + output so far (the copy stops at the current end of the text),
  sibling  the other samples of the same request (group_id), as far as they have got,
  other    a bounded pool of finished outputs of other requests.
With policy "fixed" the longest match wins, self > sibling > other at equal length (the rule
the ceiling study replays). With "adaptive" each source offers its longest match, measured
back past max_match (up to MATCH_CAP tokens), so a longer match from a less trusted source can
beat a shorter one from a more trusted source; "other" needs one more matched token (the
replay's evidence is at _TRUST below). The draft's length then comes from
fastcodellama.drafting.policy: expected accepted tokens from online statistics against forward cost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from engine.proposer import EMPTY_DRAFT, Draft, DraftQuery
from fastcodellama.drafting.ngram_index import GroupIndex, OtherPool, check_token_ids
from fastcodellama.drafting.ngram_tables import table_factory
from fastcodellama.drafting.acceptance import MATCH_CAP, AcceptanceModel
from fastcodellama.drafting.cost import StepCost
from fastcodellama.drafting.policy import Candidate, DraftPolicy
from fastcodellama.drafting.config import SOURCES, SpecConfig


# Selection among sources (adaptive policy), from the replay of every source's candidate at every
# step (benchmarks/proposer_replay.py, file2 self+siblings+others and file3 held out, k=20):
# against the ceiling's rule (longest of 4..1, self > sibling > other), ranking by the online
# model's expected accepted tokens lost 1-4% of accepted tokens (it overrates siblings' and
# others' runs), measuring the match past max_match was neutral, and making "other" beat the
# others by one more matched token gained 2.0% (file2) and 1.7% (file3).
_TRUST = {"self": 0, "sibling": 1, "other": 2}
_HANDICAP = {"self": 0, "sibling": 0, "other": 1}
OTHER_HANDICAP = _HANDICAP["other"]
# After IDLE_STEPS searches in a row at one batch size (a power-of-two bucket) did not pay for
# themselves (CopyProposer._worth_it), searches there grow rarer: the 8th, 16th, 32nd... step,
# then every IDLE_MAX-th. At large batch on a CPU, where a draft must be accepted more often than
# copies usually are, the search and the indexing it brings up to date are all that drafting
# costs (texts of requests that finish between two searches are never indexed).
IDLE_STEPS, IDLE_MAX = 8, 512
WORTH_DECAY = 0.8


@dataclass(slots=True)
class _Seq:
    group_id: str
    group: GroupIndex
    member: int
    prompt_len: int


@dataclass(slots=True)
class _Hit:
    source: str
    text: Sequence[int]
    end: int           # the copy starts at text[end]
    avail: int         # tokens the text holds after `end`
    match_len: int     # matched tokens before `end` (measured up to MATCH_CAP)


class Backoff:
    """Stops drafting while it does not pay, judged on measured step times.

    Each engine step reports its wall time (`observe`). While drafting is on, every
    CONTROL_EVERY-th step is a control step: no search, no drafts. Control steps (and every step
    of a pause) calibrate what the step cost model's units are worth in seconds now (decayed over
    recent plain steps, so it follows the machine and the batch as they change). Over a window of
    steps with a search (at least WINDOW of them and MIN_CONTROLS control steps; also MIN_SEQS
    sequences asked for and MIN_WINDOW_S, unless not one token was accepted) drafting's rate,
    (sequences + accepted tokens) / their measured time, search included, is set against what
    plain decoding did in the control steps among them: sequences / (their modelled plain cost x
    the seconds per unit those control steps took). When drafting is not ahead by MARGIN, less
    one standard error of the control steps' rate (`_control_error`), it pauses, twice as long
    each time in a row (up to MAX_PAUSE_S) and at least PAUSE_PER_WINDOW times the window, then
    tries again; sooner if the batch has since shrunk or grown by half (BATCH_CHANGE), as whether drafting pays depends mostly on the batch (a pass@k run that
    starts at 256 sequences ends with a few, where drafting pays most).

    Control steps interleaved with drafting steps see the same batch, contexts and machine: a
    calibration taken at another time is biased (sequences join with prefills and their contexts
    grow as a run goes on; this machine's speed drifts by 20%), and on a CPU at large batch, where
    drafting gains or loses a few percent, such a bias decided the outcome. A window, not single
    steps: at small batch many steps find no copy at all, and a few drafts rejected in a row say
    nothing about the steps after them. Where drafting is far ahead, control steps are rarer
    (CONTROL_EVERY_AHEAD): each costs its step's gain."""

    MIN_PAUSE_S, MAX_PAUSE_S, PAUSE_PER_WINDOW = 0.5, 8.0, 8.0
    WINDOW, MIN_SEQS, MIN_WINDOW_S, MIN_CONTROLS = 16, 256, 1.0, 4
    MARGIN = 0.02             # drafting must be this much ahead (less one standard error of the controls)
    CONTROL_EVERY, CONTROL_EVERY_AHEAD, AHEAD = 8, 32, 0.25
    BATCH_CHANGE = 2.0
    CAL_DECAY = 0.9           # per plain step: the policy's calibration follows recent ones
    OUTLIER = 2.0             # a step this many times its expected time (a long prefill) is skipped

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.until = 0.0
        self.pause = self.MIN_PAUSE_S
        self.paused_at = 0.0      # sequences per step in the window that caused the pause
        self.control_every = self.CONTROL_EVERY
        self._step = 0
        self._control = False
        self._cal_s = self._cal_cost = 0.0
        self._pending: tuple[int, float, float, bool, bool] | None = None  # (seqs, plain cost, cost, searched, control)
        self._accepted = 0
        self._reset()

    def _reset(self) -> None:
        self._seqs = self._tokens = self._plain_cost = self._seconds = 0.0
        self._ctrl_s = self._ctrl_cost = 0.0
        self._ctrl_r: list[float] = []  # each control step's seconds per unit of plain cost
        self._calls = 0

    def _control_error(self) -> float:
        """The standard error of the control steps' mean rate, relative to it: a window judged on
        4 short control steps at small batch can miss by 10%, and one false "behind" pauses
        drafting where it pays most, so drafting gets the benefit of one standard error."""
        r = self._ctrl_r
        if len(r) < 2:
            return 0.0
        mean = sum(r) / len(r)
        var = sum((x - mean) ** 2 for x in r) / (len(r) - 1)
        return (var / len(r)) ** 0.5 / mean

    def skip(self, now: float, seqs: int) -> bool:
        """Whether the coming step of `seqs` sequences runs without a search: a pause, or a control step."""
        if not self.enabled:
            return False
        self._control = False
        if now < self.until:
            if self.paused_at / self.BATCH_CHANGE <= seqs <= self.paused_at * self.BATCH_CHANGE:
                return True
            self.until, self.pause = 0.0, self.MIN_PAUSE_S  # another batch: judge drafting afresh
            self._reset()
        self._step += 1
        self._control = self._step % self.control_every == 0
        return self._control

    def rate(self) -> float | None:
        """Seconds per unit of modelled plain cost, on recent steps without a search."""
        return self._cal_s / self._cal_cost if self._cal_cost > 0 else None

    def accepted(self, tokens: int) -> None:
        self._accepted += tokens

    def planned(self, seqs: int, plain_cost: float, cost: float, searched: bool) -> None:
        """The step about to run: `seqs` sequences, modelled cost without and with its drafts,
        whether copies were searched for it."""
        self._pending = (seqs, plain_cost, cost, searched, self._control and not searched) if seqs > 0 else None
        self._control = False
        self._accepted = 0

    def observe(self, step_s: float, now: float) -> None:
        """The wall time of the step that `planned` described (proposal included)."""
        pending, self._pending = self._pending, None
        if not self.enabled or pending is None:
            return
        seqs, plain_cost, cost, searched, control = pending
        rate = self.rate()
        if rate is not None and step_s > self.OUTLIER * rate * cost:
            return
        if not searched:
            d = self.CAL_DECAY
            self._cal_s, self._cal_cost = self._cal_s * d + step_s, self._cal_cost * d + plain_cost
            if control:
                self._ctrl_s += step_s
                self._ctrl_cost += plain_cost
                self._ctrl_r.append(step_s / plain_cost)
            return
        self._seqs += seqs
        self._tokens += seqs + self._accepted
        self._plain_cost += plain_cost
        self._seconds += step_s
        self._calls += 1
        nothing = self._tokens == self._seqs  # no token accepted: nothing to wait for
        if len(self._ctrl_r) >= self.MIN_CONTROLS and self._calls >= self.WINDOW and (
                nothing or (self._seqs >= self.MIN_SEQS and self._seconds >= self.MIN_WINDOW_S)):
            self._judge(now)

    def _judge(self, now: float) -> None:
        rate = self._ctrl_s / self._ctrl_cost
        gain = (self._tokens / self._seconds) / (self._seqs / (self._plain_cost * rate)) - 1.0
        if gain > self.MARGIN - self._control_error():
            self.pause = self.MIN_PAUSE_S
        else:  # searching costs at most about 1 / (1 + PAUSE_PER_WINDOW) of the steps
            self.until = now + max(self.pause, self.PAUSE_PER_WINDOW * self._seconds)
            self.paused_at = self._seqs / self._calls
            self.pause = min(self.pause * 2, self.MAX_PAUSE_S)
        self.control_every = self.CONTROL_EVERY_AHEAD if gain > self.AHEAD else self.CONTROL_EVERY
        self._reset()


class CopyProposer:
    """Implements engine.proposer.Proposer; see the module docstring."""

    def __init__(self, config: SpecConfig | None = None) -> None:
        self.config = cfg = config or SpecConfig()
        self._seqs: dict[int, _Seq] = {}
        self._groups: dict[str, GroupIndex] = {}
        self._next_member: dict[str, int] = {}
        self._use_self = "self" in cfg.sources
        self._tables = table_factory(cfg.index_tables)
        self._pool = (OtherPool(cfg.n, cfg.max_match, cfg.other_pool_tokens, self._tables)
                      if "other" in cfg.sources and cfg.other_pool_tokens > 0 else None)
        self.model = AcceptanceModel(cfg.sources, max_draft=cfg.k + 1)
        # "measured": the CPU table until the engine hands over its own measurement.
        self.wants_measured_cost = cfg.cost_curve == "measured"
        self.policy = DraftPolicy(self.model, StepCost.from_spec("cpu" if self.wants_measured_cost else cfg.cost_curve),
                                  adaptive=cfg.policy == "adaptive")
        self._pending: dict[int, tuple[Draft, int, float]] = {}   # seq_id -> (draft, match_len, predicted)
        self._drafted = dict.fromkeys(SOURCES, 0)
        self._accepted = dict.fromkeys(SOURCES, 0)
        self._drafts = dict.fromkeys(SOURCES, 0)
        self._propose_s = 0.0
        self._last_call = time.perf_counter()
        self._backoff = Backoff(enabled=cfg.policy == "adaptive")
        self._armed = False  # `active` said yes; `propose` comes next
        self._propose_calls = 0
        self._queries = 0
        self._idle: dict[int, int] = {}   # batch-size bucket -> searches in a row that did not pay
        self._worth: dict[int, list[float]] = {}  # bucket -> decayed [expected seconds saved, search seconds]

    # ------------------------------------------------------------------ Proposer protocol

    def add_sequence(self, seq_id: int, group_id: str, prompt_token_ids: Sequence[int]) -> None:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} was already added")
        check_token_ids(prompt_token_ids)
        cfg = self.config
        group = self._groups.get(group_id)
        if group is None:
            group = GroupIndex(prompt_token_ids, cfg.n, cfg.max_match, "sibling" in cfg.sources, self._tables)
            self._groups[group_id] = group
            self._next_member[group_id] = 0
        member = self._next_member[group_id]
        self._next_member[group_id] = member + 1
        group.add_member(member, prompt_token_ids)
        self._seqs[seq_id] = _Seq(group_id, group, member, len(prompt_token_ids))

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> None:
        if not token_ids:
            return
        check_token_ids(token_ids)
        st = self._seqs[seq_id]
        st.group.extend(st.member, token_ids)

    def active(self, num_running: int, budget: int) -> bool:
        """Asked before the engine builds a step's queries: False when the step takes no drafts
        whatever they hold (the back-off's pause or control step, drafting off, even sure drafts
        not paying at this batch, searches grown rare here). The step is then booked as plain and
        `propose` is not called: at large batch, where most steps are such, building a query per
        running sequence was most of what an idle proposer cost."""
        self._armed = False
        t0 = time.perf_counter()
        self._backoff.observe(t0 - self._last_call, t0)  # the engine step since the last call
        self._last_call = t0
        self._calibrate()
        if num_running > 0 and not self._backoff.skip(t0, num_running) and self._may_search(num_running, budget):
            self._armed = True
            return True
        plain = self.policy.cost.decode(num_running) if num_running else 0.0  # unscaled: what the back-off calibrates
        self._backoff.planned(num_running, plain, plain, searched=False)
        return False

    def propose(self, queries: Sequence[DraftQuery], budget: int) -> list[Draft]:
        n = len(queries)
        if not self._armed and not self.active(n, budget):  # called without `active` first
            return [EMPTY_DRAFT] * n
        self._armed = False
        t0 = time.perf_counter()
        plain = self.policy.cost.decode(n) if n else 0.0
        drafts = self._search(queries, budget) if n else []
        drafted = sum(len(d) for d in drafts)
        cost = self.policy.cost.table(n, drafted)
        extra = (cost[drafted] - cost[0]) / self.policy.cost.decode_scale
        self._backoff.planned(n, plain, plain + extra, searched=n > 0)
        self._propose_s += time.perf_counter() - t0
        self._propose_calls += 1
        self._queries += n
        return drafts

    def _budget(self, n: int, budget: int) -> int:
        cfg = self.config
        if cfg.budget is not None:
            budget = min(budget, cfg.budget)
        return min(budget, cfg.k * n)

    def _may_search(self, n: int, budget: int) -> bool:
        """Whether a search for copies could give drafts at this batch now."""
        cfg = self.config
        budget = self._budget(n, budget)
        if not cfg.enabled or cfg.k <= 0 or budget <= 0:
            return False
        if cfg.policy != "adaptive":
            return True
        if not self.policy.can_pay(n, budget):
            return False  # even sure drafts would not pay at this batch
        bucket = n.bit_length()
        idle = self._idle.get(bucket, 0)
        if idle >= IDLE_STEPS and idle % min(1 << (idle.bit_length() - 1), IDLE_MAX):
            self._idle[bucket] = idle + 1  # recent searches at this batch found nothing worth drafting
            return False
        return True

    def _calibrate(self) -> None:
        """Scales the policy's decode curve to the measured plain steps (StepCost.decode_scale)."""
        rate = self._backoff.rate()
        if rate is None or not self.wants_measured_cost:
            return
        scale = rate / (self.policy.cost.verify.unit / 1000.0)
        if abs(scale / self.policy.cost.decode_scale - 1.0) > 0.05:
            self.policy.rescale(scale)

    def _search(self, queries: Sequence[DraftQuery], budget: int) -> list[Draft]:
        """The drafts: each query's best copy, lengths from the policy."""
        cfg = self.config
        budget = self._budget(len(queries), budget)
        t0 = time.perf_counter()
        bucket = len(queries).bit_length()
        idle = self._idle.get(bucket, 0)
        self.model.refresh()
        adaptive = cfg.policy == "adaptive"
        hits: list[_Hit | None] = []
        cands: list[Candidate | None] = []
        for q in queries:
            st = self._seqs.get(q.seq_id)
            hit = None
            if st is not None and q.max_len > 0:
                hit = self._best_hit(st, q, adaptive)
            hits.append(hit)
            if hit is None:
                cands.append(None)
            else:
                a = self.model.first_prob(hit.source, hit.match_len, self.model.seq_factor(q.seq_id))
                cands.append(Candidate(a, min(hit.avail, cfg.k, q.max_len),
                                       self.model.survival_of(hit.source, hit.match_len)))
        lens = self.policy.allocate(cands, budget)
        drafts = []
        gained = 0.0
        for q, hit, cand, d in zip(queries, hits, cands, lens):
            if d <= 0:
                drafts.append(EMPTY_DRAFT)
                continue
            draft = Draft(tuple(hit.text[hit.end:hit.end + d]), hit.source)
            predicted = self.model.expected(hit.source, hit.match_len, cand.a, d)
            gained += predicted
            self._pending[q.seq_id] = (draft, hit.match_len, predicted)
            drafts.append(draft)
        self._idle[bucket] = 0 if self._worth_it(bucket, len(queries), gained, sum(lens), t0) else idle + 1
        return drafts

    def _worth_it(self, bucket: int, n: int, gained: float, drafted: int, t0: float) -> bool:
        """Whether, lately at this batch size, the drafts' expected saving paid for the search:
        expected accepted tokens at a sequence's share of the step, less the draft rows' cost,
        against the measured seconds of finding them (the lookups and the indexing they bring up
        to date). The policy weighs draft rows; this weighs the search, which it does not see."""
        if not drafted:
            return False
        cost = self.policy.cost.table(n, drafted)
        saved = (gained * cost[0] / n - (cost[drafted] - cost[0])) * self.policy.cost.verify.unit / 1000.0
        ema = self._worth.setdefault(bucket, [0.0, 0.0])
        ema[0] = ema[0] * WORTH_DECAY + saved
        ema[1] = ema[1] * WORTH_DECAY + (time.perf_counter() - t0)
        return ema[0] > ema[1]

    def record(self, seq_id: int, draft: Draft, num_accepted: int) -> None:
        if len(draft) == 0:
            return
        accepted = max(0, min(int(num_accepted), len(draft)))
        pending = self._pending.pop(seq_id, None)
        match_len, predicted = 1, None
        if pending is not None and pending[0].tokens == draft.tokens:
            match_len, predicted = pending[1], pending[2]
        source = draft.source if draft.source in SOURCES else "self"
        self._drafts[source] += 1
        self._drafted[source] += len(draft)
        self._accepted[source] += accepted
        self._backoff.accepted(accepted)
        running = seq_id in self._seqs           # per-sequence statistics only for live sequences
        self.model.record(source, match_len, len(draft), accepted,
                          seq_id if running else None, predicted)

    def finish(self, seq_id: int, aborted: bool = False) -> None:
        st = self._seqs.pop(seq_id, None)
        if st is None:
            return
        self._pending.pop(seq_id, None)
        self.model.forget(seq_id)
        text = st.group.finish(st.member)
        if not aborted and self._pool is not None:
            self._pool.add(text[st.prompt_len:], st.group_id)
        if not st.group.live and self._groups.get(st.group_id) is st.group:
            del self._groups[st.group_id]
            del self._next_member[st.group_id]

    # ------------------------------------------------------------------ extras

    def set_cost_curve(self, curve) -> None:
        """The engine's own measurement of step cost (engine.cost_model.StepCostPoints), or a
        CostCurveSpec."""
        self.policy.cost = StepCost.from_spec(curve)

    def stats(self) -> dict:
        by_source = {s: {"drafts": self._drafts[s], "drafted": self._drafted[s], "accepted": self._accepted[s]}
                     for s in SOURCES}
        return {
            "by_source": by_source,
            "drafted": sum(self._drafted.values()),
            "accepted": sum(self._accepted.values()),
            "propose_calls": self._propose_calls,
            "queries": self._queries,
            "propose_s": self._propose_s,
            "propose_us_per_query": 1e6 * self._propose_s / max(self._queries, 1),
            "running": len(self._seqs),
            "groups": len(self._groups),
            "pool_texts": len(self._pool) if self._pool is not None else 0,
            "pool_tokens": self._pool.num_tokens if self._pool is not None else 0,
            "model": self.model.snapshot(),
        }

    # ------------------------------------------------------------------ matching

    def candidates(self, seq_id: int) -> list[_Hit]:
        """Each source's longest match for the sequence now (for diagnostics and fitting priors)."""
        return self._find(self._seqs[seq_id], first_only=False)

    def _best_hit(self, st: _Seq, q: DraftQuery, adaptive: bool) -> _Hit | None:
        """Fixed: the first hit of _find. Adaptive: each source's longest match, measured past
        max_match; the longest wins, self > sibling > other at equal length, and "other" needs
        OTHER_HANDICAP more matched tokens (see the module docstring)."""
        found = self._find(st, first_only=not adaptive)
        if len(found) <= 1:
            return found[0] if found else None
        return max(found, key=lambda h: (h.match_len - _HANDICAP[h.source], -_TRUST[h.source]))

    def _find(self, st: _Seq, first_only: bool) -> list[_Hit]:
        """Each source's longest match (m from max_match down to n), self, sibling, other.
        first_only: only the longest of them, self > sibling > other at equal length."""
        group, member, pool = st.group, st.member, self._pool
        toks = group.texts[member]
        L = len(toks)
        found: list[tuple[int, _Hit]] = []
        if self._use_self and (r := group.longest_self(member)) is not None:
            m, e = r
            found.append((m, _Hit("self", toks, e, L - e, self._match_len(toks, L, toks, e, m))))
        if group.siblings and (r := group.longest_sibling(member)) is not None:
            m, text, e = r
            found.append((m, _Hit("sibling", text, e, len(text) - e, self._match_len(toks, L, text, e, m))))
        if pool is not None and (r := pool.longest(toks, L)) is not None:
            m, text, e, _ = r
            found.append((m, _Hit("other", text, e, len(text) - e, self._match_len(toks, L, text, e, m))))
        if first_only and len(found) > 1:
            found = [max(found, key=lambda f: (f[0], -_TRUST[f[1].source]))]
        return [hit for _, hit in found]

    def _match_len(self, toks: Sequence[int], L: int, text: Sequence[int], e: int, m: int) -> int:
        """How far back the match goes: m, or more (up to MATCH_CAP) when m is max_match."""
        if m < self.config.max_match:
            return m
        limit = min(MATCH_CAP, L, e)
        while m < limit and toks[L - 1 - m] == text[e - 1 - m]:
            m += 1
        return m
