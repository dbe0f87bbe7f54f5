"""The pass@k job in this process: every task's missing samples through one engine."""
from __future__ import annotations

import time

from tqdm.auto import tqdm

from fastcodellama.job.samples_file import SamplesFile, done_counts
from fastcodellama.job.tasks import pending_tasks
from fastcodellama.job.types import JobParams, JobStats


def generate_samples(llm, tasks: list[dict], params_for: JobParams, output: str, progress: bool = True) -> JobStats:
    """Runs every task's missing samples through one engine; appends each task's samples when it finishes."""
    engine, stats = llm.engine, JobStats()
    pending = {p.request_id: p for p in pending_tasks(tasks, params_for, done_counts(output))}
    for p in pending.values():
        engine.add_request(p.request_id, p.prompt, p.params)
    start = time.perf_counter()
    with SamplesFile(output, stats) as f, \
            tqdm(total=len(pending), desc="tasks", unit="task", disable=not progress) as bar:
        while engine.has_unfinished():
            for out in engine.step(collect="finished"):
                f.write(pending.pop(out.request_id).task_id, out.outputs)
                bar.update(1)
    stats.wall = time.perf_counter() - start
    return stats
