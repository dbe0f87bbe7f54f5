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

# Real CodeLlama-7B-Instruct samples of the first three HumanEval tasks (tests/data/README.md).
TRACES = Path(__file__).resolve().parents[2] / "data" / "codellama7b_instruct_humaneval_3x3.jsonl"


def _recorded(tokenizer, tasks: int) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    """(prompt, continuations) of the recorded samples."""
    prompts = [t["prompt"] for t in load_tasks(None, tasks)]
    by_task: dict[str, list[str]] = {}
    for line in TRACES.read_text().splitlines():
        rec = json.loads(line)
        by_task.setdefault(rec["task_id"], []).append(rec["completion"])
    texts = [by_task[f"HumanEval/{i}"] for i in range(tasks)]
    return [(p, tuple(tuple(tokenizer.encode(t, add_bos=False))[:160] for t in ts)) for p, ts in zip(prompts, texts)]


@pytest.mark.parametrize("greedy", [True, False])
def test_replay_reproduces_each_recorded_continuation_with_drafting_on_and_off(greedy):
    plain = LLM(DEFAULT_MODEL)
    drafted = LLM(DEFAULT_MODEL, proposer=BudgetChecked(build_proposer(SpecConfig(policy="fixed"))),
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
