"""Copy-draft speculation in the engine on the embedded model: same outputs, fewer forwards."""
from __future__ import annotations

import pytest

from engine import DEFAULT_MODEL, LLM, SamplingParams
from engine.proposer import Draft, DraftQuery
from fastcodellama.job.tasks import load_tasks
from fastcodellama.job.types import CODEX_STOPS
from fastcodellama.drafting import SpecConfig, build_proposer
from tests.engine.helpers import assert_no_leaks

PROMPTS = [t["prompt"] for t in load_tasks(None, 6)]


class BudgetChecked:
    """Wraps a proposer and checks every draft against the engine's budget and caps."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def propose(self, queries: list[DraftQuery], budget: int, cost) -> list[Draft]:
        drafts = self.inner.propose(queries, budget, cost)
        assert len(drafts) == len(queries)
        assert sum(len(d) for d in drafts) <= budget
        assert all(len(d) <= q.max_len for d, q in zip(drafts, queries))
        self.calls += 1
        return drafts


def _llm(speculate: bool, **kw) -> LLM:
    proposer = BudgetChecked(build_proposer(SpecConfig(policy="fixed"))) if speculate else None
    return LLM(DEFAULT_MODEL, proposer=proposer, **kw)


@pytest.fixture(scope="module")
def plain() -> LLM:
    return _llm(False)


def _tokens(outs) -> list[list[list[int]]]:
    return [[c.token_ids for c in o.outputs] for o in outs]


def test_greedy_is_identical_with_and_without_drafts(plain):
    p = SamplingParams(temperature=0.0, max_tokens=96, stop=CODEX_STOPS)
    ref = plain.generate(PROMPTS, p)
    spec = _llm(True)
    outs = spec.generate(PROMPTS, p)
    assert _tokens(outs) == _tokens(ref)
    assert [o.outputs[0].text for o in outs] == [o.outputs[0].text for o in ref]
    stats = spec.engine.stats()
    assert stats.spec.total_drafted > 0 and spec.engine.proposer.calls > 0
    assert stats.steps <= plain.engine.stats().steps
    assert_no_leaks(spec.engine)


def test_ten_siblings_sampled_are_identical_for_a_seed(plain):
    p = SamplingParams(n=10, temperature=0.8, top_p=0.95, max_tokens=64, seed=11, stop=CODEX_STOPS)
    ref = plain.generate(PROMPTS[:3], p)
    spec = _llm(True)
    outs = spec.generate(PROMPTS[:3], p)
    assert _tokens(outs) == _tokens(ref)
    drafted = spec.engine.stats().spec.drafted
    assert drafted.get("sibling", 0) + drafted.get("self", 0) > 0
    assert_no_leaks(spec.engine)


def test_preemption_and_aborts_under_speculation(plain):
    p = SamplingParams(n=4, temperature=0.0, max_tokens=64, ignore_eos=True)
    ref = plain.generate(PROMPTS[:3], p)
    spec = _llm(True, num_kv_blocks=30, max_num_batched_tokens=256, max_num_seqs=16)
    outs = spec.generate(PROMPTS[:3], p)
    assert _tokens(outs) == _tokens(ref)
    assert spec.engine.scheduler.num_preemptions > 0
    assert_no_leaks(spec.engine)
    engine = spec.engine
    engine.add_request("x", PROMPTS[0], SamplingParams(n=3, temperature=0.8, max_tokens=100))
    for _ in range(6):
        engine.step()
    engine.abort("x")
    assert_no_leaks(engine)


def test_a_small_step_budget_caps_drafts():
    spec = _llm(True, max_num_batched_tokens=12, max_num_seqs=8)
    spec.generate(PROMPTS[:2], SamplingParams(n=4, temperature=0.0, max_tokens=40, ignore_eos=True))
    assert spec.engine.proposer.calls > 0
    assert_no_leaks(spec.engine)
