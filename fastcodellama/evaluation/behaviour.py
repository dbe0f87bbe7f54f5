"""What samples do: each sample runs on all of its task's inputs in one sandboxed process.

A sample's program is the prompt, the completion and a small driver that calls the entry point on
each input (literal arguments, parsed afresh per call so that a sample mutating its arguments
changes nothing) and records, per input, `=<repr of the result>`, `!<exception type>` or
`!timeout` (a CPU-time limit per input, and one for all inputs together). The driver's record
comes back through `sandbox.run_program` as plain data once the whole program ran; a run that fails
or times out as a whole gives `!program-failed` / `!program-timeout` for every input. These outputs
are what the sample does, not a verdict: a sample could as well write any record it likes.

Results are cached on disk by the hash of the program, so a rerun executes nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fastcodellama.evaluation.sandbox import PASSED, TIMEOUT, Limits, run_program

DRIVER_VERSION = 1
TIMEOUT_OUTPUT = "!timeout"

_DRIVER = r'''

def _fcl_behaviour(entry_point, inputs, per_input_cpu, total_cpu):
    import ast, hashlib, json, resource, signal

    class _Timeout(BaseException):
        pass

    def on_timer(signum, frame):
        raise _Timeout()

    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    signal.signal(signal.SIGPROF, on_timer)
    function = globals().get(entry_point)
    start, outputs = cpu(), []
    for text in inputs:
        if not callable(function):
            outputs.append("!NameError")
            continue
        if cpu() - start > total_cpu:
            outputs.append("!timeout")
            continue
        try:
            try:
                signal.setitimer(signal.ITIMER_PROF, per_input_cpu)
                shown = repr(function(*ast.literal_eval(text)))
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
            if len(shown) > 2000:
                shown = "<sha256 " + hashlib.sha256(shown.encode("utf-8", "backslashreplace")).hexdigest() + ">"
            outputs.append("=" + shown)
        except _Timeout:
            outputs.append("!timeout")
        except BaseException as e:
            outputs.append("!" + type(e).__name__)
    return json.dumps(outputs)


__output__ = _fcl_behaviour({entry_point!r}, {inputs!r}, {per_input_cpu!r}, {total_cpu!r})
'''


@dataclass(frozen=True)
class BehaviourLimits:
    per_input_cpu_s: float = 0.25  # CPU seconds one call may take
    total_cpu_s: float = 2.0  # CPU seconds for all calls of one sample; later inputs get !timeout
    wall_s: float = 10.0  # the whole process, start-up excluded (sandbox deadline)
    sandbox: Limits = Limits()


@dataclass(frozen=True)
class SampleRun:
    """One sample on one task's inputs."""

    prompt: str
    completion: str
    entry_point: str
    inputs: tuple[tuple, ...]  # literal argument tuples

    def program(self, limits: BehaviourLimits) -> str:
        driver = _DRIVER.format(entry_point=self.entry_point, inputs=[repr(args) for args in self.inputs],
                                per_input_cpu=limits.per_input_cpu_s, total_cpu=limits.total_cpu_s)
        return self.prompt + self.completion + "\n" + driver

    def key(self, limits: BehaviourLimits) -> str:
        text = json.dumps([DRIVER_VERSION, self.program(limits), limits.wall_s, repr(limits.sandbox)])
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def run_sample(run: SampleRun, limits: BehaviourLimits) -> list[str]:
    """The sample's output on each input (see the module docstring), run in a fresh sandbox."""
    result = run_program(run.program(limits), limits.wall_s, limits.sandbox)
    if result.status == PASSED:
        outputs = _decode(result.output, len(run.inputs))
        if outputs is not None:
            return outputs
    reason = "!program-timeout" if result.status == TIMEOUT else "!program-failed"
    return [reason] * len(run.inputs)


def _decode(text: str | None, count: int) -> list[str] | None:
    try:
        outputs = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(outputs, list) or len(outputs) != count or not all(isinstance(o, str) for o in outputs):
        return None
    return outputs


class BehaviourCache:
    """Outputs by run key, kept in a jsonl file that grows by one line per new run."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._outputs: dict[str, list[str]] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    self._outputs[row["key"]] = row["outputs"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by an interrupted run

    def get(self, key: str) -> list[str] | None:
        return self._outputs.get(key)

    def put(self, key: str, outputs: list[str]) -> None:
        self._outputs[key] = outputs
        if self.path is not None:
            os.makedirs(self.path.parent, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "outputs": outputs}) + "\n")


def run_all(runs: Sequence[SampleRun], limits: BehaviourLimits, cache: BehaviourCache, workers: int = 2,
            progress: bool = True) -> list[list[str]]:
    """Outputs of every run, in order; identical runs and cached ones execute nothing."""
    keys = [run.key(limits) for run in runs]
    missing = list({key: run for key, run in zip(keys, runs) if cache.get(key) is None}.items())
    if missing:  # alone: a machine that cannot isolate the runs refuses once (SandboxUnavailable), not per run
        cache.put(missing[0][0], run_sample(missing[0][1], limits))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = pool.map(lambda item: (item[0], run_sample(item[1], limits)), missing[1:])
        for key, outputs in _progress(done, len(missing), progress, initial=min(1, len(missing))):
            cache.put(key, outputs)
    return [cache.get(key) for key in keys]


def _progress(items: Iterable, total: int, enabled: bool, initial: int = 0) -> Iterable:
    return tqdm(items, total=total, initial=initial, desc="running samples on inputs", unit="sample",
                disable=not enabled)
