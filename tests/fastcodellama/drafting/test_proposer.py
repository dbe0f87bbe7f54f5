"""CopyProposer against a brute-force drafter, and the protocol's guarantees."""
from __future__ import annotations

import inspect
import random

import pytest

from engine.proposer import EMPTY_DRAFT, Draft, DraftQuery, Proposer
from fastcodellama.drafting.ngram_tables import load_extension
from fastcodellama.drafting.acceptance import MATCH_CAP
from fastcodellama.drafting.proposer import OTHER_HANDICAP, SEARCH_WINDOW, CopyProposer
from fastcodellama.drafting import SpecConfig, build_proposer


class FreeCost:
    """A device where draft rows cost nothing: drafting always pays."""

    def plain(self, seqs: int) -> float:
        return 1.0

    def extra(self, seqs: int, draft_rows: int) -> float:
        return 0.0

    def measured(self, seqs: int) -> bool:
        return True

    def forgone(self, seqs: int) -> float:
        return 0.0


FREE = FreeCost()


class RefGroup:
    def __init__(self) -> None:
        self.members: list[int] = []
        self.live: set[int] = set()
        self.log: list[tuple[int, int]] = []    # (seq, end) in the order ends became copyable


class RefDrafter:
    """The ceiling's rule by brute force: for m = max_match..n, the most recent earlier
    occurrence in self, else the latest in a sibling, else the newest pool text that has it."""

    def __init__(self, cfg: SpecConfig) -> None:
        self.cfg = cfg
        self.texts: dict[int, list[int]] = {}
        self.prompt_len: dict[int, int] = {}
        self.group_of: dict[int, RefGroup] = {}
        self.groups: dict[str, RefGroup] = {}
        self.gid: dict[int, str] = {}
        self.pool: list[list[int]] = []

    def add(self, sid: int, gid: str, prompt: list[int]) -> None:
        g = self.groups.setdefault(gid, RefGroup())
        g.members.append(sid)
        g.live.add(sid)
        self.texts[sid], self.prompt_len[sid], self.group_of[sid], self.gid[sid] = list(prompt), len(prompt), g, gid

    def extend(self, sid: int, toks: list[int]) -> None:
        text = self.texts[sid]
        start = max(len(text), self.prompt_len[sid])
        text.extend(toks)
        self.group_of[sid].log += [(sid, e) for e in range(start, len(text))]

    def finish(self, sid: int, aborted: bool) -> None:
        g = self.group_of[sid]
        g.live.discard(sid)
        if not aborted and "other" in self.cfg.sources:
            out = self.texts[sid][self.prompt_len[sid]:]
            if len(out) >= 2:
                self.pool.append(out[-self.cfg.other_pool_tokens:])
                while sum(map(len, self.pool)) > self.cfg.other_pool_tokens:
                    self.pool.pop(0)
        if not g.live and self.groups.get(self.gid[sid]) is g:
            del self.groups[self.gid[sid]]

    def draft(self, sid: int, max_len: int) -> tuple[tuple[int, ...], str]:
        cfg, me = self.cfg, self.texts[sid]
        L, cap = len(me), min(cfg.k, max_len)
        for m in range(cfg.max_match, cfg.n - 1, -1):
            if m > L:
                continue
            gram = me[L - m:]
            if "self" in cfg.sources:
                for e in range(L - 1, m - 1, -1):
                    if me[e - m:e] == gram:
                        return tuple(me[e:e + cap]), "self"
            if "sibling" in cfg.sources:
                for other, e in reversed(self.group_of[sid].log):
                    t = self.texts[other]
                    if other != sid and e >= m and t[e - m:e] == gram:
                        return tuple(t[e:e + cap]), "sibling"
            if "other" in cfg.sources:
                for t in reversed(self.pool):
                    for e in range(len(t) - 1, m - 1, -1):
                        if t[e - m:e] == gram:
                            return tuple(t[e:e + cap]), "other"
        return (), "self"


def test_implements_the_engine_protocol() -> None:
    for name, proto in inspect.getmembers(Proposer, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(CopyProposer, name)
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(proto).parameters), name


