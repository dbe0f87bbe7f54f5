"""The draft policy: the acceptance model, the allocation, the one decision per step and its
exploration budget (against the engine's learned step cost)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from engine.step_cost import StepCost
from fastcodellama.drafting import policy as pol_mod
from fastcodellama.drafting.acceptance import AcceptanceModel, ml_bucket
from fastcodellama.drafting.policy import Candidate, DraftPolicy


@dataclass
class LinearCost:
    """plain(n) = n seconds; each draft row costs `per_row` seconds (None: unknown)."""

    per_row: float | None = 0.0
    known_plain: bool = True
    live_plain: bool = True  # plain steps measured in this run (else only seeded by a file)

    def plain(self, seqs: int) -> float | None:
        return float(seqs) if self.known_plain else None

    def extra(self, seqs: int, draft_rows: int) -> float | None:
        if draft_rows <= 0:
            return 0.0
        return None if self.per_row is None else self.per_row * draft_rows

    def measured(self, seqs: int) -> bool:
        return self.known_plain and self.live_plain

    def forgone(self, seqs: int) -> float:
        return 0.0


def cand(model: AcceptanceModel, limit: int, source: str = "self", match_len: int = 4, a: float | None = None) -> Candidate:
    model.refresh()
    return Candidate(model.first_prob(source, match_len) if a is None else a, limit,
                     model.survival_of(source, match_len))


def fresh_policy(adaptive: bool = True) -> DraftPolicy:
    model = AcceptanceModel()
    model.refresh()
    return DraftPolicy(model, adaptive=adaptive)


def step(pol: DraftPolicy, n: int, cost, cands: list[Candidate | None], budget: int = 10_000) -> list[int] | None:
    """One step as the proposer takes it: the decision, then (if it searches) the allocation;
    None where it does not search."""
    decision = pol.decide(n, budget, cost, 0.0)
    return pol.allocate(cands, budget, cost, 0.0, decision) if decision.search else None


# ---------------------------------------------------------------------- the allocation

def test_no_drafts_when_a_draft_row_costs_a_whole_sequence() -> None:
    pol = fresh_policy()
    for n in (1, 8, 256):
        cands = [cand(pol.model, 20, match_len=16) for _ in range(n)]
        assert pol.allocate(cands, 10_000, LinearCost(per_row=1.0), 0.0) == [0] * n


def test_long_drafts_where_rows_are_free() -> None:
    pol = fresh_policy()
    assert pol.allocate([cand(pol.model, 20, match_len=16)], 100, LinearCost(0.0), 0.0) == [20]
    assert pol.allocate([cand(pol.model, 20, match_len=1)], 100, LinearCost(0.0), 0.0)[0] >= 15


def test_drafts_shrink_as_rows_get_dearer() -> None:
    pol = fresh_policy()
    c = [cand(pol.model, 20, match_len=2)]
    lens = [pol.allocate(c, 100, LinearCost(per_row), 0.0)[0] for per_row in (0.0, 0.02, 0.1, 0.5)]
    assert lens == sorted(lens, reverse=True) and lens[0] > lens[-1]


def test_a_search_is_paid_drafted_or_not_but_one_that_did_not_pay_records_a_loss() -> None:
    """Once the search has run, a copy is judged against a step that paid for the search too: one
    that cost a whole step still drafts what free rows carry (at a batch of a few sequences, the
    search's share of a step would otherwise veto every draft). Its outcome is what its step
    brought once its drafts are verified: a loss where the tokens accepted did not make up for the
    search (what throttles such searches), whatever was expected of them; in plain steps of time
    gained: the tokens accepted at a plain step's rate per sequence, less the rows' and the
    search's cost."""
    cost = LinearCost(0.0)  # a plain step of 1 sequence takes 1 s, draft rows are free
    pol = fresh_policy()
    c = [cand(pol.model, 20, match_len=2)]
    assert pol.decide(1, 100, cost, 1.0).search
    drafted = pol.allocate(c, 100, cost, search_s=1.0)[0]
    assert drafted > 0 and pol._budgets[pol_mod._batch_bucket(1)].outcome is None  # not yet verified
    pol.realize(0, cost)  # nothing accepted: 1 token in the time of 2, a plain step lost
    assert pol._budgets[pol_mod._batch_bucket(1)].outcome == pytest.approx(-1.0)
    cheap = fresh_policy()
    assert cheap.decide(1, 100, cost, 0.01).search
    drafted = cheap.allocate(c, 100, cost, search_s=0.01)[0]
    cheap.realize(drafted, cost)  # all of them accepted
    assert cheap._budgets[pol_mod._batch_bucket(1)].outcome == pytest.approx(drafted - 0.01)
    cheap.realize(drafted, cost)  # no draft pending: nothing to note
    assert cheap._budgets[pol_mod._batch_bucket(1)].outcome == pytest.approx(drafted - 0.01)


def test_unknown_costs_are_not_trusted_but_exploration_drafts_a_bounded_amount() -> None:
    pol = fresh_policy()
    cands = [cand(pol.model, 20, match_len=8) for _ in range(4)]
    assert pol.allocate(cands, 1000, LinearCost(None), 0.0) == [0] * 4
    explored = pol.allocate(cands, 1000, LinearCost(None), 0.0, pol_mod.Decision(True, True, 2.0))
    assert 0 < sum(explored) <= max(pol_mod.EXPLORE_FLOOR, 2 * 4)


def test_fixed_policy_drafts_everything_within_budget() -> None:
    pol = fresh_policy(adaptive=False)
    m = pol.model
    assert pol.allocate([cand(m, 20), cand(m, 3), None], 100, LinearCost(1.0), 0.0) == [20, 3, 0]
    lens = pol.allocate([cand(m, 20, match_len=16), cand(m, 20, match_len=1)], 10, LinearCost(1.0), 0.0)
    assert sum(lens) == 10 and lens[0] >= lens[1]     # trimmed to the budget by expected gain


def test_budget_and_limits_hold_for_random_inputs() -> None:
    rng = random.Random(5)
    for per_row in (0.0, 0.05, 1.0, None):
        for adaptive in (True, False):
            pol = fresh_policy(adaptive)
            for _ in range(40):
                n = rng.randrange(0, 60)
                cands = [None if rng.random() < 0.2 else
                         cand(pol.model, rng.randrange(0, 30), rng.choice(("self", "sibling", "other", "prediction")),
                              rng.randrange(1, 17), a=rng.random())
                         for _ in range(n)]
                budget = rng.randrange(0, 200)
                lens = pol.allocate(cands, budget, LinearCost(per_row), 0.0,
                                   pol_mod.Decision(True, rng.random() < 0.3, rng.choice((0.5, 4.0))))
                assert len(lens) == n and sum(lens) <= budget
                for c, d in zip(cands, lens):
                    assert 0 <= d <= (c.limit if c is not None else 0)


# ---------------------------------------------------------------------- the decision

def test_no_search_before_the_plain_cost_is_known_nor_when_nothing_could_pay() -> None:
    pol = fresh_policy()
    assert not pol.decide(4, 100, LinearCost(0.0, known_plain=False), 0.0).search
    assert not pol.decide(4, 100, LinearCost(0.0, live_plain=False), 0.0).search  # only a file's: measure first
    assert pol.decide(4, 100, LinearCost(0.0), 0.0).search
    assert not pol.decide(4, 0, LinearCost(0.0), 0.0).search


def test_while_drafting_pays_a_little_every_control_every_th_step_is_plain() -> None:
    pol = fresh_policy()
    unlikely = [cand(pol.model, 1, a=0.1) for _ in range(8)]  # drafting gains 10%
    steps = [step(pol, 8, LinearCost(0.0), unlikely) for _ in range(8 * pol_mod.CONTROL_EVERY)]
    plain = [i for i, s in enumerate(steps) if s is None]
    assert len(plain) >= 7 and {b - a for a, b in zip(plain, plain[1:])} == {pol_mod.CONTROL_EVERY}


def test_steps_that_find_nothing_to_draft_are_the_control_steps() -> None:
    """Where every fifth search finds no copy, those steps are plain already: no step that found
    one is made plain on top of them."""
    pol = fresh_policy()
    unlikely = [cand(pol.model, 1, a=0.1) for _ in range(8)]
    steps = [step(pol, 8, LinearCost(0.0), [None] * 8 if i % 5 == 4 else unlikely)
             for i in range(8 * pol_mod.CONTROL_EVERY)]
    assert all(s is not None and sum(s) > 0 for i, s in enumerate(steps) if i % 5 != 4)
    assert all(s == [0] * 8 for i, s in enumerate(steps) if i % 5 == 4)


def test_control_steps_forgo_a_bounded_share_of_a_large_gain() -> None:
    """Where drafting is believed to more than double the throughput, a control step every
    CONTROL_EVERY steps would forgo several percent of it: they come rarer, but still come."""
    pol = fresh_policy()
    likely = [cand(pol.model, 20, match_len=16) for _ in range(8)]
    steps = [step(pol, 8, LinearCost(0.0), likely) for _ in range(2000)]
    gain = pol._budgets[pol_mod._batch_bucket(8)].gain
    controls = sum(s is None for s in steps)
    assert gain > 1.0 and 0 < controls < 2000 / pol_mod.CONTROL_EVERY / 2
    assert controls / 2000 * gain / (1 + gain) <= 1.1 * pol_mod.CONTROL_SHARE


def test_the_gate_weighs_only_the_sources_a_copy_can_come_from_now() -> None:
    """A client's predicted output is assumed mostly right, the likeliest copy of all; where no
    request has one the gate must not count it: rows that only such a copy would pay for are not
    worth a search."""
    cost = LinearCost(per_row=0.78)  # a row costs 78% of a sequence: only the likeliest copies pay
    with_prediction = DraftPolicy(AcceptanceModel(("prediction", "self")))
    assert with_prediction.decide(16, 10_000, cost, 0.0, ("prediction", "self")).search
    assert with_prediction.decide(16, 10_000, cost, 0.0).search  # default: every source the model knows
    without = DraftPolicy(AcceptanceModel(("prediction", "self")))
    assert not any(without.decide(16, 10_000, cost, 0.0, ("self",)).search for _ in range(8))


def test_while_drafting_does_not_pay_exploration_is_rare_and_backs_off() -> None:
    pol = fresh_policy()
    cands = [cand(pol.model, 20, match_len=8) for _ in range(8)]
    explored = [i for i in range(4000) if (s := step(pol, 8, LinearCost(1.0), cands)) is not None and sum(s) > 0]
    gaps = [b - a for a, b in zip(explored, explored[1:])]
    assert explored and explored[0] < pol_mod.EXPLORE_MIN + 1
    assert gaps == sorted(gaps) and max(gaps) == pol_mod.EXPLORE_MAX  # doubling, then bounded
    assert len(explored) < 20


def test_exploration_starts_at_once_only_where_draft_costs_are_unknown() -> None:
    """A first run knows nothing and measures at once; a run that starts from known costs (an
    earlier run's cache) that say drafting does not pay waits for the interval."""
    unknown = fresh_policy()
    assert unknown.decide(8, 100, LinearCost(None), 0.0).explore
    known = fresh_policy()
    explored = [i for i in range(2 * pol_mod.EXPLORE_MIN) if known.decide(8, 100, LinearCost(1.0), 0.0).explore]
    assert explored and explored[0] == pol_mod.EXPLORE_MIN - 1


def test_an_exploration_with_nothing_to_copy_is_tried_again_at_the_next_step() -> None:
    """An exploring step that found no copy measured nothing: it must not count as one (nor
    push the next one further away)."""
    pol = fresh_policy()
    nothing, something = [None], [cand(pol.model, 20, match_len=8)]
    assert all(step(pol, 1, LinearCost(None), nothing) == [0] for _ in range(5))
    assert sum(step(pol, 1, LinearCost(None), something)) > 0
    assert pol._state(1).explorations == 1


def test_while_drafting_pays_probes_draft_twice_the_believed_best_and_back_off() -> None:
    pol = fresh_policy()
    cands = [cand(pol.model, 20, match_len=2) for _ in range(8)]
    cost = LinearCost(per_row=0.15)  # a few tokens per step pay, not every copy to its end
    best = pol.allocate(cands, 10_000, cost, 0.0)
    assert 0 < sum(best) < sum(c.limit for c in cands) / 2
    sizes = [step(pol, 8, cost, cands) for _ in range(1000)]
    probes = [i for i, s in enumerate(sizes) if s is not None and sum(s) > sum(best)]
    assert probes and all(sum(sizes[i]) == 2 * sum(best) for i in probes)
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and probes[0] <= pol_mod.EXPLORE_MIN + 1


def test_searches_that_find_nothing_worth_drafting_are_throttled_until_one_does() -> None:
    """Draft rows are free, so the gate says copies could pay; but the searches find nothing (or
    nothing likely enough), each costing a twentieth of a step. After each the next waits twice as
    long (1, 2, 4 steps: an early one may only have come too soon), up to every
    ceil(0.05 / SEARCH_SHARE) steps, until one finds copies worth drafting; then every step again."""
    pol = fresh_policy()
    n, cost, search_s = 8, LinearCost(0.0), 0.4  # plain(8) = 8 s: a search costs 5% of a step
    every = math.ceil(search_s / cost.plain(n) / pol_mod.SEARCH_SHARE)
    nothing = [None] * n
    unlikely = [cand(pol.model, 1, a=1e-4) for _ in range(n)]  # found, but below MIN_GAIN
    likely = [cand(pol.model, 20, match_len=16) for _ in range(n)]

    def searched(cands, steps: int) -> list[int]:
        out, drafted = [], 0
        for i in range(steps):
            pol.realize(drafted, cost)  # every drafted token accepted
            decision = pol.decide(n, 1000, cost, search_s)
            drafted = 0
            if decision.search:
                drafted = sum(pol.allocate(cands, 1000, cost, search_s, decision))
                out.append(i)
        return out

    idle = searched(nothing, 100) + [100 + i for i in searched(unlikely, 100)]
    gaps = [b - a for a, b in zip(idle, idle[1:])]
    doubling = math.ceil(math.log2(every))  # fruitless searches before the gaps reach `every`
    assert every >= 3 and gaps[0] < every and gaps[:doubling] == sorted(gaps[:doubling])
    assert set(gaps[doubling:]) <= {every, every + 1}  # + 1: a control step came first
    assert 200 // every - 2 <= len(idle) <= 200 // every + doubling + 2
    busy = searched(likely, 100)
    assert busy[0] < every and len(busy) > 100 - every - 100 // pol_mod.CONTROL_EVERY - 2
    assert pol._state(n).fruitless == 0  # the next fruitless one waits 1 step again


def test_searches_whose_drafts_do_not_pay_are_throttled_however_likely_the_copies_looked() -> None:
    """Copies the acceptance model rates likely, drafted every time, none accepted: each search's
    step brought less than a plain step without it, and searches fall to the throttle's pace."""
    pol = fresh_policy()
    n, cost, search_s = 8, LinearCost(0.0), 0.4
    every = math.ceil(search_s / cost.plain(n) / pol_mod.SEARCH_SHARE)
    likely = [cand(pol.model, 20, match_len=16) for _ in range(n)]
    searches = 0
    for _ in range(100):
        pol.realize(0, cost)
        decision = pol.decide(n, 1000, cost, search_s)
        if decision.search:
            assert sum(pol.allocate(likely, 1000, cost, search_s, decision)) > 0
            searches += 1
    assert searches <= 100 // every + math.ceil(math.log2(every)) + 2


def test_a_batch_held_at_a_power_of_two_keeps_one_state() -> None:
    """A batch capped at 256 runs 250-256 sequences: one bucket, not two taking turns."""
    pol = fresh_policy()
    for n in (256, 250, 241, 256):
        pol.decide(n, 100, LinearCost(1.0), 0.0)
    assert len(pol._budgets) == 1 and pol._state(200) is pol._state(256)
    assert pol._state(128) is None and pol._state(64) is None


def test_an_exploring_step_costs_a_bounded_share_of_a_plain_one_where_costs_are_known() -> None:
    pol = fresh_policy()
    model = pol.model
    cands = [cand(model, 20, match_len=8) for _ in range(64)]
    explore = pol_mod.Decision(True, explore=True, rows_per_seq=4.0)
    dear = LinearCost(1.0)  # a draft row costs a sequence's share of a plain step (64 s)
    lens = pol.allocate(cands, 10_000, dear, 0.0, explore)
    assert pol_mod.EXPLORE_FLOOR <= sum(lens) and dear.extra(64, sum(lens)) <= pol_mod.EXPLORE_EXTRA * 64
    unknown = pol.allocate(cands, 10_000, LinearCost(None), 0.0, explore)
    assert sum(unknown) == 4 * 64  # nothing known: the schedule's size


def test_the_gate_is_judged_once_per_verdict_steps_of_a_batch_size(monkeypatch) -> None:
    pol = fresh_policy()
    judged = []
    inner = pol._could_pay
    monkeypatch.setattr(pol, "_could_pay", lambda *a: judged.append(a[0]) or inner(*a))
    for _ in range(4 * pol_mod.VERDICT_STEPS):
        pol.decide(8, 100, LinearCost(0.0), 0.0)
    assert len(judged) == 4
    pol.decide(200, 1000, LinearCost(0.0), 0.0)  # another batch size: its own verdict
    assert judged[-1] == 200


def test_a_wrong_belief_is_corrected_within_the_exploration_bound_both_ways() -> None:
    """Simulated device: true per-row cost and acceptance; the StepCost and acceptance model learn
    only from the steps the policy chose. The policy starts with the opposite belief each time."""
    def run(per_row: float, accept: float, steps: int, seed_rows: float) -> list[int]:
        rng = random.Random(1)
        cost = StepCost()
        n = 8
        cost.observe(n, 0, float(n))
        cost.observe(n, n, n + seed_rows * n)  # the wrong belief about what draft rows cost
        model = AcceptanceModel()
        pol = DraftPolicy(model)
        drafted = []
        for _ in range(steps):
            decision = pol.decide(n, 200, cost, 0.0)
            lens = [0] * n
            if decision.search:
                cands = [cand(model, 12, match_len=8) for _ in range(n)]
                lens = pol.allocate(cands, 200, cost, 0.0, decision)
            t = sum(lens)
            cost.observe(n, t, n + per_row * t)
            for d in lens:
                if d:
                    acc = 0
                    while acc < d and rng.random() < accept:
                        acc += 1
                    model.record("self", 8, d, acc)
            drafted.append(t)
        return drafted

    paying = run(per_row=0.02, accept=0.9, steps=pol_mod.EXPLORE_MIN + 200, seed_rows=5.0)
    late = paying[pol_mod.EXPLORE_MIN + 20:]
    assert sum(d > 0 for d in late) > 0.8 * len(late)  # drafts soon after the first exploration
    losing = run(per_row=2.0, accept=0.9, steps=600, seed_rows=0.0)
    late = losing[100:]
    assert sum(d > 0 for d in late) < 0.05 * len(late)  # stops: the drafting steps' own cost told it


def test_a_pessimistic_belief_about_long_drafts_is_corrected_while_drafting_pays() -> None:
    """Short drafts are known to pay; long ones are wrongly believed dear (one step measured on a
    busy machine). They are never chosen, so only the probes can measure them again."""
    n, per_row = 8, 0.01
    cost = StepCost()
    cost.observe(n, 0, float(n))
    cost.observe(n, 8, n + per_row * 8)
    cost.observe(n, 64, n + 50.0)
    pol = fresh_policy()
    cands = [cand(pol.model, 12, match_len=16) for _ in range(n)]
    drafted = []
    for _ in range(400):
        decision = pol.decide(n, 200, cost, 0.0)
        t = sum(pol.allocate(cands, 200, cost, 0.0, decision)) if decision.search else 0
        cost.observe(n, t, n + per_row * t)
        drafted.append(t)
    late = [t for t in drafted[300:] if t > 0]
    assert late and min(late) >= 64


# ---------------------------------------------------------------------- the acceptance model

def test_model_learns_from_records() -> None:
    model = AcceptanceModel()
    model.refresh()
    before = model.first_prob("other", 1)
    assert 0.05 < before < 0.6                        # cold-start prior
    for _ in range(500):
        model.record("other", 1, 10, 10)
    model.refresh()
    assert model.first_prob("other", 1) > 0.9
    assert model.expected("other", 1, 1.0, 10) > model.expected("self", 1, 1.0, 10)
    for _ in range(3000):                             # decayed: recent drafts outweigh old ones
        model.record("other", 1, 10, 0)
    model.refresh()
    assert model.first_prob("other", 1) < before


def test_sequence_factor_follows_recent_acceptance() -> None:
    model = AcceptanceModel()
    for _ in range(10):
        model.record("self", 2, 10, 10, seq_id=1, predicted=1.0)
        model.record("self", 2, 10, 0, seq_id=2, predicted=1.0)
    assert model.seq_factor(1) > 2.0 and model.seq_factor(2) < 0.5 and model.seq_factor(3) == 1.0
    model.forget(1)
    assert model.seq_factor(1) == 1.0


def test_expected_accepted_is_increasing_and_concave_in_length() -> None:
    model = AcceptanceModel()
    model.refresh()
    e = [model.expected("sibling", 3, 0.5, j) for j in range(0, 80)]
    steps = [b - a for a, b in zip(e, e[1:])]
    assert all(s >= 0 for s in steps)
    assert all(b <= a + 1e-12 for a, b in zip(steps, steps[1:]))
    assert [ml_bucket(x) for x in (1, 4, 5, 8, 16, 40)] == [0, 3, 4, 5, 6, 6]


def test_a_prediction_is_trusted_more_than_a_copy_of_another_request() -> None:
    model = AcceptanceModel()
    model.refresh()
    assert model.first_prob("prediction", 2) > model.first_prob("other", 2)
    assert model.expected("prediction", 4, 1.0, 10) > model.expected("other", 4, 1.0, 10)


@pytest.mark.parametrize("n", [1, 3, 64])
def test_decide_counts_steps_per_batch_size(n: int) -> None:
    pol = fresh_policy()
    for _ in range(5):
        pol.decide(n, 100, LinearCost(1.0), 0.0)
    assert pol._state(n).step == 5 and len(pol._budgets) == 1


def test_a_few_sequences_draft_for_a_smaller_promised_gain() -> None:
    """Up to SMALL_BATCH sequences a draft must promise SMALL_MARGIN more throughput, past it MARGIN:
    the same 3.75% promise (free rows) is drafted at 4 sequences, not at 16."""
    pol = fresh_policy()
    free = LinearCost(per_row=0.0)
    assert pol_mod.SMALL_MARGIN < 0.0375 < pol_mod.MARGIN
    assert pol._best_prefix(4, [0.15], free, 0.0)[0] == 1
    assert pol._best_prefix(pol_mod.SMALL_BATCH, [0.3], free, 0.0)[0] == 1
    assert pol._best_prefix(16, [0.15] * 4, free, 0.0)[0] == 0
    assert pol._best_prefix(16, [0.3] * 4, free, 0.0)[0] == 4  # 7.5%: past MARGIN


@pytest.mark.parametrize("every", [False, True])
def test_the_numpy_ranking_equals_the_python_one(every: bool, monkeypatch) -> None:
    """A large batch ranks its candidate tokens in numpy: the same tokens, the same order (ties
    in query order), the same lengths, whatever the candidates (shared and own survival lists,
    equal gains, first probabilities of 0, limits of 0 or past the survival table, gains that
    fall below MIN_GAIN and rise again)."""
    rng = random.Random(7)
    model = AcceptanceModel()
    model.refresh()
    shared = [model.survival_of(s, m) for s in ("self", "sibling", "other") for m in (1, 4, 16)]
    for trial in range(40):
        cands: list[Candidate | None] = []
        for _ in range(rng.randint(1, 60)):
            kind = rng.random()
            if kind < 0.15:
                cands.append(None)
                continue
            if kind < 0.25:
                survival = [1.0, 0.5, 1e-5, 0.9, 0.9]  # below MIN_GAIN at the third token only
            else:
                survival = rng.choice(shared)
            a = rng.choice([0.0, 0.5, 0.5, rng.random()])
            cands.append(Candidate(a, rng.choice([0, 1, 3, 8, 20, 80]), survival))
        budget = rng.choice([1, 7, 50, 10_000])
        monkeypatch.setattr(pol_mod, "NUMPY_FROM", 10**9)
        ranked, owners = DraftPolicy._ranking(cands, budget, every)
        python = DraftPolicy(model, adaptive=not every)
        lens = python.allocate(cands, budget, LinearCost(0.01), 0.0)
        monkeypatch.setattr(pol_mod, "NUMPY_FROM", 0)
        ranked_np, owners_np = DraftPolicy._ranking(cands, budget, every)
        assert ranked_np == ranked and owners_np == owners, trial
        assert DraftPolicy(model, adaptive=not every).allocate(cands, budget, LinearCost(0.01), 0.0) == lens


def test_survival_is_the_product_of_the_continuation_rates_and_cumulative_its_running_sum() -> None:
    """After recorded drafts of every kind: survival[j] = cont rate 1 x ... x cont rate j of the
    bucket, cumulative[j] = survival[0] + ... + survival[j-1]."""
    model = AcceptanceModel(max_draft=20)
    rng = random.Random(3)
    for _ in range(2000):
        drafted = rng.randint(1, 20)
        model.record(rng.choice(["self", "sibling", "other"]), rng.randint(1, 16), drafted, rng.randint(0, drafted))
    model.refresh()
    for key, survival in model.survival.items():
        rates = [b.rate for b in model.cont[key][1:model.table_len]]
        assert survival == pytest.approx([math.prod(rates[:j]) for j in range(model.table_len)], rel=1e-12)
        assert model.cumulative[key] == pytest.approx([sum(survival[:j]) for j in range(model.table_len + 1)],
                                                      rel=1e-12)
