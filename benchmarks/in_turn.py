"""Engines stepped in turn in one process, each timed on its own steps, so that all of them see the
same moments of a shared machine (replay_interleaved.py, job_interleaved.py)."""
from __future__ import annotations

import time
from typing import Protocol, Sequence


class TimedSteps:
    """An engine and the time of its own steps: wall clock, and the process's CPU time."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.wall = self.cpu = 0.0

    @property
    def done(self) -> bool:
        return not self.engine.has_unfinished()

    def step(self) -> list:
        """One engine step, timed; the requests it finished."""
        t0, c0 = time.perf_counter(), time.process_time()
        finished = self.engine.step(collect="finished")
        self.wall += time.perf_counter() - t0
        self.cpu += time.process_time() - c0
        return finished


class Steppable(Protocol):
    done: bool

    def step(self) -> object: ...


def step_in_turn(runners: Sequence[Steppable]) -> None:
    """Steps each runner once per round until all are done, the order swapped every round (so that
    none always runs on the caches another just filled); one left alone goes on by itself."""
    turn = 0
    while not all(r.done for r in runners):
        for r in (runners if turn % 2 == 0 else runners[::-1]):
            if not r.done:
                r.step()
        turn += 1