def random_session(rng: random.Random, cfg: SpecConfig, steps: int, check, shared: bool = False) -> CopyProposer:
    """Random adds, extends, finishes and proposals; check(proposer, ref, sid, max_len, draft).
    shared: the proposer gets each sequence's output list, as from the engine, and is never told of
    the tokens appended to it; the reference learns them, in the order of the sequences, only when
    the proposer is to read them (a search, or the sequence's end)."""
    prop, ref = CopyProposer(cfg), RefDrafter(cfg)
    outputs: dict[int, list[int]] = {}  # shared: each sequence's output list, as the engine keeps it
    unread: dict[int, list[int]] = {}   # shared: tokens appended since the proposer last read them

    def read(sids) -> None:
        for sid in sorted(sids):
            if unread.get(sid):
                ref.extend(sid, unread.pop(sid))
    vocab = rng.choice((3, 5, 12))
    prompts = {f"g{i}": [rng.randrange(vocab) for _ in range(rng.randrange(1, 12))] for i in range(4)}
    running: list[int] = []
    next_id = 0
    for _ in range(steps):
        op = rng.random()
        if op < 0.12 or not running:
            gid = rng.choice(list(prompts))
            if shared:
                prop.add_sequence(next_id, gid, prompts[gid], output=outputs.setdefault(next_id, []))
            else:
                prop.add_sequence(next_id, gid, prompts[gid])
            ref.add(next_id, gid, prompts[gid])
            running.append(next_id)
            next_id += 1
        elif op < 0.2:
            sid = running.pop(rng.randrange(len(running)))
            aborted = rng.random() < 0.3
            read([sid])
            prop.finish(sid, aborted)
            ref.finish(sid, aborted)
        elif op < 0.7:
            sid = rng.choice(running)
            toks = [rng.randrange(vocab) for _ in range(rng.choice((1, 1, 2, 5)))]
            if shared:
                outputs[sid].extend(toks)
                unread.setdefault(sid, []).extend(toks)
            else:
                prop.extend(sid, toks)
                ref.extend(sid, toks)
        else:
            read(running)
            qs = [DraftQuery(s, rng.randrange(0, 30)) for s in rng.sample(running, rng.randrange(1, len(running) + 1))]
            budget = rng.choice((rng.randrange(0, 120), 10_000))
            drafts = prop.propose(qs, budget, FREE)
            assert len(drafts) == len(qs)
            assert sum(len(d) for d in drafts) <= budget
            for q, d in zip(qs, drafts):
                assert len(d) <= q.max_len
                check(prop, ref, q.seq_id, q.max_len, budget, d)
                prop.record(q.seq_id, d, rng.randrange(0, len(d) + 1))
    return prop


@pytest.mark.parametrize("shared", [False, True], ids=["told", "shared-output"])
@pytest.mark.parametrize("index_tables", ["dict", "c"])
def test_fixed_policy_drafts_equal_the_brute_force_drafter(index_tables: str, shared: bool) -> None:
    if index_tables == "c" and load_extension() is None:
        pytest.skip("the n-gram tables' C extension does not build here")

    def check(prop, ref, sid, max_len, budget, d):
        if budget >= 10_000:                        # no trimming: every draft is the full copy
            tokens, source = ref.draft(sid, max_len)
            assert d.tokens == tokens
            if tokens:
                assert d.source == source
        else:                                       # trimmed to the budget: a prefix of it
            tokens, _ = ref.draft(sid, max_len)
            assert d.tokens == tokens[:len(d)]

    rng = random.Random(1)
    for trial in range(12):
        sources = (("self",), ("self", "sibling"), ("self", "sibling", "other"), ("sibling", "other"))[trial % 4]
        cfg = SpecConfig(policy="fixed", n=1 + trial % 2, max_match=(1, 3, 4)[trial % 3] + trial % 2, k=7,
                         sources=sources, other_pool_tokens=(40, 500)[trial % 2], index_tables=index_tables)
        random_session(rng, cfg, 300, check, shared)


def test_adaptive_drafts_are_copies_within_budget_and_max_len() -> None:
    """Adaptive drafts are a prefix of one source's continuation, never past that text's end."""
    def check(prop, ref, sid, max_len, budget, d):
        if not len(d):
            return
        hits = [h for h in prop.candidates(sid) if h.source == d.source]
        assert hits and tuple(hits[0].text[hits[0].end:hits[0].end + len(d)]) == d.tokens
        assert len(d) <= hits[0].avail

    rng = random.Random(2)
    cfg = SpecConfig(policy="adaptive", k=9, other_pool_tokens=200)
    random_session(rng, cfg, 400, check)


def test_siblings_see_each_other_as_far_as_they_have_got() -> None:
    prop = build_proposer(SpecConfig(policy="fixed", sources=("self", "sibling")))
    prompt = [1, 2, 3]
    for sid in (0, 1):
        prop.add_sequence(sid, "req", prompt)
    prop.extend(0, [10, 11, 12])
    prop.extend(1, [10])
    assert prop.propose([DraftQuery(1, 50)], 100, FREE) == [Draft((11, 12), "sibling")]
    prop.extend(0, [13])
    assert prop.propose([DraftQuery(1, 50)], 100, FREE) == [Draft((11, 12, 13), "sibling")]
    prop.finish(0)                                   # a finished sibling stays readable
    assert prop.propose([DraftQuery(1, 2)], 100, FREE) == [Draft((11, 12), "sibling")]
    prop.add_sequence(2, "other-req", prompt)
    prop.extend(2, [10])
    assert prop.propose([DraftQuery(2, 50)], 100, FREE) == [EMPTY_DRAFT]   # not a sibling


