"""The problems a job runs and the requests still missing from its samples file."""
from __future__ import annotations

from fastcodellama.evaluation.problems import default_problems_path, read_jsonl
from fastcodellama.job.types import JobParams, PendingTask


def load_tasks(path: str | None, limit: int | None) -> list[dict]:
    """The problems of `path` (default: HumanEval), the first `limit` of them if given."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    path = path or default_problems_path()
    tasks = []
    for number, row in enumerate(read_jsonl(path), 1):
        if not (isinstance(row, dict) and isinstance(row.get("task_id"), str) and isinstance(row.get("prompt"), str)):
            raise ValueError(f"{path}: problem {number} needs string fields task_id and prompt")
        tasks.append(row)
    if not tasks:
        raise ValueError(f"{path} holds no problems")
    return tasks if limit is None else tasks[:limit]


def samples_done(tasks: list[dict], job: JobParams, done: dict[str, int]) -> int:
    """Samples of `tasks` already in the file (at most passk per task count)."""
    return sum(min(done.get(t["task_id"], 0), job.passk) for t in tasks)


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
