"""The pass@k job: samples file format, resume after a crash, report."""
from __future__ import annotations

import json
from collections import Counter


from fastcodellama.cli.main import main
from fastcodellama.job.samples_file import done_counts


def _job(model: str, out: str, *extra: str) -> int:
    return main(["humaneval", "--model", model, "--limit", "3", "--passk", "3", "--max-tokens", "12",
                 "--temperature", "0.8", "--output_data_fn", out, "--no-evaluate", "--num-kv-blocks", "128",
                 "--block-size", "4", *extra])


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_samples_file_has_every_sample_once(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert _job(tiny_model_dir, str(out)) == 0
    rows = [json.loads(line) for line in _lines(out)]
    assert Counter(r["task_id"] for r in rows) == {"HumanEval/0": 3, "HumanEval/1": 3, "HumanEval/2": 3}
    assert all(set(r) >= {"task_id", "completion", "num_tokens", "spec"} for r in rows)
    assert "tokens/s" in capsys.readouterr().out


def test_overlapped_steps_write_the_same_samples_and_say_how_many_went_ahead(tiny_model_dir, tmp_path, capsys):
    runs = {}
    for overlap in ("off", "on"):
        out = tmp_path / f"{overlap}.jsonl"
        assert _job(tiny_model_dir, str(out), "--seed", "5", "--type", "base", "--overlap-steps", overlap) == 0
        runs[overlap] = ([json.loads(line)["completion"] for line in _lines(out)], capsys.readouterr().out)
    assert runs["on"][0] == runs["off"][0]
    assert "steps queued ahead" not in runs["off"][1]
    line = next(x for x in runs["on"][1].splitlines() if "steps queued ahead" in x)
    ahead, steps = (int(v) for v in line.split("|")[2].split(" of "))
    assert 0 < ahead < steps


def test_resume_after_a_crash_redoes_nothing_and_loses_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "samples.jsonl"
    assert _job(tiny_model_dir, str(out)) == 0
    lines = _lines(out)
    # A crash after four samples, in the middle of writing the fifth.
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 2])
    assert done_counts(str(out)) == Counter(json.loads(l)["task_id"] for l in lines[:4])
    assert _job(tiny_model_dir, str(out)) == 0
    resumed = _lines(out)
    assert resumed[:4] == lines[:4]
    assert Counter(json.loads(l)["task_id"] for l in resumed) == {"HumanEval/0": 3, "HumanEval/1": 3, "HumanEval/2": 3}
    # A finished file is left alone.
    before = out.read_text()
    assert _job(tiny_model_dir, str(out)) == 0
    assert out.read_text() == before


def test_bad_arguments_are_clear_errors(tiny_model_dir, tmp_path, capsys):
    assert main(["humaneval", "--model", tiny_model_dir, "--top_p", "2", "--passk", "2",
                 "--output_data_fn", str(tmp_path / "x.jsonl")]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["humaneval", "--type", "nonsense"]) == 2


def _verdicts(path) -> list[tuple[str, str, bool]]:
    return [(r["task_id"], r["completion"], r["passed"]) for r in map(json.loads, _lines(path))]


def test_tests_run_beside_generation_give_the_same_results(tiny_model_dir, tmp_path, capsys):
    runs = {}
    for mode in ("on", "off", "auto"):
        out = tmp_path / f"{mode}.jsonl"
        assert main(["humaneval", "--model", tiny_model_dir, "--limit", "3", "--passk", "3", "--max-tokens", "12",
                     "--temperature", "0.8", "--output_data_fn", str(out), "--num-kv-blocks", "128",
                     "--block-size", "4", "--max-num-seqs", "3", "--workers", "2",
                     "--tests-while-generating", mode]) == 0
        runs[mode] = (_verdicts(tmp_path / f"{mode}.jsonl_results.jsonl"), capsys.readouterr().out)
    assert runs["on"][0] == runs["off"][0] == runs["auto"][0]
    assert len(runs["on"][0]) == 9
    assert "tests run during generation | 9 of 9" in " ".join(runs["on"][1].split())
    assert "evaluation after generation" in runs["on"][1]
    for mode in ("off", "auto"):  # auto: not on a CPU, where generation keeps every core busy
        assert "tests run during generation" not in runs[mode][1]


def test_steps_timed_beside_the_tests_teach_no_later_run(tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "costs"
    monkeypatch.setenv("FASTCODELLAMA_STEP_COST_DIR", str(cache))
    common = ["humaneval", "--model", tiny_model_dir, "--limit", "2", "--passk", "2", "--max-tokens", "8",
              "--num-kv-blocks", "128", "--block-size", "4", "--workers", "2", "--overwrite"]
    assert main([*common, "--output_data_fn", str(tmp_path / "a.jsonl"), "--tests-while-generating", "on"]) == 0
    assert not cache.exists() or not any(cache.iterdir())
    assert main([*common, "--output_data_fn", str(tmp_path / "b.jsonl"), "--tests-while-generating", "off"]) == 0
    assert any(cache.iterdir())