def test_a_shared_output_is_read_without_being_told() -> None:
    """The engine hands over each sequence's output list and never calls extend: what it appends
    reaches siblings at the next search, and the pool at the sequence's end, searched or not."""
    prop = build_proposer(SpecConfig(policy="fixed"))
    out0, out1 = [], []
    prop.add_sequence(0, "req", [1, 2, 3], output=out0)
    prop.add_sequence(1, "req", [1, 2, 3], output=out1)
    out0 += [10, 11, 12]
    out1 += [10]
    assert prop.propose([DraftQuery(1, 50)], 100, FREE) == [Draft((11, 12), "sibling")]
    with pytest.raises(ValueError, match="read, not extended"):
        prop.extend(0, [13])
    out0 += [13, 14]                                 # never searched again before its end
    prop.finish(0)
    prop.finish(1)
    prop.add_sequence(2, "other-req", [9, 13], output=[])
    assert prop.propose([DraftQuery(2, 50)], 100, FREE) == [Draft((14,), "other")]


def test_others_see_finished_outputs_but_not_aborted_ones() -> None:
    prop = build_proposer(SpecConfig(policy="fixed"))
    prop.add_sequence(0, "a", [1])
    prop.extend(0, [20, 21, 22, 23])
    prop.add_sequence(1, "b", [2])
    prop.extend(1, [30, 31, 32])
    prop.finish(0)
    prop.finish(1, aborted=True)
    prop.add_sequence(2, "c", [9, 20])
    prop.add_sequence(3, "d", [9, 30])
    assert prop.propose([DraftQuery(2, 50), DraftQuery(3, 50)], 100, FREE) == [Draft((21, 22, 23), "other"), EMPTY_DRAFT]
    assert prop.stats()["groups"] == 2               # groups a and b are gone


def test_other_pool_memory_is_bounded() -> None:
    cap = 1000
    prop = build_proposer(SpecConfig(other_pool_tokens=cap))
    rng = random.Random(4)
    for sid in range(300):
        prop.add_sequence(sid, f"r{sid}", [rng.randrange(500) for _ in range(5)])
        prop.extend(sid, [rng.randrange(500) for _ in range(rng.randrange(1, 60))])
        prop.finish(sid)
        st = prop.stats()
        assert st["pool_tokens"] <= cap and st["running"] == 0 and st["groups"] == 0
    pool = prop._pool
    assert pool.num_entries() <= cap * (prop.config.max_match - prop.config.n + 1)


def test_adaptive_prefers_a_longer_match_from_a_less_trusted_source() -> None:
    def draft(policy: str) -> Draft:
        prop = build_proposer(SpecConfig(policy=policy, sources=("self", "sibling")))
        prop.add_sequence(0, "r", [0])
        prop.add_sequence(1, "r", [0])
        prop.extend(0, [1, 2, 3, 4, 5, 6, 7, 40, 41, 42])
        prop.extend(1, [8, 4, 5, 6, 7, 60, 61, 1, 2, 3, 4, 5, 6, 7])   # self matches 4 tokens, the sibling 7
        return prop.propose([DraftQuery(1, 50)], 100, FREE)[0]

    assert draft("fixed") == Draft((60, 61, 1, 2, 3, 4, 5, 6, 7), "self")   # the ceiling's rule: self wins at m=4
    adaptive = draft("adaptive")
    assert adaptive.source == "sibling" and adaptive.tokens[:3] == (40, 41, 42)


def test_stats_and_feedback() -> None:
    prop = build_proposer(SpecConfig(policy="fixed", sources=("self",)))
    prop.add_sequence(0, "r", [5, 6, 7, 5, 6])
    (d,) = prop.propose([DraftQuery(0, 10)], 10, FREE)
    assert d == Draft((7, 5, 6), "self")
    prop.record(0, d, 2)
    prop.record(0, Draft((1, 2), "sibling"), 5)        # not what was proposed: still counted, clamped
    st = prop.stats()
    assert st["by_source"]["self"] == {"drafts": 1, "drafted": 3, "accepted": 2}
    assert st["by_source"]["sibling"] == {"drafts": 1, "drafted": 2, "accepted": 2}
    assert st["propose_calls"] == 1 and st["queries"] == 1 and st["propose_s"] >= 0


def test_disabled_or_empty_budget_gives_plain_decoding() -> None:
    for cfg, budget in ((SpecConfig(enabled=False), 100), (SpecConfig(k=0), 100), (SpecConfig(), 0),
                        (SpecConfig(budget=0), 100)):
        prop = build_proposer(cfg)
        prop.add_sequence(0, "r", [1, 2, 1, 2, 1])
        assert prop.propose([DraftQuery(0, 10)], budget, FREE) == [EMPTY_DRAFT]
    prop = build_proposer(SpecConfig(policy="fixed"))
    prop.add_sequence(0, "r", [1, 2, 1, 2, 1])
    assert prop.propose([DraftQuery(0, 10)], 100, FREE)[0].tokens == (2, 1)
    prop = build_proposer(SpecConfig(policy="fixed", budget=2))
    prop.add_sequence(0, "r", [1, 2, 3, 1, 2, 3, 1])
    assert len(prop.propose([DraftQuery(0, 10)], 100, FREE)[0]) == 2


