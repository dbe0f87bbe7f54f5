"""The draft-budget policy: cost curves, the acceptance model, and the allocation."""
from __future__ import annotations

import random

import pytest

from fastcodellama.drafting.acceptance import AcceptanceModel, ml_bucket
from fastcodellama.drafting.cost import CPU_COST_POINTS, CostCurve, StepCost
from fastcodellama.drafting.policy import Candidate, DraftPolicy

LINEAR = tuple((t, float(t)) for t in (1, 2, 4096))


def policy(curve, adaptive: bool = True) -> DraftPolicy:
    model = AcceptanceModel()
    model.refresh()
    return DraftPolicy(model, CostCurve.from_spec(curve), adaptive)


def cand(model: AcceptanceModel, limit: int, source: str = "self", match_len: int = 4, a: float | None = None):
    a = model.first_prob(source, match_len) if a is None else a
    return Candidate(a, limit, model.survival_of(source, match_len))


def test_cost_curve_is_normalized_monotone_and_interpolated() -> None:
    c = CostCurve(CPU_COST_POINTS)
    assert c(1) == pytest.approx(1.0)
    assert c(8) >= c(4)                               # the measured dip at 8 tokens is smoothed away
    assert c(3) == pytest.approx((c(2) + c(4)) / 2)
    assert c(2048) > c(1024) > c(512)                 # extended past the last point
    tab = c.table(300)
    assert all(tab[t] <= tab[t + 1] for t in range(1, 300))
    assert CostCurve.from_spec("flat")(5000) == 1.0
    assert CostCurve.from_spec("h100")(16) < 1.1


def test_no_drafts_when_drafting_cannot_pay() -> None:
    pol = policy(LINEAR)                              # every token costs as much as a plain step
    m = pol.model
    for n_q in (1, 8, 256):
        cands = [cand(m, 20, match_len=16) for _ in range(n_q)]
        assert pol.allocate(cands, 10_000) == [0] * n_q


def test_long_drafts_at_batch_one_on_a_flat_curve() -> None:
    pol = policy("flat")
    assert pol.allocate([cand(pol.model, 20, match_len=16)], 100) == [20]
    assert pol.allocate([cand(pol.model, 20, match_len=1)], 100)[0] >= 15   # all but ~0-gain tokens


def test_shorter_drafts_at_large_batch_on_the_h100_curve() -> None:
    pol = policy("h100")
    m = pol.model
    one = pol.allocate([cand(m, 20, match_len=2)], 10_000)[0]
    many = pol.allocate([cand(m, 20, match_len=2) for _ in range(512)], 100_000)
    assert one >= 10
    assert sum(many) / len(many) < one / 2


def test_fixed_policy_drafts_everything_within_budget() -> None:
    pol = policy(LINEAR, adaptive=False)
    m = pol.model
    assert pol.allocate([cand(m, 20), cand(m, 3), None], 100) == [20, 3, 0]
    lens = pol.allocate([cand(m, 20, match_len=16), cand(m, 20, match_len=1)], 10)
    assert sum(lens) == 10 and lens[0] >= lens[1]     # trimmed to the budget by expected gain


def test_budget_and_limits_hold_for_random_inputs() -> None:
    rng = random.Random(5)
    for curve in ("flat", "h100", "cpu", LINEAR):
        for adaptive in (True, False):
            pol = policy(curve, adaptive)
            for _ in range(40):
                n_q = rng.randrange(0, 60)
                cands = [None if rng.random() < 0.2 else
                         cand(pol.model, rng.randrange(0, 30), rng.choice(("self", "sibling", "other")),
                              rng.randrange(1, 17), a=rng.random())
                         for _ in range(n_q)]
                budget = rng.randrange(0, 200)
                lens = pol.allocate(cands, budget)
                assert len(lens) == n_q and sum(lens) <= budget
                for c, d in zip(cands, lens):
                    assert 0 <= d <= (c.limit if c is not None else 0)


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


def test_step_cost_charges_draft_tokens_on_the_verify_curve() -> None:

    decode = CostCurve(LINEAR)                        # each more sequence costs a whole step
    verify = CostCurve(((1, 1.0), (32, 1.1), (4096, 100.0)))  # rows sharing one KV read are nearly free
    cost = StepCost(decode, verify)
    assert cost(1, 0) == pytest.approx(1.0) and cost(8, 0) == pytest.approx(8.0)
    assert cost(1, 15) == pytest.approx(verify(16))
    assert cost(8, 8) == pytest.approx(8.0 + verify(16) - verify(8))
    assert StepCost(decode)(4, 4) == pytest.approx(decode(8))   # one curve for both
    model = AcceptanceModel()
    model.refresh()
    pol = DraftPolicy(model, cost)
    assert pol.allocate([cand(model, 20, match_len=16)], 100)[0] >= 15  # cheap verify rows: draft long
    assert DraftPolicy(model, decode).allocate([cand(model, 20, match_len=16)], 100) == [0]


def test_step_cost_charges_draft_rows_what_one_more_row_per_sequence_cost() -> None:

    decode = CostCurve(((1, 2.0), (256, 512.0)))            # 2 ms per sequence
    verify = CostCurve(((1, 2.0), (512, 300.0)))            # rows of one sequence: ~0.6 ms each
    pairs = CostCurve(((1, 2.3), (256, 768.0)), unit=2.0)   # a second row per sequence: 1 ms at 256
    cost = StepCost(decode, verify, pairs)
    assert pairs(256) == pytest.approx(384.0) and cost.row(256) == pytest.approx(0.5)
    assert cost(256, 64) == pytest.approx(256.0 + 64 * 0.5)   # dearer than the verify slope
    assert cost(1, 15) == pytest.approx(verify(16))             # a long draft at batch 1: verify
    model = AcceptanceModel()
    model.refresh()
    # At 256 a draft token worth 0.5 of a sequence's 1.0 pays only if accepted more than half the
    # time (and DRAFT_MARGIN): middling copies are refused, sure ones taken.
    pol = DraftPolicy(model, cost)
    weak = [Candidate(0.4, 4, [1.0, 0.5, 0.5, 0.5])] * 256
    sure = [Candidate(0.99, 4, [1.0, 0.99, 0.99, 0.99])] * 256
    assert sum(pol.allocate(weak, 1024)) == 0 and sum(pol.allocate(sure, 1024)) > 0
    assert sum(DraftPolicy(model, StepCost(decode, verify)).allocate(weak, 1024)) > 0  # verify alone: cheap


def test_search_is_skipped_when_even_the_best_known_copies_would_not_pay() -> None:
    half = CostCurve(((1, 1.0), (2, 1.5), (4096, 2048.5)))  # a draft token costs half a plain step
    model = AcceptanceModel()
    model.refresh()
    pol = DraftPolicy(model, half)
    assert pol.can_pay(1, 20)                 # the priors: long matches are mostly accepted
    for _ in range(3000):                     # copies are then seldom accepted, whatever their match
        for s in ("self", "sibling", "other"):
            for ml in (1, 2, 3, 4, 6, 10, 16):
                model.record(s, ml, drafted=5, accepted=0)
    assert not pol.can_pay(1, 20) and not pol.can_pay(64, 1000)
    fresh = AcceptanceModel()
    fresh.refresh()
    assert DraftPolicy(fresh, CostCurve.from_spec("flat")).can_pay(64, 1000)  # free drafts that are accepted
