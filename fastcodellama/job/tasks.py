"""The problems a job runs and the requests still missing from its samples file."""
from __future__ import annotations

from fastcodellama.evaluation.problems import default_problems_path, read_jsonl
from fastcodellama.job.types import JobParams, PendingTask


def load_tasks(path: str | None, limit: int | None) -> list[dict]:
    tasks = []
    for row in read_jsonl(path or default_problems_path()):
        if "task_id" not in row or "prompt" not in row:
            raise ValueError(f"every problem needs task_id and prompt; got keys {sorted(row)}")
        tasks.append(row)
    return tasks[:limit] if limit else tasks


def task_seed(seed: int, task_index: int, done: int) -> int:
    return (seed * 1_000_003 + task_index) * 1_009 + done


def pending_tasks(tasks: list[dict], job: JobParams, done: dict[str, int]) -> list[PendingTask]:
    """The requests still to run, in task order; seeds depend only on the task's index and what is done."""
    pending = []
    for i, task in enumerate(tasks):
        have = done.get(task["task_id"], 0)
        if job.passk - have > 0:
            params = job.params(job.passk - have, task_seed(job.seed, i, have))
            pending.append(PendingTask(f"{task['task_id']}#{have}", task["task_id"], task["prompt"], params))
    return pending