def test_will_search_decides_the_next_step_once() -> None:
    """will_search is the policy's decision for the next step, made before its tokens: yes is kept
    for the propose_ahead() after it; no means no propose (the step goes on without drafts)."""
    prop = build_proposer(SpecConfig(policy="fixed", sources=("self",)))
    prop.add_sequence(0, "r", [5, 6, 7, 5, 6])
    assert prop.will_search(1, 10, FREE)
    assert prop.propose_ahead([DraftQuery(0, 10)], 10, FREE) == [Draft((7, 5, 6), "self")]
    assert not build_proposer(SpecConfig(enabled=False)).will_search(1, 10, FREE)
    # Its sequences ended meanwhile: nothing to search for, whatever was decided.
    prop.finish(0)
    for _ in range(3):
        assert prop.will_search(1, 10, FREE)
        assert prop.propose_ahead([], 10, FREE) == []


def test_a_draft_found_ahead_begins_with_the_token_in_flight() -> None:
    """propose_ahead searches the text without the token the step in flight samples: each draft
    begins with the copy's next token (the one that step is expected to sample, which is not
    fed), and each query's max_len counts the tokens after it."""
    prop = build_proposer(SpecConfig(policy="fixed", sources=("self",)))
    prop.add_sequence(0, "r", [5, 6, 7, 8, 5, 6])
    assert prop.propose_ahead([DraftQuery(0, 1)], 10, FREE)[0].tokens == (7, 8)
    assert prop.propose_ahead([DraftQuery(0, 10)], 10, FREE)[0].tokens == (7, 8, 5, 6)
    assert prop.propose_ahead([DraftQuery(0, 10)], 2, FREE)[0].tokens == (7, 8, 5)  # the budget: fed tokens
    assert prop.propose([DraftQuery(0, 10)], 10, FREE)[0].tokens == (7, 8, 5, 6)


def test_a_draft_found_ahead_is_weighed_and_credited_by_its_tokens_after_the_first(monkeypatch) -> None:
    """An adaptive propose_ahead ranks a copy from its second token (the first is the one in
    flight): its first candidate token is accepted with the probability of the copy's first two,
    later ones as the survival after the second; once verified, the policy is credited with the
    accepted tokens after the first only, while the acceptance model learns the whole draft."""
    def proposer() -> tuple[CopyProposer, list]:
        prop = build_proposer(SpecConfig(sources=("self",)))
        prop.add_sequence(0, "r", [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7])
        seen = []
        allocate = prop.policy.allocate

        def allocate_seen(cands, *args, **kwargs):
            seen.append(cands)
            return allocate(cands, *args, **kwargs)

        monkeypatch.setattr(prop.policy, "allocate", allocate_seen)
        return prop, seen

    (sync, sync_seen), (ahead, ahead_seen) = proposer(), proposer()
    sync.propose([DraftQuery(0, 10)], 10, FREE)
    draft = ahead.propose_ahead([DraftQuery(0, 10)], 10, FREE)[0]
    (c,), (c_ahead,) = sync_seen[-1], ahead_seen[-1]
    surv = c.survival
    assert c_ahead.a == pytest.approx(c.a * surv[1])
    assert c_ahead.survival == pytest.approx([p / surv[1] for p in surv[1:]])
    assert c_ahead.limit == c.limit - 1 and draft.tokens[0] == 8
    credited = []
    monkeypatch.setattr(ahead.policy, "realize", lambda accepted, cost, key=None: credited.append(accepted))
    ahead.record(0, draft, 3)  # the token in flight came as expected, and two after it
    ahead.will_search(1, 10, FREE)
    assert credited == [2] and ahead.stats()["accepted"] == 3


class Forgoing(FreeCost):
    """Draft rows free, but a plain step not queued ahead costs `lost` steps more than a queued one."""

    def __init__(self, lost: float) -> None:
        self.lost = lost

    def forgone(self, seqs: int) -> float:
        return self.lost


def test_a_search_ahead_forgoes_no_overlap() -> None:
    """will_search is asked where the next step is queued ahead, and the step after a draft is
    queued ahead too (its rows moved on the device): what a plain step not queued ahead would
    cost more (here 100 plain steps) is no part of a search's or a draft's cost."""
    prop = build_proposer(SpecConfig(sources=("self",)))
    prop.add_sequence(0, "r", [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7])
    assert prop.will_search(1, 10, Forgoing(100.0))
    assert prop.propose_ahead([DraftQuery(0, 10)], 10, Forgoing(100.0))[0].tokens


