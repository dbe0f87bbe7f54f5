"""The pass@k job on a local Ray cluster of two replicas (embedded model): same samples as the
single-process job, a replica killed mid-job, resume after the driver is interrupted, checks on Ray.

The single-process job writes tasks in the order they finish, so files are compared as multisets of
(task_id, completion, finish_reason, num_tokens); the `spec` counters are telemetry that depends on
what else was in the batch, and so on the sharding.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from fastcodellama.cli.main import build_parser, main
from fastcodellama.evaluation.evaluate import evaluate_samples
from fastcodellama.cli.humaneval import job_params
from fastcodellama.job.tasks import load_tasks
from fastcodellama.evaluation.problems import load_problems
from fastcodellama.cli.options import ray_config, replica_spec
from fastcodellama.ray_cluster import RayConfig
from fastcodellama.evaluation.sandbox import Limits

ENGINE = ["--num-kv-blocks", "96", "--block-size", "8", "--threads", "1", "--no-evaluate"]
GREEDY = ["--limit", "6", "--passk", "1", "--max-tokens", "16", *ENGINE]
SAMPLED = ["--limit", "4", "--passk", "2", "--temperature", "0.8", "--max-tokens", "12", *ENGINE]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def samples(path: Path) -> Counter:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return Counter((r["task_id"], r["completion"], r["finish_reason"], r["num_tokens"]) for r in rows)


def per_task(path: Path) -> Counter:
    return Counter(json.loads(line)["task_id"] for line in path.read_text().splitlines())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """The single-process job's samples, greedy and sampled."""
    d = tmp_path_factory.mktemp("single")
    out = {"greedy": d / "greedy.jsonl", "sampled": d / "sampled.jsonl"}
    for name, flags in (("greedy", GREEDY), ("sampled", SAMPLED)):
        assert main(["humaneval", *flags, "--output_data_fn", str(out[name])]) == 0
    return out


def job_parts(flags: list[str], output: Path, **ray) -> tuple:
    """What `fastcodellama humaneval FLAGS --ray --replicas 2` would run, for the Python API."""
    args = build_parser().parse_args(["humaneval", *flags, "--output_data_fn", str(output), "--ray", "--replicas", "2"])
    config = RayConfig(**{**ray_config(args).__dict__, **ray})
    return load_tasks(None, args.limit), job_params(args), str(output), replica_spec(args), config


def test_two_replicas_write_the_single_process_samples(ray_cluster, reference, tmp_path, capsys):
    out = tmp_path / "greedy.jsonl"  # seeded sampling: see the resume test
    assert main(["humaneval", *GREEDY, "--output_data_fn", str(out), "--ray", "--replicas", "2"]) == 0
    assert samples(out) == samples(reference["greedy"])
    report = capsys.readouterr().out
    assert "| ray replicas" in report and "| replica failures                  | 0 |" in report


def test_a_replica_killed_mid_job_has_its_tasks_retried(ray_cluster, reference, tmp_path):
    from fastcodellama.job.ray_runner import generate_samples_on_ray

    killed = []

    def kill_a_busy_replica(pool) -> None:
        # After a task is written: a replica whose call is still running (its tasks unfinished).
        running = [i for ref, i in pool.calls.items() if not ray_cluster.wait([ref], timeout=0)[0]]
        if not killed and running:
            killed.append(running[0])
            ray_cluster.kill(pool.handles[running[0]])

    out = tmp_path / "samples.jsonl"
    stats, report = generate_samples_on_ray(*job_parts(GREEDY, out, tasks_in_flight=1), progress=False,
                                            on_result=kill_a_busy_replica)
    assert killed and len(report.failures) == 1 and report.failures[0].replica == killed[0]
    assert report.failures[0].tasks_retried >= 1
    assert ("tasks retried", report.failures[0].tasks_retried) in report.rows()
    assert samples(out) == samples(reference["greedy"])  # every sample exactly once
    assert stats.samples == 6


def test_resume_after_the_driver_is_interrupted(ray_cluster, reference, tmp_path):
    from fastcodellama.job.ray_runner import generate_samples_on_ray

    def interrupt_after_two_tasks(pool) -> None:
        if sum(pool.report.tasks_by_replica.values()) >= 2:
            raise KeyboardInterrupt

    out = tmp_path / "samples.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_samples_on_ray(*job_parts(SAMPLED, out), progress=False, on_result=interrupt_after_two_tasks)
    first = out.read_text().splitlines()
    assert 1 <= len(set(per_task(out))) < 4 and all(n == 2 for n in per_task(out).values())
    assert main(["humaneval", *SAMPLED, "--output_data_fn", str(out), "--ray", "--replicas", "2"]) == 0
    assert out.read_text().splitlines()[:len(first)] == first
    assert samples(out) == samples(reference["sampled"])  # same seeds per task, wherever it ran
    before = out.read_text()  # a finished file is left alone
    assert main(["humaneval", *SAMPLED, "--output_data_fn", str(out), "--ray", "--replicas", "2"]) == 0
    assert out.read_text() == before


def test_sandboxed_checks_fan_out_over_the_nodes(ray_cluster, tmp_path):
    from fastcodellama.evaluation.ray_sandbox import RaySandboxes

    sandboxes = RaySandboxes(None, workers_per_node=2, progress=False)
    programs = ["assert 1 + 1 == 2", "assert 1 + 1 == 3", "x = 1", "raise SystemExit(0)", "while True: pass"]
    assert [r.status for r in sandboxes(programs, 1.0, Limits())] == ["passed", "failed", "passed", "failed", "timeout"]
    problems = load_problems()
    rows = [{"task_id": t, "completion": problems[t].canonical_solution if ok else "    return None\n"}
            for t in ("HumanEval/0", "HumanEval/1") for ok in (True, False)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    on_ray = evaluate_samples(path, problems, ks=(1,), progress=False, check_all=sandboxes)
    ray_verdicts = (tmp_path / "samples.jsonl_results.jsonl").read_text()
    local = evaluate_samples(path, problems, ks=(1,), workers=2, progress=False)
    assert on_ray["pass_at_k"] == local["pass_at_k"] == {"pass@1": 0.5}
    assert ray_verdicts == (tmp_path / "samples.jsonl_results.jsonl").read_text()


def test_without_ray_installed_the_flag_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    assert main(["humaneval", *GREEDY, "--output_data_fn", str(tmp_path / "x.jsonl"), "--ray"]) == 2
    assert "pip install 'fastcodellama[ray]'" in capsys.readouterr().err


def test_more_replicas_than_the_cluster_holds_is_a_clear_error(ray_cluster, tmp_path, capsys):
    assert main(["humaneval", *GREEDY, "--output_data_fn", str(tmp_path / "x.jsonl"), "--ray", "--replicas", "3"]) == 1
    assert "3 replicas need 3 CPUs" in capsys.readouterr().err


def test_ray_flags():
    args = build_parser().parse_args(["humaneval", "--ray"])
    assert ray_config(args).address is None and ray_config(args).replicas is None
    args = build_parser().parse_args(["humaneval", "--ray", "ray://head:10001", "--replicas", "8"])
    assert ray_config(args) == RayConfig(address="ray://head:10001", replicas=8)
    assert build_parser().parse_args(["humaneval"]).ray is None
    assert build_parser().parse_args(["evaluate", "s.jsonl", "--ray", "auto"]).ray == "auto"
    with pytest.raises(ValueError):
        RayConfig(replicas=0)
