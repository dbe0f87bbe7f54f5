"""predicted_edits' workload and one short comparison: the edit is applied, outputs are exact and
the same with and without the prediction, and the prediction's tokens are drafted."""
from __future__ import annotations

import predicted_edits
from engine import DEFAULT_MODEL
from fastcodellama.evaluation.problems import load_problems


def test_change_renames_a_local_or_adds_a_comment():
    instruction, new = predicted_edits.change("    total = 0\n    for x in xs:\n        total += x\n    return total\n")
    assert instruction == "Rename `total` to `total_v`." and new.count("total_v") == 3
    instruction, new = predicted_edits.change("    return a + b\n")
    assert "comment" in instruction and "# checked" in new


def test_prediction_run_is_exact_identical_and_drafts_from_the_prediction():
    problems = list(load_problems().values())[:3]
    edits = predicted_edits.workload(problems, {p.task_id: p.canonical_solution for p in problems}, "edit")
    assert all(e.new != e.old and e.prompt.startswith("# ") for e in edits)
    rows = predicted_edits.compare(DEFAULT_MODEL, edits, batch=1, repeats=1)
    by = {r["system"]: r for r in rows}
    assert all(r["exact"] and r["identical_outputs"] for r in rows)
    assert by["prediction"]["accepted_prediction_tokens"] > 0 and by["no prediction"]["accepted_prediction_tokens"] == 0
    assert by["prediction"]["tokens_per_forward"] > by["no prediction"]["tokens_per_forward"]