def test_config_is_validated() -> None:
    for bad in (dict(n=0), dict(n=3, max_match=2), dict(max_match=9), dict(k=-1), dict(sources=("web",)),
                dict(policy="greedy"), dict(budget=-1),
                dict(index_tables="numpy")):
        with pytest.raises(ValueError):
            SpecConfig(**bad)
    assert SpecConfig(sources=["self"]).sources == ("self",)


def test_a_prediction_is_drafted_from_the_first_token_on() -> None:
    prop = build_proposer(SpecConfig(policy="fixed"))
    prompt = [5, 6, 7, 8]
    prop.add_sequence(0, "edit", prompt, prediction=[30, 31, 32, 33, 34])
    assert prop.propose([DraftQuery(0, 50)], 100, FREE) == [Draft((30, 31, 32, 33, 34), "prediction")]
    prop.extend(0, [30, 31, 99])  # the output left the prediction: copies resume where it joins it again
    prop.extend(0, [33])
    assert prop.propose([DraftQuery(0, 50)], 100, FREE) == [Draft((34,), "prediction")]
    prop.add_sequence(1, "other", prompt)
    assert prop.propose([DraftQuery(1, 50)], 100, FREE)[0].source != "prediction"  # another request's


def test_at_a_large_batch_sequences_that_get_no_draft_are_looked_up_less_often(monkeypatch) -> None:
    """Back-off of idle lookups (SKIP_FROM, IDLE_SKIP_MAX): far fewer lookups while nothing can be
    copied, and a sequence that starts repeating itself gets a draft within IDLE_SKIP_MAX + 1 searches."""
    from fastcodellama.drafting import proposer as mod

    n = 64
    prop = CopyProposer(SpecConfig(sources=("self",)))
    for i in range(n):
        prop.add_sequence(i, f"g{i}", [10_000 + 100 * i + j for j in range(20)])  # nothing repeats
    looked = []
    inner = prop._best_hit
    monkeypatch.setattr(prop, "_best_hit", lambda st, adaptive: looked.append(st.member) or inner(st, adaptive))
    fresh = iter(range(100_000, 10**6))
    queries = [DraftQuery(i, 10) for i in range(n)]
    for _ in range(48):
        prop.propose(queries, 10 * n, FREE)
        for i in range(n):
            prop.extend(i, [next(fresh)])
    searches = prop.stats()["searches"]
    assert searches > 32 and len(looked) < 0.35 * searches * n  # each idle sequence sits most searches out
    # Sequence 0 repeats its prompt's start: a self copy, long enough that drafting one of 64
    # sequences pays by itself, whenever it is looked up.
    prop.extend(0, [10_000 + j for j in range(8)])
    got = []
    for _ in range(mod.IDLE_SKIP_MAX + 2):
        got.append(len(prop.propose(queries, 10 * n, FREE)[0]))
        prop.extend(0, [10_008 + len(got) - 1])  # and goes on repeating it
    assert any(got[:mod.IDLE_SKIP_MAX + 1])


def test_the_gate_is_told_of_predictions_only_while_a_request_has_one(monkeypatch) -> None:
    prop = build_proposer(SpecConfig(sources=("prediction", "self")))
    told = []
    decide = prop.policy.decide
    monkeypatch.setattr(prop.policy, "decide", lambda *a, d=decide: told.append(tuple(a[4])) or d(*a))
    prop.add_sequence(0, "g0", [1, 2, 3, 1, 2])
    prop.propose([DraftQuery(0, 10)], 10, FREE)
    prop.add_sequence(1, "g1", [1, 2, 3], prediction=[4, 5, 6])
    prop.propose([DraftQuery(0, 10), DraftQuery(1, 10)], 20, FREE)
    prop.finish(1)
    prop.propose([DraftQuery(0, 10)], 10, FREE)
    assert told == [("self",), ("prediction", "self"), ("self",)]


def test_a_fixed_search_time_is_what_the_policy_weighs_whatever_the_search_took(monkeypatch) -> None:
    """build_proposer(..., search_time): the policy is told that many seconds per query for every
    search (a simulated device repeats exactly); without it, the measured time."""
    told = {}
    for label, search_time in (("fixed", 2.5e-4), ("measured", None)):
        prop = build_proposer(SpecConfig(sources=("self",)), search_time)
        seen = told.setdefault(label, [])
        decide = prop.policy.decide
        monkeypatch.setattr(prop.policy, "decide",
                            lambda n, b, c, s, *rest, d=decide, seen=seen: seen.append(s) or d(n, b, c, s, *rest))
        for i in range(4):
            prop.add_sequence(i, f"g{i}", [1, 2, 3, 1, 2, 3, 1, 2])
        queries = [DraftQuery(i, 10) for i in range(4)]
        for step in range(6):
            prop.propose(queries, 40, FREE)
            for i in range(4):
                prop.extend(i, [3, 1, 2][step % 3:step % 3 + 1])
    assert told["fixed"] == [pytest.approx(4 * 2.5e-4)] * 6
    assert told["measured"][0] == 0.0 and 0.0 < told["measured"][-1] < 4 * 2.5e-4 * 100
    by_batch = build_proposer(SpecConfig(sources=("self",)), lambda n: 1e-4 if n < 4 else 1e-5)
    assert by_batch._search_s(2) == pytest.approx(2e-4) and by_batch._search_s(4) == pytest.approx(4e-5)


