"""Trace replay (benchmarks/trace_replay.py): recorded continuations reproduced exactly with
drafting on and off, through the real scheduler, verify forward and rollback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import DEFAULT_MODEL, LLM, SamplingParams
from fastcodellama.job.tasks import load_tasks
from fastcodellama.drafting import SpecConfig, build_proposer
from tests.engine.helpers import assert_no_leaks
from tests.fastcodellama.drafting.test_speculation import BudgetChecked

TRACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "real_traces"
INSTRUCT = TRACES / "codellama7b-instruct_humaneval_n10_sampled.jsonl"


def _recorded(tokenizer, tasks: int) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    """(prompt, continuations) of real samples where the traces are here, else of handwritten code."""
    prompts = [t["prompt"] for t in load_tasks(None, tasks)]
    if INSTRUCT.exists():
        by_task: dict[str, list[str]] = {}
        for line in INSTRUCT.read_text().splitlines():
            rec = json.loads(line)
            by_task.setdefault(rec["task_id"], []).append(rec["completion"])
        texts = [by_task[f"HumanEval/{i}"][:3] for i in range(tasks)]
    else:
        body = "    result = []\n    for x in numbers:\n        result.append(x)\n    return result\n"
        texts = [[body, body.replace("x", "item"), body * 2] for _ in range(tasks)]
    return [(p, tuple(tuple(tokenizer.encode(t, add_bos=False))[:160] for t in ts)) for p, ts in zip(prompts, texts)]


@pytest.mark.parametrize("greedy", [True, False])
def test_replay_reproduces_each_recorded_continuation_with_drafting_on_and_off(greedy):
    plain = LLM(DEFAULT_MODEL)
    drafted = LLM(DEFAULT_MODEL, proposer=BudgetChecked(build_proposer(SpecConfig(cost_curve="flat"))),
                  max_num_batched_tokens=256, max_num_seqs=16)
    recorded = _recorded(plain.tokenizer, 3)
    sampling = {"temperature": 0.0} if greedy else {"temperature": 0.8, "top_p": 0.95}
    params = [SamplingParams(n=len(c), max_tokens=max(map(len, c)) + 1, replay_token_ids=c, seed=1, **sampling)
              for _, c in recorded]
    for llm in (plain, drafted):
        outs = llm.generate([p for p, _ in recorded], params, use_tqdm=False)
        for (_, continuations), out in zip(recorded, outs):
            for c in out.outputs:
                assert c.token_ids == list(continuations[c.index]) + [llm.engine.eos_id]
        assert_no_leaks(llm.engine)
    spec = drafted.engine.stats().spec
    assert spec.total_accepted > 0 and spec.accepted.get("sibling", 0) > 0  # siblings copied from each other
    assert drafted.engine.stats().steps < plain.engine.stats().steps


def test_replay_needs_one_continuation_per_sample():
    with pytest.raises(ValueError, match="one continuation per sample"):
        SamplingParams(n=2, replay_token_ids=((1, 2),))


def test_the_engine_measures_its_step_cost_for_the_policy():
    llm = LLM(DEFAULT_MODEL, proposer=build_proposer(SpecConfig()), max_num_batched_tokens=64,
              max_num_seqs=16)
    measured = llm.engine.measure_step_cost()
    for points in (measured.decode, measured.verify, measured.pairs):
        assert [t for t, _ in points][:4] == [1, 2, 4, 8] and all(ms > 0 for _, ms in points)
        assert points[-1][0] <= 64
    assert measured.pairs[-1][0] <= 32  # 2 rows per sequence within the step's 64 tokens
    cost = llm.engine.proposer.policy.cost
    assert cost.verify(1) == 1.0  # the measurement, normalized
    assert cost.decode.points[-1][0] == measured.decode[-1][0] and cost.verify.points[-1][0] == measured.verify[-1][0]
    assert cost.pairs.unit == cost.decode.unit == cost.verify.unit  # all in one unit
    # 16 sequences with 16 draft tokens: the decode step of 16 plus the dearer of 16 rows more on
    # the verify curve and 16 rows at what one more row per sequence cost in the pairs step.
    row = (cost.pairs(16) - cost.decode(16)) / 16
    assert cost(16, 16) == pytest.approx(cost.decode(16) + max(cost.verify(32) - cost.verify(16), 16 * max(row, 0)))
