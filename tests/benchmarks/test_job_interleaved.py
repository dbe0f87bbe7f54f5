"""benchmarks/job_interleaved.py: the two engines `fastcodellama humaneval` builds for --type base and
--type fastcodellama run the same job stepping in turn, give the same samples and hold no block."""
from __future__ import annotations

import job_interleaved
from tests.benchmarks.in_turn_recording import record_steps

JOB = ["--limit", "2", "--passk", "3", "--temperature", "0.8", "--max-tokens", "12", "--no-evaluate"]


def test_both_types_run_the_job_in_turn_and_give_the_same_samples(monkeypatch):
    steps = record_steps(monkeypatch, job_interleaved.TimedJob, lambda job: job.kind)
    row = job_interleaved.run(JOB)
    assert row["same_samples"]
    base, fast = row["base"], row["fastcodellama"]
    assert base["tokens"] == fast["tokens"] > 0 and base["drafted"] == 0
    assert base["leaked_blocks"] == fast["leaked_blocks"] == 0
    assert row["ratio"] == base["wall_s"] / fast["wall_s"]
    both = min(steps.count("base"), steps.count("fastcodellama"))
    assert steps[:4] == ["base", "fastcodellama", "fastcodellama", "base"] and both >= 2


def test_the_engines_are_the_commands_own():
    base = job_interleaved.TimedJob(JOB, "base")
    fast = job_interleaved.TimedJob(JOB, "fastcodellama")
    assert base.engine.proposer is None and fast.engine.proposer is not None
    assert len(base.engine.requests) == len(fast.engine.requests) == 2


def test_fixed_draft_lengths_step_in_the_same_turns():
    row = job_interleaved.run(JOB, fixed_k=(1, 4))
    assert row["same_samples"] and set(row["fixed"]) == {"fixed k=1", "fixed k=4"}
    for name, fixed in row["fixed"].items():
        assert fixed["tokens"] == row["base"]["tokens"] and fixed["leaked_blocks"] == 0
        assert fixed["ratio"] == row["base"]["wall_s"] / fixed["wall_s"]
    assert row["fixed"]["fixed k=4"]["drafted"] > 0
    fixed_engine = job_interleaved.TimedJob(JOB, "fastcodellama", 2).engine
    assert fixed_engine.proposer.config.policy == "fixed" and fixed_engine.proposer.config.k == 2


def test_a_fixed_draft_length_leaves_the_users_step_cost_file_alone(monkeypatch, tmp_path):
    """The job's engines read and write the user's step-cost file, as the command does; a fixed
    draft length, a baseline in hindsight, only reads it."""
    monkeypatch.setenv("FASTCODELLAMA_STEP_COST_DIR", str(tmp_path))
    fixed = job_interleaved.TimedJob(JOB, "fastcodellama", 2)
    while not fixed.done:
        fixed.step()
    assert list(tmp_path.iterdir()) == []
    fast = job_interleaved.TimedJob(JOB, "fastcodellama")
    while not fast.done:
        fast.step()
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]
