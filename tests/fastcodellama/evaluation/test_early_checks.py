"""EarlyChecks: checks started before evaluation give the verdicts evaluation would give."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastcodellama.evaluation import evaluate
from fastcodellama.evaluation.early_checks import EarlyChecks
from fastcodellama.evaluation.problems import Problem, load_problems


@pytest.fixture(scope="module")
def problems() -> dict[str, Problem]:
    every = load_problems()
    return {t: every[t] for t in ("HumanEval/0", "HumanEval/2")}


def _samples(problems: dict[str, Problem]) -> list[dict]:
    right = {t: p.canonical_solution for t, p in problems.items()}
    return [{"task_id": "HumanEval/0", "completion": right["HumanEval/0"]},
            {"task_id": "HumanEval/0", "completion": "    return None\n"},
            {"task_id": "HumanEval/0", "completion": right["HumanEval/0"]},  # the same sample twice
            {"task_id": "HumanEval/2", "completion": right["HumanEval/2"].replace("1.0", "2.0")},
            {"task_id": "HumanEval/2", "completion": right["HumanEval/2"]}]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _verdicts(path: str) -> list[tuple[str, bool, str]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [(r["task_id"], r["passed"], r["result"]) for r in rows]


def test_started_checks_give_the_verdicts_evaluation_gives(problems, tmp_path):
    rows = _samples(problems)
    alone = evaluate.evaluate_samples(_write(tmp_path / "alone.jsonl", rows), problems, ks=(1,), workers=2,
                                      timeout=3.0, progress=False)
    with EarlyChecks(workers=2, timeout=3.0) as early:
        for r in rows[:3]:  # the rest as if an earlier run had written them: started by evaluation
            early.submit(r["task_id"], r["completion"], evaluate.problem_check(problems[r["task_id"]], r["completion"]))
        started = evaluate.evaluate_samples(_write(tmp_path / "started.jsonl", rows), problems, ks=(1,), workers=2,
                                            timeout=3.0, progress=False, started=early)
        assert early.submitted == 3
        assert all(early.take(r["task_id"], r["completion"]) is None for r in rows)  # every one was used, once
    assert _verdicts(started["results_path"]) == _verdicts(alone["results_path"])
    assert [v[1] for v in _verdicts(started["results_path"])] == [True, False, True, False, True]
    assert started["pass_at_k"] == alone["pass_at_k"]


def test_a_check_is_handed_out_once_per_sample(problems):
    task = "HumanEval/0"
    completion = problems[task].canonical_solution
    with EarlyChecks(workers=1, timeout=3.0) as early:
        check = evaluate.problem_check(problems[task], completion)
        early.submit(task, completion, check)
        early.submit(task, completion, check)
        first, second = early.take(task, completion), early.take(task, completion)
        assert first is not None and second is not None and first is not second
        assert early.take(task, completion) is None
        assert first.result().passed and second.result().passed


def test_checks_started_with_another_timeout_are_refused(problems, tmp_path):
    path = _write(tmp_path / "s.jsonl", _samples(problems)[:1])
    with EarlyChecks(workers=1, timeout=1.0) as early:
        with pytest.raises(ValueError, match="timeout"):
            evaluate.evaluate_samples(path, problems, ks=(1,), timeout=3.0, progress=False, started=early)


def test_a_check_that_timed_out_beside_generation_runs_again(problems, tmp_path):
    """Beside generation a sandbox may wait for the cores: its timeout is not the verdict."""
    from concurrent.futures import Future

    from fastcodellama.evaluation.sandbox import ExecResult

    class Starved(EarlyChecks):
        def take(self, task_id, completion):  # every sample's early check timed out
            waited: Future = Future()
            waited.set_result(ExecResult(False, "timeout", "timed out", "test"))
            return waited

    rows = _samples(problems)[:2]  # a right completion and a wrong one
    with Starved(workers=2, timeout=3.0) as early:
        report = evaluate.evaluate_samples(_write(tmp_path / "s.jsonl", rows), problems, ks=(1,), workers=2,
                                           timeout=3.0, progress=False, started=early)
    assert [v[1] for v in _verdicts(report["results_path"])] == [True, False]
    assert report["status"] == {"passed": 1, "failed": 1}
