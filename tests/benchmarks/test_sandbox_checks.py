"""benchmarks/sandbox_checks.py: checks per second and CPU per check, with the verdicts each check reached."""
from __future__ import annotations

import json

import sandbox_checks


def test_canonical_solutions_pass_and_wrong_ones_fail_at_every_worker_count(tmp_path):
    results = sandbox_checks.main(["--problems", "2", "--workers", "1,2", "--out", str(tmp_path)])
    assert [r["workers"] for r in results["rows"]] == [1, 2]
    for row in results["rows"]:
        assert row["statuses"] == {"passed": 2, "failed": 2}
        assert row["checks"] == 4 and row["checks_per_s"] > 0 and row["cpu_ms_per_check"] > 0
    assert "| 2 | 4 |" in next(tmp_path.glob("sandbox_checks_*.md")).read_text()


def test_a_samples_file_is_checked_as_written(tmp_path):
    problem = next(iter(sandbox_checks.load_problems().values()))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": problem.task_id, "completion": c}) + "\n"
                               for c in (problem.canonical_solution, "    return 0\n", "    syntax error(\n")))
    results = sandbox_checks.main(["--samples", str(samples), "--workers", "1", "--out", str(tmp_path)])
    assert results["rows"][0]["statuses"] == {"passed": 1, "failed": 2}
