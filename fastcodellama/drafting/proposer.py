"""CopyProposer: drafts copied from text already produced or seen (engine.proposer.Proposer).

Each running sequence's draft is the continuation of the most recent earlier occurrence of
its last m tokens (m from max_match down to n) in one of:
  prediction  the text a client predicted for the request's output (OpenAI's predicted
              outputs; an editor sends the old text of what it asks to rewrite),
  self        its own prompt + output so far (the copy stops at the current end of the text),
  sibling     the other samples of the same request (group_id), as far as they have got,
  other       a bounded pool of finished outputs of other requests.
With policy "fixed" the longest match wins, in that order of trust at equal length (the rule
the ceiling study replays). With "adaptive" each source offers its longest match, measured
back past max_match (up to MATCH_CAP tokens), so a longer match from a less trusted source can
beat a shorter one from a more trusted source; "other" needs one more matched token. Whether
to look for copies at all this step, and how many tokens to draft, is
fastcodellama.drafting.policy's one decision.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from engine.proposer import EMPTY_DRAFT, Draft, DraftQueries, DraftQuery
from fastcodellama.drafting.acceptance import MATCH_CAP, AcceptanceModel, ml_bucket
from fastcodellama.drafting.config import SOURCES, SpecConfig
from fastcodellama.drafting.ngram_index import GroupIndex, NgramTables, OtherPool, check_token_ids
from fastcodellama.drafting.ngram_tables import batch_index, batch_search, member_index, table_factory
from fastcodellama.drafting.policy import Candidate, Cost, Decision, DraftPolicy

# Selection among sources (adaptive policy), from the replay of every source's candidate at every
# step (benchmarks/proposer_replay.py): making "other" beat the others only with one more
# matched token gained accepted tokens on both held-out trace files.
_TRUST = {"prediction": 0, "self": 1, "sibling": 2, "other": 3}
_HANDICAP = {"prediction": 0, "self": 0, "sibling": 0, "other": 1}
OTHER_HANDICAP = _HANDICAP["other"]
# The search's seconds per query: the mean of the latest SEARCH_WINDOW searches of its batch size,
# not counting a size's first (see _note_search_time). Not a decayed mean: the first searches of a
# run are several times slower than the rest, and while searches are throttled (policy.SEARCH_SHARE,
# by their believed cost) the few that run would take hundreds of steps to wear such a start down.
# Nor a median: at a large batch most searches look up only the sequences whose back-off has run
# out, and one in several looks them all up at ten times the cost.
SEARCH_WINDOW = 9
# At a large batch most sequences get no draft in a step (the budget goes to the likeliest copies),
# and looking them all up costs the host tens of microseconds each. A sequence that got no draft is
# looked up again only after 1, 2, 4 ... up to IDLE_SKIP_MAX skipped searches (any draft it gets
# resets that); below SKIP_FROM queries every sequence is looked up every time.
SKIP_FROM = 32
IDLE_SKIP_MAX = 7


@dataclass(slots=True)
class _Seq:
    group_id: str
    group: GroupIndex
    member: int
    prompt_len: int
    prediction: NgramTables | None
    output: list[int]  # the accepted output: the engine's own list, or the proposer's (see extend)
    owns_output: bool
    item: tuple | None = None  # its sources as ngram_tables.c's best_copies reads them (C tables only)
    idle: int = 0  # searches in a row that gave it no draft
    skip: int = 0  # searches it sits out before it is looked up again

    def note_search(self, drafted: bool) -> None:
        """Back-off of the lookups of a sequence that got no draft: it sits out 1, 2, 4 ... searches."""
        if drafted:
            self.idle = 0
        else:
            self.idle += 1
            self.skip = min(1 << min(self.idle - 1, 8), IDLE_SKIP_MAX)


@dataclass(slots=True)
class _Hit:
    source: str
    text: Sequence[int]
    end: int           # the copy starts at text[end]
    avail: int         # tokens the text holds after `end`
    match_len: int     # matched tokens before `end` (measured up to MATCH_CAP)
    bucket: tuple[str, int]  # the acceptance model's (source, match-length bucket)


# A sequence's best copy: (source, text, end, match length), the copy starting at text[end].
Copy = tuple[str, Sequence[int], int, int]
_NAMES = ("prediction", "self", "sibling", "other")  # best_copies' sources, in order of trust


def _survival_after(surv: list[float], offset: int) -> list[float]:
    """AcceptanceModel.survival as seen from a copy's token `offset` (its later positions share the
    last): surv[offset + j] / surv[offset]."""
    last = len(surv) - 1
    base = surv[min(offset, last)]
    if base <= 0.0:
        return [0.0]
    return [p / base for p in surv[min(offset, last):]]


class _AfterFirst(dict):
    """AcceptanceModel.survival as seen from a draft's second token (a draft found ahead, whose
    first token is not drafted): survival[j + 1] / survival[1], one list per bucket per search."""

    def __init__(self, survival: dict[tuple[str, int], list[float]]) -> None:
        super().__init__()
        self._survival = survival

    def __missing__(self, bucket: tuple[str, int]) -> list[float]:
        surv = self._survival[bucket]
        shifted = self[bucket] = _survival_after(surv, 1) if len(surv) > 1 else [0.0]
        return shifted


@dataclass(slots=True)
class _Pending:
    """A draft given out and not yet heard of (record): what the policy and the model learn from it."""

    draft: Draft
    bucket: tuple[str, int]  # its copy's, in the acceptance model
    expected: float  # accepted tokens the model expected
    ahead: bool  # found ahead: its first token is the one the step before was expected to give
    first: float  # the model's probability of the copy's first token
    text: Sequence[int]  # the copy: draft.tokens == text[end:end + len(draft.tokens)]
    end: int
    search: int  # the search that gave it
    # Where draft.tokens[0] is in its copy, counted from the token `first` is the chance of: past
    # 0 for a copy's continuation past a draft in flight (then not the model's evidence).
    offset: int = 0
    # A continuation's: the draft it continues, and how many of that one's tokens had to be the
    # sequence's (its premise); a draft's own: what it got, once heard of.
    parent: "_Pending | None" = None
    premise: int = 0
    heard: int | None = None


def _longest(found: tuple[int, str, Sequence[int], int]) -> tuple[int, int]:
    return found[0], -_TRUST[found[1]]


class CopyProposer:
    """Implements engine.proposer.Proposer; see the module docstring."""

    def __init__(self, config: SpecConfig | None = None,
                 search_time: Callable[[int], float] | None = None) -> None:
        """`search_time`: the seconds per query the policy is told a search of n queries costs, a
        function of n fixed in advance (a simulated device sets it, so that its runs repeat
        exactly); None: measured."""
        self.config = cfg = config or SpecConfig()
        self._seqs: dict[int, _Seq] = {}
        self._groups: dict[str, GroupIndex] = {}
        self._predictions: dict[str, NgramTables] = {}
        self._next_member: dict[str, int] = {}
        self._use_self = "self" in cfg.sources
        self._tables = table_factory(cfg.index_tables)
        self._best_copies = batch_search(self._tables)
        self._index_runs = batch_index(self._tables)
        self._index_members = member_index(self._tables)
        self._members: dict[int, tuple] = {}  # seq_id -> what index_members reads of it (C tables only)
        self._pool = (OtherPool(cfg.n, cfg.max_match, cfg.other_pool_tokens, self._tables)
                      if "other" in cfg.sources and cfg.other_pool_tokens > 0 else None)
        self.model = AcceptanceModel(cfg.sources, max_draft=cfg.k + 1)
        # The gate weighs the likeliest copy of the sources that can give one now: a client's
        # predicted output (assumed mostly right) only while a request has one.
        self._sources_without_prediction = tuple(s for s in cfg.sources if s != "prediction")
        self.policy = DraftPolicy(self.model, adaptive=cfg.policy == "adaptive")
        # seq_id -> the drafts given out and not yet heard of, oldest first (two where drafting
        # steps are queued back to back)
        self._pending: dict[int, list[_Pending]] = {}
        self._drafted = dict.fromkeys(SOURCES, 0)
        self._accepted = dict.fromkeys(SOURCES, 0)
        self._drafts = dict.fromkeys(SOURCES, 0)
        self._search_fixed = search_time
        self._search_recent: deque[float] = deque(maxlen=SEARCH_WINDOW)  # seconds per query
        # The same by batch size (n.bit_length()): a search has a fixed part, so that per query it
        # costs several times more for a few sequences than for hundreds.
        self._search_recent_by_size: dict[int, deque[float]] = {}
        self._propose_s = 0.0
        self._propose_calls = self._searches = self._explorations = self._queries = 0
        # will_search's decision to search, for the propose_ahead() after it
        self._decided: Decision | None = None
        # Searches whose drafts are out, by serial: [drafts not yet heard of, tokens credited to
        # the policy]; once all are heard of (or a later search's are), the policy's realized outcome.
        self._serial = 0
        self._open: dict[int, list[int]] = {}
        self._heard: list[tuple[int, int]] = []  # (serial, credited) of searches heard of in full

    # ------------------------------------------------------------------ Proposer protocol

    def add_sequence(self, seq_id: int, group_id: str, prompt_token_ids: Sequence[int],
                     prediction: Sequence[int] = (), output: list[int] | None = None) -> None:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} was already added")
        check_token_ids(prompt_token_ids)
        check_token_ids(prediction)
        cfg = self.config
        group = self._groups.get(group_id)
        if group is None:
            group = GroupIndex(prompt_token_ids, cfg.n, cfg.max_match, "sibling" in cfg.sources, self._tables)
            self._groups[group_id] = group
            self._next_member[group_id] = 0
            if prediction and "prediction" in cfg.sources:
                # After the prompt's last tokens, so that the first draft can start the prediction.
                text = list(prompt_token_ids[-cfg.max_match:]) + list(prediction)
                self._predictions[group_id] = NgramTables(text, cfg.n, cfg.max_match, tables=self._tables)
        member = self._next_member[group_id]
        self._next_member[group_id] = member + 1
        text = group.add_member(member, prompt_token_ids)
        st = self._seqs[seq_id] = _Seq(group_id, group, member, len(prompt_token_ids),
                                       self._predictions.get(group_id), [] if output is None else output, output is None)
        if self._best_copies is not None:
            st.item = self._item(st)
        if self._index_members is not None:
            sib = group.siblings
            self._members[seq_id] = (st.output, text, st.prompt_len, group.cursors[member], group.own[member].maps,
                                     group.texts if sib else None, group.top.maps if sib else None,
                                     group.second.maps if sib else None, member)

    def _item(self, st: _Seq) -> tuple:
        """The sequence's sources as best_copies reads them (each None where it has none)."""
        group, member, pred = st.group, st.member, st.prediction
        own = group.own[member].maps if self._use_self else None
        prompt = group.prompt_tables.tables.maps if self._use_self and group.shares_prompt[member] else None
        sib = group.siblings
        return (group.texts[member], pred.tables.maps if pred else None, pred.tokens if pred else None, own, prompt,
                group.top.maps if sib else None, group.second.maps if sib else None, member,
                group.texts if sib else None)

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> None:
        # Unchecked, unlike prompts and predictions: the engine's tokens are the model's own ids.
        st = self._seqs[seq_id]
        if not st.owns_output:
            raise ValueError(f"sequence {seq_id} was added with its output list: it is read, not extended")
        st.output.extend(token_ids)
        self._index(st)

    @staticmethod
    def _index(st: _Seq) -> None:
        """Hands the group's index what the sequence's output gained since the last time."""
        out, have = st.output, len(st.group.texts[st.member]) - st.prompt_len
        if len(out) > have:
            st.group.extend(st.member, out[have:])

    def _index_all(self) -> None:
        """Before a search: every sequence's new tokens, its siblings' copies included. With C
        tables in one call (index_members), after what groups hold already (a member extended
        through extend, a finished one, a join); with dicts a call a sequence, its reference."""
        if self._index_members is None:
            index = self._index
            for st in self._seqs.values():
                index(st)
        runs: list[tuple] = []  # every group's new keys, indexed in one call (no lazy sync at the lookups)
        for group in self._groups.values():
            group.take_runs(runs)
        self._index_runs(runs)
        if self._index_members is not None:
            self._index_members(self._members.values(), self.config.n, self.config.max_match)

    def will_search(self, n: int, budget: int, cost: Cost) -> bool:
        """The policy's decision for the next step, made now (before its tokens are known): where
        it is to search, the propose_ahead() that follows keeps it; where not, no propose follows.
        Asked only where the next step is queued ahead of those tokens; the step after a draft
        is too, unless the engine finds waiting for its tokens pays (engine/overlap_choice.py),
        and then the drafting step's cost carries the overlap forgone (engine/step_cost.py): the
        decision counts none."""
        self._realize(cost)
        decision = self._decide(n, self._budget(n, budget), cost)
        self._decided = decision if decision.search else None
        return decision.search

    def _decide(self, n: int, budget: int, cost: Cost) -> Decision:
        sources = self.config.sources if self._predictions else self._sources_without_prediction
        return self.policy.decide(n, budget, cost, self._search_s(n), sources)

    def _realize(self, cost: Cost) -> None:
        """What the drafts of searches heard of in full brought, to the policy."""
        for serial, credited in self._heard:
            self.policy.realize(credited, cost, serial)
        self._heard.clear()

    def _heard_of(self, serial: int, credited: int) -> None:
        """One draft of search `serial` heard of (or gone with its sequence), `credited` tokens to
        the policy's account. Steps are applied in order: the searches before it are heard of too."""
        entry = self._open.get(serial)
        if entry is None:
            return
        entry[0] -= 1
        entry[1] += credited
        for older in [s for s in self._open if s < serial]:
            self._heard.append((older, self._open.pop(older)[1]))
        if entry[0] <= 0:
            self._heard.append((serial, self._open.pop(serial)[1]))

    def propose(self, queries: Sequence[DraftQuery], budget: int, cost: Cost) -> list[Draft]:
        return self._propose(queries, budget, cost, ahead=False)

    def propose_ahead(self, queries: Sequence[DraftQuery], budget: int, cost: Cost,
                      in_flight: Mapping[int, tuple[Draft, int]] | None = None) -> list[Draft]:
        """propose() for the step queued behind the one in flight, from the text without that
        step's tokens: each draft begins with the token its copy says the sequence gets next,
        which it is not fed (it gets its own), and each query's max_len counts the tokens after
        it. A sequence whose draft of this proposer's is in flight (`in_flight`: as proposed, and
        how many of its tokens that step covers) is given the copy's continuation after them, not
        looked up: its next token follows the part of that draft accepted, which only the device
        knows yet. The search runs beside the step in flight: only a draft costs the device."""
        return self._propose(queries, budget, cost, ahead=True, in_flight=in_flight)

    def _propose(self, queries: Sequence[DraftQuery], budget: int, cost: Cost, ahead: bool,
                 in_flight: Mapping[int, tuple[Draft, int]] | None = None) -> list[Draft]:
        t0 = time.perf_counter()
        n = len(queries)
        self._propose_calls += 1
        self._realize(cost)
        budget = self._budget(n, budget)
        decided, self._decided = self._decided, None
        decision = decided if ahead else None
        if decision is None or n == 0 or budget <= 0:  # will_search's, unless no sequence is left to draft for
            decision = self._decide(n, budget, cost)
        if not decision.search:
            self._propose_s += time.perf_counter() - t0
            return [EMPTY_DRAFT] * n
        self._index_all()
        drafts = self._search(queries, budget, cost, decision, 0.0 if ahead else None, ahead, in_flight)
        elapsed = time.perf_counter() - t0
        self._note_search_time(n, elapsed)
        self._propose_s += elapsed
        self._searches += 1
        self._explorations += decision.explore
        self._queries += n
        return drafts

    def _search_s(self, n: int) -> float:
        """What a search for n queries is believed to cost, in seconds: as told, else as measured."""
        if self._search_fixed is not None:
            return self._search_fixed(n) * n
        return self._search_per_query(self._search_recent_by_size.get(n.bit_length())) * n

    def search_us_at(self, n: int) -> float:
        """Measured microseconds per query of searches of about n queries (those of n's size, else
        of the nearest size searched): what `simulated_device.py --search-us US@N` should be told."""
        sizes = [size for size, recent in self._search_recent_by_size.items() if recent]
        if not sizes:
            return 1e6 * self._search_per_query()
        nearest = min(sizes, key=lambda size: (abs(size - n.bit_length()), -size))
        return 1e6 * self._search_per_query(self._search_recent_by_size[nearest])

    def _search_per_query(self, recent: deque[float] | None = None) -> float:
        """Measured seconds per query: the mean of `recent` (or of the latest searches of any size
        where that batch size has none)."""
        recent = recent or self._search_recent
        return sum(recent) / len(recent) if recent else 0.0

    def _note_search_time(self, n: int, seconds: float) -> None:
        size = n.bit_length()
        recent = self._search_recent_by_size.get(size)
        if recent is None:  # a size's first search pays one-time costs (cold caches); believed, it throttles
            self._search_recent_by_size[size] = deque(maxlen=SEARCH_WINDOW)
            return
        per_query = seconds / n
        self._search_recent.append(per_query)
        recent.append(per_query)

    def record(self, seq_id: int, draft: Draft, num_accepted: int) -> None:
        tokens = draft.tokens
        n = len(tokens)
        if n == 0:
            return
        accepted = max(0, min(int(num_accepted), n))
        source = draft.source if draft.source in SOURCES else "self"
        pending = self._heard_pending(seq_id, draft)
        self._drafts[source] += 1
        self._drafted[source] += n
        self._accepted[source] += accepted
        if pending is None:  # not a draft of this proposer's (or cut otherwise than short): a match of one token
            self.model.record_at((source, ml_bucket(1)), n, accepted, seq_id if seq_id in self._seqs else None, None)
            return
        pending.heard = accepted
        # A draft found ahead began with the token the step before gave anyway: no gain.
        self._heard_of(pending.search, accepted - 1 if pending.ahead and accepted else accepted)
        if not pending.offset:  # (a continuation's positions are not its copy's first: not the model's evidence)
            running = seq_id in self._seqs  # per-sequence statistics only for live sequences
            self.model.record_at(pending.bucket, n, accepted, seq_id if running else None, pending.expected)

    def _heard_pending(self, seq_id: int, draft: Draft) -> _Pending | None:
        """The sequence's pending draft that `draft` is (or its prefix: cut by the scheduler), out
        of the pending list with those before it (given out, never verified: their step was dropped)."""
        entries = self._pending.get(seq_id)
        if not entries:
            return None
        n = len(draft.tokens)
        i = next((i for i, entry in enumerate(entries) if entry.draft is draft), None)
        if i is None:
            i = next((i for i, entry in enumerate(entries) if entry.draft.tokens[:n] == draft.tokens), None)
        if i is None:
            return None
        entry = entries[i]
        for stale in entries[:i]:
            self._heard_of(stale.search, 0)
        del entries[:i + 1]
        if not entries:
            del self._pending[seq_id]
        return entry

    def finish(self, seq_id: int, aborted: bool = False) -> None:
        st = self._seqs.pop(seq_id, None)
        if st is None:
            return
        for entry in self._pending.pop(seq_id, ()):
            self._heard_of(entry.search, 0)
        self._members.pop(seq_id, None)
        self.model.forget(seq_id)
        self._index(st)
        text = st.group.finish(st.member)
        if not aborted and self._pool is not None:
            self._pool.add(text[st.prompt_len:], st.group_id)
        if not st.group.live and self._groups.get(st.group_id) is st.group:
            del self._groups[st.group_id]
            del self._next_member[st.group_id]
            self._predictions.pop(st.group_id, None)

    # ------------------------------------------------------------------ the search

    def _budget(self, n: int, budget: int) -> int:
        cfg = self.config
        if not cfg.enabled or cfg.k <= 0:
            return 0
        if cfg.budget is not None:
            budget = min(budget, cfg.budget)
        return min(budget, cfg.k * n)

    def _search(self, queries: Sequence[DraftQuery], budget: int, cost: Cost, decision: Decision,
                sunk: float | None = None, ahead: bool = False,
                in_flight: Mapping[int, tuple[Draft, int]] | None = None) -> list[Draft]:
        """The drafts: each query's best copy, lengths from the policy (`sunk`: what the search
        cost whatever is drafted, in seconds; None: its own believed time). `ahead`: each draft
        begins with its copy's next token, not counted in its length, and is weighed by the tokens
        after it (propose_ahead); a sequence with a draft `in_flight` continues that draft's copy
        (_continued). A sequence sitting out its back-off costs a lookup of its state and nothing
        more."""
        model = self.model
        model.refresh()
        adaptive = self.config.policy == "adaptive"
        may_skip = adaptive and len(queries) >= SKIP_FROM
        get = self._seqs.get
        queries = DraftQueries.of(queries)
        ids, max_len_of = queries.seq_ids, queries.max_len
        looked_up: list[tuple[int, _Seq, int]] = []  # (query index, state, max_len)
        continued, unknown = self._continued(ids, in_flight) if ahead and in_flight else ({}, ())
        for i, seq_id in enumerate(ids):
            st = get(seq_id)
            if st is None or i in continued or i in unknown:
                continue
            if may_skip and st.skip > 0:
                st.skip -= 1
                continue
            looked_up.append((i, st, max_len_of(i)))
        copies = self._copies(looked_up, adaptive)
        k, first_prob, seq_factor = self.config.k, model.first_prob_at, model.seq_factor
        survival = model.survival if not ahead else _AfterFirst(model.survival)
        cands: list[Candidate | None] = [None] * len(queries)
        firsts: list[float] = [0.0] * len(looked_up)
        buckets: list[tuple[str, int] | None] = [None] * len(looked_up)
        for j, (i, _, max_len) in enumerate(looked_up):
            copy = copies[j]
            if copy is not None:  # AcceptanceModel.first_prob and survival_of, their bucket found once
                source, text, end, m = copy
                bucket = buckets[j] = (source, ml_bucket(m))
                a = firsts[j] = first_prob(bucket, seq_factor(ids[i]))
                if ahead:  # the first token is not drafted: the candidate starts at the second
                    a *= model.survival[bucket][1]
                cands[i] = Candidate(a, min(len(text) - end - ahead, k, max_len), survival[bucket])
        for i, (parent, covered) in continued.items():
            surv = model.survival[parent.bucket]
            after = parent.offset + covered + 1  # the continuation's first fed token, in its copy
            limit = min(len(parent.text) - parent.end - covered - 1, k, max_len_of(i))
            if limit > 0:
                cands[i] = Candidate(parent.first * surv[min(after, len(surv) - 1)], limit,
                                     _survival_after(surv, after))
        own = self._search_s(len(queries))
        serial = self._serial = self._serial + 1
        lens = self.policy.allocate(cands, budget, cost, own if sunk is None else sunk, decision, own, serial)
        drafts = [EMPTY_DRAFT] * len(queries)
        given, expected = 0, model.expected_at
        for j, (i, st, _) in enumerate(looked_up):
            d = lens[i]
            if may_skip:
                st.note_search(d > 0)
            if d <= 0:
                continue
            source, text, end, _ = copies[j]
            d += ahead
            draft = drafts[i] = Draft(tuple(text[end:end + d]), source)
            self._give(ids[i], _Pending(draft, buckets[j], expected(buckets[j], firsts[j], d), ahead, firsts[j],
                                        text, end, serial))
            given += 1
        for i, (parent, covered) in continued.items():
            parent.parent = None  # its own premise was looked at: no chain of drafts is kept
            if lens[i] > 0:
                end = parent.end + covered
                draft = drafts[i] = Draft(tuple(parent.text[end:end + lens[i] + 1]), parent.draft.source)
                self._give(ids[i], _Pending(draft, parent.bucket, 0.0, True, parent.first, parent.text, end, serial,
                                            parent.offset + covered, parent, covered))
                given += 1
        if given:
            self._open[serial] = [given, 0]
        return drafts

    def _give(self, seq_id: int, pending: _Pending) -> None:
        self._pending.setdefault(seq_id, []).append(pending)

    def _continued(self, ids: Sequence[int], in_flight: Mapping[int, tuple[Draft, int]]
                   ) -> tuple[dict[int, tuple[_Pending, int]], set[int]]:
        """By query index, the sequences whose draft of this proposer's is in flight: its pending
        entry and how many of its copy's tokens the step in flight covers. Each is given its copy
        after those (the token expected next, then the draft), not looked up again: that text
        continues the draft's only if the whole draft is accepted and the copy's next token is
        the sequence's (each continued token is weighed so: the copy's first tokens' chances
        carry on through the draft), and a lookup now, short of the step's tokens, would match
        against text the sequence may never have. Not where the draft in flight continues a draft
        whose premise is known to have failed (not all of it accepted, or the sequence's token
        after it another): that one gives the sequence its first row's token only, and the
        sequence is looked up as before a step with no draft. Also returned: the query indices
        neither continued nor looked up (a draft in flight not this proposer's: where the sequence
        goes on is not known)."""
        out, unknown = {}, set()
        for i, seq_id in enumerate(ids):
            flying = in_flight.get(seq_id)
            if flying is None:
                continue
            entry = next((p for p in self._pending.get(seq_id, ()) if p.draft is flying[0]), None)
            if entry is None:
                unknown.add(i)
            elif not self._failed(entry, seq_id):
                out[i] = (entry, flying[1])
        return out, unknown

    def _failed(self, entry: _Pending, seq_id: int) -> bool:
        """Whether a continuation's premise is known to have failed: the draft it continues was
        heard of, and not all of what it covered was accepted, or the token the sequence got after
        it is not the one the continuation began with."""
        parent = entry.parent
        if parent is None or parent.heard is None:
            return False
        output = self._seqs[seq_id].output
        return parent.heard < entry.premise or not output or output[-1] != entry.draft.tokens[0]

    def _copies(self, looked_up: list[tuple[int, _Seq, int]], adaptive: bool) -> list[Copy | None]:
        """Each looked-up sequence's best copy (None where it has none, or may not draft): in one C
        call where the tables are C's, else _best_hit's Python (the reference it is tested against)."""
        if self._best_copies is None:
            best_hit = self._best_hit
            return [best_hit(st, adaptive) if max_len > 0 else None for _, st, max_len in looked_up]
        cfg = self.config
        pool_maps, pool_texts = self._pool.synced() if self._pool is not None else (None, None)
        return self._best_copies([st.item if max_len > 0 else None for _, st, max_len in looked_up], cfg.n,
                                 cfg.max_match, MATCH_CAP, adaptive, OTHER_HANDICAP, pool_maps, pool_texts, _NAMES)

    # ------------------------------------------------------------------ extras

    def stats(self) -> dict:
        by_source = {s: {"drafts": self._drafts[s], "drafted": self._drafted[s], "accepted": self._accepted[s]}
                     for s in SOURCES}
        return {
            "by_source": by_source,
            "drafted": sum(self._drafted.values()),
            "accepted": sum(self._accepted.values()),
            "propose_calls": self._propose_calls,
            "searches": self._searches,
            "explorations": self._explorations,
            "queries": self._queries,
            "propose_s": self._propose_s,
            "search_us_per_query": 1e6 * self._search_per_query(),
            "running": len(self._seqs),
            "groups": len(self._groups),
            "pool_texts": len(self._pool) if self._pool is not None else 0,
            "pool_tokens": self._pool.num_tokens if self._pool is not None else 0,
            "model": self.model.snapshot(),
        }

    # ------------------------------------------------------------------ matching

    def candidates(self, seq_id: int) -> list[_Hit]:
        """Each source's longest match for the sequence now (for diagnostics and fitting priors)."""
        self._index_all()
        st = self._seqs[seq_id]
        toks = st.group.texts[st.member]
        return [self._hit(toks, *f) for f in self._find(st)]

    def _best_hit(self, st: _Seq, adaptive: bool) -> Copy | None:
        """Fixed: the longest match m of _find, the most trusted at equal length. Adaptive: each
        source's longest match, measured past max_match; the longest wins, by trust at equal
        length, and "other" needs OTHER_HANDICAP more matched tokens (see the module docstring).
        Found in order of trust, so the first of equals wins; only the winner becomes a hit."""
        found = self._find(st)
        if not found:
            return None
        toks = st.group.texts[st.member]
        reach = self._reach
        if len(found) == 1 or not adaptive:
            best = found[0] if len(found) == 1 else max(found, key=_longest)
            m = reach(toks, best[0], best[2], best[3])
        else:
            best, m, rank = None, 0, -1
            for f in found:
                reached = reach(toks, f[0], f[2], f[3])
                if reached - _HANDICAP[f[1]] > rank:
                    best, m, rank = f, reached, reached - _HANDICAP[f[1]]
        return best[1], best[2], best[3], m

    def _find(self, st: _Seq) -> list[tuple[int, str, Sequence[int], int]]:
        """Each source's longest match (m from max_match down to n), by trust: (m, source, text,
        end), the copy starting at text[end]."""
        group, member, pool = st.group, st.member, self._pool
        toks = group.texts[member]
        found = []
        if st.prediction is not None and (r := st.prediction.tables.longest(toks, len(toks))) is not None:
            found.append((r[0], "prediction", st.prediction.tokens, r[1]))
        if self._use_self and (r := group.longest_self(member)) is not None:
            found.append((r[0], "self", toks, r[1]))
        if group.siblings and (r := group.longest_sibling(member)) is not None:
            found.append((r[0], "sibling", r[1], r[2]))
        if pool is not None and (r := pool.longest(toks, len(toks))) is not None:
            found.append((r[0], "other", r[1], r[2]))
        return found

    def _hit(self, toks: Sequence[int], m: int, source: str, text: Sequence[int], e: int) -> _Hit:
        """A match as a hit (candidates' diagnostics), measured as far back as _reach goes."""
        m = self._reach(toks, m, text, e)
        return _Hit(source, text, e, len(text) - e, m, (source, ml_bucket(m)))

    def _reach(self, toks: Sequence[int], m: int, text: Sequence[int], e: int) -> int:
        """How far back a match of m tokens before text[e] goes: m, or more (up to MATCH_CAP) when
        m is max_match. Most that go on at all run to the cap: one slice comparison first."""
        if m < self.config.max_match:
            return m
        L = len(toks)
        limit = min(MATCH_CAP, L, e)
        if m >= limit or toks[L - 1 - m] != text[e - 1 - m]:
            return m
        ours, theirs = toks[L - limit:L - m], text[e - limit:e - m]
        if ours == (theirs if type(theirs) is type(ours) else type(ours)(theirs)):
            return limit
        m += 1
        while m < limit and toks[L - 1 - m] == text[e - 1 - m]:
            m += 1
        return m