def test_the_measured_search_time_is_kept_by_batch_size() -> None:
    """A search has a fixed part: per query, one sequence's search costs several times what each of
    64 costs. What the policy weighs for a batch size is what searches of that size took; a size
    never searched gets what recent searches of any size took."""
    prop = build_proposer(SpecConfig(sources=("self",)))
    for _ in range(50):
        prop._note_search_time(1, 200e-6)
        prop._note_search_time(64, 64 * 20e-6)
    assert prop._search_s(1) == pytest.approx(200e-6, rel=1e-3)
    assert prop._search_s(64) == pytest.approx(64 * 20e-6, rel=1e-3)
    assert prop._search_s(100) == pytest.approx(100 * 20e-6, rel=1e-3)  # same size bucket as 64
    assert 20e-6 * 16 < prop._search_s(16) < 200e-6 * 16  # never searched: what searches of any size cost
    # What a benchmark reports for --search-us US@N: each size's own, the nearest size's where unsearched.
    assert (prop.search_us_at(1), prop.search_us_at(64), prop.search_us_at(256)) == pytest.approx((200, 20, 20))
    assert prop.search_us_at(2) == pytest.approx(200) and build_proposer().search_us_at(8) == 0.0


def test_a_batch_sizes_first_search_is_not_believed() -> None:
    """A size's first search pays one-time costs (several times the rest): it is not kept, so that
    one slow start does not throttle the searches after it."""
    prop = build_proposer(SpecConfig(sources=("self",)))
    prop._note_search_time(1, 950e-6)
    assert prop._search_s(1) == 0.0
    prop._note_search_time(1, 100e-6)
    assert prop._search_s(1) == pytest.approx(100e-6)
    prop._note_search_time(64, 64 * 90e-6)
    assert prop._search_s(64) == pytest.approx(64 * 100e-6)  # what searches of any size cost, meanwhile


def test_the_believed_search_cost_is_what_recent_searches_cost_on_average() -> None:
    """A run's first searches cost several times the rest. While searches are throttled by their
    believed cost, a belief that kept that start (a decayed mean) would space the few searches
    that run hundreds of steps apart; it is forgotten within SEARCH_WINDOW searches. At a large
    batch one search in several looks every sequence up at ten times the cost of the others: the
    belief is their mean, not the typical (cheap) one."""
    prop = build_proposer(SpecConfig(sources=("self",)))
    for seconds in (950e-6, 320e-6) + (100e-6,) * SEARCH_WINDOW:
        prop._note_search_time(1, seconds)
    assert prop._search_s(1) == pytest.approx(100e-6)
    for i in range(4 * SEARCH_WINDOW):
        prop._note_search_time(128, 128 * (20e-6 if i % 3 == 0 else 2e-6))
    assert prop._search_s(128) == pytest.approx(128 * 8e-6)


