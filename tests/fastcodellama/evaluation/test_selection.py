"""`fastcodellama select` end to end on a few tasks of real samples, and its blindness to tests."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fastcodellama.evaluation.behaviour import BehaviourCache
from fastcodellama.cli.main import main
from fastcodellama.evaluation.problems import Problem, load_problems, read_jsonl
from fastcodellama.evaluation.selection import SelectConfig, run_selection, select_samples, task_prompts

REAL = Path("/work/shared/data/real_traces/codellama7b-instruct_humaneval_n10_sampled.jsonl")
TASKS = ("HumanEval/0", "HumanEval/2", "HumanEval/12")


@pytest.fixture(scope="module")
def samples_file(tmp_path_factory) -> Path:
    if not REAL.exists():
        pytest.skip(f"{REAL} not here")
    path = tmp_path_factory.mktemp("select") / "samples.jsonl"
    rows = [r for r in read_jsonl(REAL) if r["task_id"] in TASKS]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"task_id": r["task_id"], "completion": r["completion"], "extra": 1}) + "\n")
    return path


@pytest.fixture(scope="module")
def problems() -> dict[str, Problem]:
    everything = load_problems()
    return {t: everything[t] for t in TASKS}


@pytest.fixture(scope="module")
def report(samples_file, problems) -> dict:
    return select_samples(samples_file, problems, SelectConfig(submit=2), cache_path=samples_file.with_suffix(".cache"),
                          progress=False)


def test_end_to_end_on_real_samples(report, samples_file):
    submitted = list(read_jsonl(report["output"]))
    assert [r["task_id"] for r in submitted] == [t for t in TASKS for _ in range(2)]
    assert all(r["extra"] == 1 and "completion" in r and r["select_rank"] in (0, 1) for r in submitted)
    for task in report["tasks"]:
        assert task["samples"] == 10 and task["examples"] >= 1 and sum(task["cluster_sizes"]) == task["kept"]
        assert task["kept"] >= task["passed_examples"]
    assert set(report["n_at_k"]) == {"1@10", "2@10"} and "pass@1" in report["pass_at_k"]
    # a task whose 10 samples all pass is solved by any choice; one where none passes, by none
    for task in report["tasks"]:
        if task["samples_passed"] in (0, 10):
            assert all(p == bool(task["samples_passed"]) for p in task["submitted_passed"])
    assert json.loads(Path(report["report"]).read_text())["n_at_k"] == report["n_at_k"]


def test_selection_never_reads_tests_or_solutions(samples_file, problems):
    samples = list(read_jsonl(samples_file))
    cache = BehaviourCache(samples_file.with_suffix(".cache"))
    chosen = run_selection(samples, task_prompts(problems), SelectConfig(submit=2), cache, progress=False)

    failing = {t: dataclasses.replace(p, test="def check(candidate):\n    assert False\n", canonical_solution="")
               for t, p in problems.items()}
    assert run_selection(samples, task_prompts(failing), SelectConfig(submit=2), cache, progress=False) == chosen

    class Sealed:  # a problem whose test and solution cannot even be read
        def __init__(self, p: Problem) -> None:
            self.task_id, self.prompt, self.entry_point = p.task_id, p.prompt, p.entry_point

        def __getattr__(self, name):
            raise AssertionError(f"selection read {name}")

    sealed = {t: Sealed(p) for t, p in problems.items()}
    assert run_selection(samples, task_prompts(sealed), SelectConfig(submit=2), cache, progress=False) == chosen


def test_command_line(samples_file, tmp_path, capsys, report):
    out = tmp_path / "chosen.jsonl"
    assert main(["select", str(samples_file), "--submit", "1", "--output", str(out), "--no-score",
                 "--cache", str(samples_file.with_suffix(".cache"))]) == 0
    assert len(list(read_jsonl(out))) == 3 and "submitted" in capsys.readouterr().out
    assert main(["select", str(tmp_path / "missing.jsonl"), "--no-score"]) == 2
