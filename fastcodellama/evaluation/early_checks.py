"""Checks started while generation goes on.

The HumanEval job writes each task's samples as soon as the task finishes; handed here, they are
checked at once in a pool of sandboxes, so that evaluation runs beside generation (a GPU
generates while the host's cores wait) and what is left once the last task is written is little
more than the last tasks' own checks. Evaluation then takes each sample's verdict from here, in
the samples file's order, and starts here what was not started (samples an earlier run wrote).

The pool's workers are processes of their own, not threads of the job's: a check runs its task's
test in the process that drives its sandbox, and that Python would otherwise take turns at the
interpreter lock with the engine's steps.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

from fastcodellama.evaluation.sandbox import Check, ExecResult, Limits, check_program, effective_limits

# The checks' processes (and their sandboxes) run at the lowest CPU priority: where they and
# generation want the same cores, generation comes first.
NICENESS = 19


class EarlyChecks:
    """A pool of sandbox-driving processes and the checks started in it, by (task id, completion)."""

    def __init__(self, workers: int, timeout: float, limits: Limits = Limits()) -> None:
        """`limits` as this process sees them (a worker does not inherit its unsafe-no-sandbox flag)."""
        self.timeout, self.limits = timeout, effective_limits(limits)
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None  # started with the first check
        # Identical completions of a task are separate samples with the same verdict: a list each.
        self._started: dict[tuple[str, str], list[Future[ExecResult]]] = {}
        self.submitted = 0

    def __enter__(self) -> "EarlyChecks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, task_id: str, completion: str, check: Check) -> None:
        """Starts the check of one sample (`check`: its program and its task's test), kept for take()."""
        self._started.setdefault((task_id, completion), []).append(self.start(check))
        self.submitted += 1

    def start(self, check: Check) -> Future[ExecResult]:
        """Starts a check in the pool, kept by nobody but the caller."""
        if self._pool is None:
            # Spawned, not forked: the job's process has the engine's threads running.
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=os.nice, initargs=(NICENESS,))
        return self._pool.submit(check_program, check, self.timeout, self.limits)

    def take(self, task_id: str, completion: str) -> Future[ExecResult] | None:
        """A started check of this sample, handed out once (None: none is left)."""
        futures = self._started.get((task_id, completion))
        return futures.pop() if futures else None

    def close(self) -> None:
        """Drops the checks not yet started (an interrupted job); those running end by their timeout."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
