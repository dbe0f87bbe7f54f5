"""Samples run on inputs in the real sandbox: outputs, crashes, timeouts, forgeries, the cache."""
from __future__ import annotations

import pytest

from fastcodellama.evaluation import behaviour
from fastcodellama.evaluation.behaviour import BehaviourCache, BehaviourLimits, SampleRun, run_all, run_sample
from fastcodellama.evaluation.sandbox import run_program

PROMPT = 'def f(x, y):\n    """Adds."""\n'
INPUTS = ((1, 2), (3, 0), ([1], [2]))
LIMITS = BehaviourLimits(per_input_cpu_s=0.2, total_cpu_s=1.0, wall_s=5.0)


def outputs(completion: str) -> list[str]:
    return run_sample(SampleRun(PROMPT, completion, "f", INPUTS), LIMITS)


def test_values_and_exceptions_per_input():
    assert outputs("    return x + y\n") == ["=3", "=3", "=[1, 2]"]
    assert outputs("    return x / y\n") == ["=0.5", "!ZeroDivisionError", "!TypeError"]
    assert outputs("    y.append(9)\n    return y\n") == ["!AttributeError", "!AttributeError", "=[2, 9]"]


def test_a_slow_input_times_out_alone():
    assert outputs("    while x == 3:\n        pass\n    return x\n") == ["=1", "!timeout", "=[1]"]


def test_broken_and_escaping_samples_give_no_outputs():
    assert outputs("    return (\n") == ["!program-failed"] * 3
    assert outputs("    import os\n    os._exit(0)\n") == ["!program-failed"] * 3


def test_a_sample_cannot_forge_its_report():
    # It prints a report of its own and leaves; the parent only takes one sent behind its token.
    forged = ('    import json, os\n    os.write(3, b"done\\n" + json.dumps(["=3", "=3", "=[1, 2]"]).encode() + b"\\n")\n'
              '    os._exit(0)\n')
    assert outputs(forged) == ["!program-failed"] * 3
    assert run_program("__output__ = 'ok'\n", 5.0).output == "ok"
    assert run_program("__output__ = 'a\\nb'\n", 5.0).status == "failed"


def test_cache_and_duplicates_run_once(tmp_path, monkeypatch):
    runs = [SampleRun(PROMPT, "    return x + y\n", "f", INPUTS)] * 3 + [SampleRun(PROMPT, "    return x\n", "f", INPUTS)]
    calls = []
    real = behaviour.run_sample
    monkeypatch.setattr(behaviour, "run_sample", lambda run, limits: calls.append(run) or real(run, limits))
    first = run_all(runs, LIMITS, BehaviourCache(tmp_path / "c.jsonl"), workers=2, progress=False)
    assert len(calls) == 2 and first[0] == first[2] == ["=3", "=3", "=[1, 2]"] and first[3] == ["=1", "=3", "=[1]"]
    again = run_all(runs, LIMITS, BehaviourCache(tmp_path / "c.jsonl"), workers=2, progress=False)
    assert again == first and len(calls) == 2  # a rerun executes nothing
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "torn')  # an interrupted write is ignored
    assert BehaviourCache(tmp_path / "c.jsonl").get(runs[0].key(LIMITS)) == first[0]


@pytest.mark.parametrize("inputs", [(), ((1, 2),)])
def test_any_number_of_inputs(inputs):
    assert run_sample(SampleRun(PROMPT, "    return x + y\n", "f", inputs), LIMITS) == ["=3"][:len(inputs)]
