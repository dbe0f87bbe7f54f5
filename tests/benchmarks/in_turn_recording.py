"""Which engine stepped, in order: for the tests of the benchmarks whose engines step in turn."""
from __future__ import annotations

from typing import Callable


def record_steps(monkeypatch, cls: type, label: Callable[[object], str]) -> list[str]:
    """Patches cls.step to note label(self) before each step; the list it fills."""
    steps: list[str] = []
    step = cls.step

    def recording(self):
        steps.append(label(self))
        step(self)

    monkeypatch.setattr(cls, "step", recording)
    return steps