def _reference_best(prop: CopyProposer, st, adaptive: bool):
    """Every source's match measured back one token at a time (up to MATCH_CAP from max_match on),
    ranked as the module docstring says: (source, text, end, match length)."""
    toks = st.group.texts[st.member]
    trust = {"prediction": 0, "self": 1, "sibling": 2, "other": 3}
    hits = []
    for m, source, text, e in prop._find(st):
        if m >= prop.config.max_match:
            while m < min(MATCH_CAP, len(toks), e) and toks[len(toks) - 1 - m] == text[e - 1 - m]:
                m += 1
        hits.append((source, text, e, m))
    if not hits:
        return None
    if not adaptive:
        m0 = max(prop._find(st), key=lambda f: (f[0], -trust[f[1]]))
        return next(h for h in hits if h[0] == m0[1])
    return max(hits, key=lambda h: (h[3] - (OTHER_HANDICAP if h[0] == "other" else 0), -trust[h[0]]))


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_the_best_copy_is_the_reference_ranking_of_every_sources_match(policy: str) -> None:
    """_best_hit (Python) and ngram_tables.c's best_copies (one call for a whole search) give the
    same copy as measuring each source's match token by token and ranking them all, with repetitive
    texts (matches that run to the cap, stop short of it, or hit a text's start), predictions, and
    finished texts of other requests (tuples) among the sources."""
    if load_extension() is None:
        pytest.skip("the n-gram tables' C extension does not build here")
    rng = random.Random(7)
    prop = build_proposer(SpecConfig(policy=policy, other_pool_tokens=10_000, index_tables="c"))
    unit = [rng.randrange(6) for _ in range(5)]
    for r in range(6):
        prompt = unit * rng.randrange(1, 4) + [rng.randrange(6)]
        for i in range(3):
            sid = 3 * r + i
            prop.add_sequence(sid, f"g{r}", prompt)
            noise = (0.0, 0.1, 0.5)[i]  # runs of the unit long enough to reach the cap, and shorter ones
            prop.extend(sid, [rng.randrange(6) if rng.random() < noise else unit[j % 5]
                              for j in range(rng.randrange(4, 40))])
        if r % 2:
            prop.finish(3 * r)
    prop.add_sequence(99, "alone", [6, 7])  # no sibling, nothing of its own to copy: a finished text's copy wins
    prop.extend(99, [unit[j % 5] for j in range(7)])
    prop.add_sequence(98, "alone too", [6, 7])  # a match of exactly max_match: the token before it differs
    prop.extend(98, [8, *unit[:4]])
    prop.add_sequence(97, "predicted", [6, 7], prediction=[8, *unit, 9])
    prop.extend(97, [8, *unit[:3]])
    prop._index_all()
    checked, reached = 0, set()
    states = list(prop._seqs.values())
    adaptive = policy == "adaptive"
    in_c = prop._copies([(0, st, 100) for st in states], adaptive)
    assert prop._copies([(0, states[0], 0)], adaptive) == [None]  # a sequence that may not draft
    for st, c in zip(states, in_c):
        hit, want = prop._best_hit(st, adaptive), _reference_best(prop, st, adaptive)
        assert hit == want and c == want
        if hit is not None:
            checked += 1
            reached.add((hit[0], hit[3]))
    assert checked >= 10
    lengths = {m for _, m in reached}
    assert {prop.config.max_match, MATCH_CAP} <= lengths and any(prop.config.max_match < m < MATCH_CAP for m in lengths)
    assert {"prediction", "self", "sibling", "other"} == {s for s, _ in reached}


@pytest.mark.parametrize("cfg", [
    SpecConfig(policy="adaptive", other_pool_tokens=300),
    SpecConfig(policy="fixed", n=2, max_match=3, k=5),
    SpecConfig(policy="adaptive", n=1, max_match=1, sources=("sibling", "other")),
    SpecConfig(policy="adaptive", max_match=8, sources=("prediction", "self"), other_pool_tokens=0),
], ids=["adaptive", "fixed-n2", "no-self", "no-siblings"])
@pytest.mark.parametrize("engine_lists", [False, True], ids=["extend", "engine-lists"])
def test_the_c_search_drafts_what_the_python_search_drafts(cfg: SpecConfig, engine_lists: bool) -> None:
    """A proposer on C tables (one best_copies call a search; with the engine's output lists, their
    new tokens indexed in one index_members call) and one on the reference dicts (a Python lookup
    and indexing per sequence), given the same sequences, tokens, predictions and feedback, draft
    the same tokens from the same source at every step, whatever the sources and lengths."""
    if load_extension() is None:
        pytest.skip("the n-gram tables' C extension does not build here")
    rng = random.Random(11)
    c = CopyProposer(SpecConfig(**{**cfg.__dict__, "index_tables": "c"}), search_time=lambda n: 1e-6)
    py = CopyProposer(SpecConfig(**{**cfg.__dict__, "index_tables": "dict"}), search_time=lambda n: 1e-6)
    assert c._best_copies is not None and py._best_copies is None
    assert c._index_members is not None and py._index_members is None
    running, drafted, outputs = [], 0, {}
    for sid in range(60):
        gid = f"g{sid % 7}"
        prompt = [rng.randrange(4) for _ in range(rng.randrange(1, 9))] if sid % 5 == 0 else [1, 2, 3, 1]
        prediction = [rng.randrange(4) for _ in range(rng.randrange(0, 12))]
        outputs[sid] = [] if engine_lists else None  # the engine's list, read by both proposers
        for prop in (c, py):
            prop.add_sequence(sid, gid, prompt, prediction, outputs[sid])
        running.append(sid)
        for _ in range(6):
            for s in rng.sample(running, min(len(running), 5)):
                toks = [rng.randrange(4) for _ in range(rng.choice((1, 2, 4)))]
                if engine_lists:
                    outputs[s] += toks
                    continue
                for prop in (c, py):
                    prop.extend(s, toks)
            queries = [DraftQuery(s, rng.randrange(0, 12)) for s in running]
            budget = rng.choice((3, 40, 10_000))
            got = c.propose(queries, budget, FREE)
            assert got == py.propose(queries, budget, FREE)
            for q, d in zip(queries, got):
                accepted = rng.randrange(0, len(d) + 1)
                for prop in (c, py):
                    prop.record(q.seq_id, d, accepted)
                drafted += len(d)
        if rng.random() < 0.4:
            done, aborted = running.pop(rng.randrange(len(running))), rng.random() < 0.3
            for prop in (c, py):
                prop.finish(done, aborted)
    assert drafted > 100


def test_a_search_ahead_that_drafts_nothing_counts_its_own_time(monkeypatch) -> None:
    """A search beside the step in flight costs the device nothing, but one that drafts nothing is
    counted to lose its own time, as a search the engine waited on: searches that keep finding
    nothing are throttled either way (the host's time is not free where a step waits on it)."""
    prop = CopyProposer(SpecConfig(sources=("self",)), search_time=lambda n: 0.01)
    prop.add_sequence(0, "r", [1, 2, 3, 4, 5])  # nothing to copy
    noted = []
    monkeypatch.setattr(prop.policy, "_note_outcome", lambda n, outcome: noted.append(outcome))
    assert prop.propose_ahead([DraftQuery(0, 10)], 10, FREE) == [EMPTY_DRAFT]
    assert noted == [pytest.approx(-0.01)]


def test_a_sequence_whose_draft_is_in_flight_is_given_its_copys_continuation() -> None:
    """propose_ahead for the step queued behind a drafting step: a sequence whose draft of this
    proposer's is in flight is not looked up (its next token follows the part of the draft
    accepted, which only the device knows); it gets the copy after the tokens in flight, beginning
    with the one the copy expects next (not fed). Once the draft it continues is heard of and its
    premise failed (here the token after the whole draft was another), the sequence is looked up
    again, from the tokens it got; a draft in flight not of this proposer's gets no draft."""
    prop = build_proposer(SpecConfig(policy="fixed", sources=("self",)))
    prop.add_sequence(0, "r", [1, 2, 3, 4, 5, 6, 7, 8, 5, 9, 30, 31, 1, 2])
    flying = prop.propose([DraftQuery(0, 3)], 10, FREE)[0]
    assert flying.tokens == (3, 4, 5)
    assert prop.will_search(1, 10, FREE)
    continued = prop.propose_ahead([DraftQuery(0, 3)], 10, FREE, {0: (flying, 3)})[0]
    assert continued.tokens == (6, 7, 8, 5)  # the copy after 3, 4, 5: 6 expected, then the draft
    prop.record(0, flying, 3)
    prop.extend(0, [3, 4, 5, 9])  # all of it accepted, then 9 where the copy has 6
    assert prop.will_search(1, 10, FREE)
    again = prop.propose_ahead([DraftQuery(0, 2)], 10, FREE, {0: (continued, 4)})[0]
    assert again.tokens == (30, 31, 1)  # looked up after ..., 5, 9: the copy at 5, 9, 30, 31
    assert prop.will_search(1, 10, FREE)
    assert prop.propose_ahead([DraftQuery(0, 2)], 10, FREE, {0: (Draft((7, 7)), 2)})[0] == EMPTY_DRAFT


def test_a_continuation_is_weighed_through_the_draft_it_continues_and_credited_not_learned(monkeypatch) -> None:
    """A continuation's first fed token is accepted with the chance of its copy's tokens up to it
    (through the draft in flight, and the token expected after it), later ones by the survival
    after it; once heard of, the policy is credited with what it got after its first token, and
    the acceptance model learns nothing from it (its positions are not its copy's first)."""
    prop = build_proposer(SpecConfig(sources=("self",)))
    prop.add_sequence(0, "r", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2])
    seen, recorded, credited = [], [], []
    allocate, record_at = prop.policy.allocate, prop.model.record_at
    monkeypatch.setattr(prop.policy, "allocate", lambda cands, *a, **k: seen.append(cands) or allocate(cands, *a, **k))
    monkeypatch.setattr(prop.model, "record_at", lambda *a, **k: recorded.append(a) or record_at(*a, **k))
    monkeypatch.setattr(prop.policy, "realize", lambda accepted, cost, key=None: credited.append(accepted))
    flying = prop.propose([DraftQuery(0, 3)], 10, FREE)[0]
    (first,) = seen[-1]
    assert len(flying.tokens) == 3
    prop.will_search(1, 10, FREE)
    continued = prop.propose_ahead([DraftQuery(0, 10)], 10, FREE, {0: (flying, 3)})[0]
    (c,) = seen[-1]
    surv = first.survival
    assert c.a == pytest.approx(first.a * surv[4]) and c.survival == pytest.approx([p / surv[4] for p in surv[4:]])
    assert continued.tokens[0] == 6
    prop.record(0, flying, 3)
    prop.record(0, continued, 3)  # its first token as expected, two after it
    prop.will_search(1, 10, FREE)
    assert len(recorded) == 1 and credited == [3, 2]
