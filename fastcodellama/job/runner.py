"""The pass@k job in this process: every task's missing samples through one engine."""
from __future__ import annotations

import time
from collections.abc import Callable

from fastcodellama.job.run_record import RunRecord, start_run
from fastcodellama.job.samples_file import SamplesFile, done_counts
from fastcodellama.job.tasks import pending_tasks, samples_done
from fastcodellama.job.types import JobParams, JobStats
from fastcodellama.progress import TokenProgress


def generate_samples(llm, tasks: list[dict], params_for: JobParams, output: str, progress: bool = True,
                     on_written: Callable[[str, list[str]], None] | None = None) -> JobStats:
    """Runs every task's missing samples through one engine; appends each task's samples when it
    finishes, then hands `on_written` the task id and the completions as written (the job starts
    their checks). Refuses (run_record.RunMismatch) a samples file made with other parameters."""
    engine, stats = llm.engine, JobStats()
    done = done_counts(output)
    stats.resumed = samples_done(tasks, params_for, done)
    start_run(output, RunRecord.of(params_for, llm.config.model, engine.proposer is not None), sum(done.values()))
    pending = {p.request_id: p for p in pending_tasks(tasks, params_for, done)}
    base = engine.stats().generated_tokens
    start = time.perf_counter()
    try:
        for p in pending.values():
            engine.add_request(p.request_id, p.prompt, p.params)
        samples = sum(p.params.n for p in pending.values())
        with SamplesFile(output, stats) as f, TokenProgress(samples, params_for.max_tokens, progress) as bar:
            while pending:
                snapshot = bar.due()  # the state of every running sample only when the bar refreshes
                for out in engine.step(collect="all" if snapshot else "finished"):
                    if out.request_id not in pending:  # another caller's request on a shared engine
                        continue
                    bar.observe(out.request_id, out.outputs)
                    if out.finished:
                        task_id = pending.pop(out.request_id).task_id
                        f.write(task_id, out.outputs)
                        if on_written is not None:
                            on_written(task_id, [c.text for c in out.outputs])
                if snapshot or not pending:
                    bar.refresh(engine.stats().generated_tokens - base)
    finally:
        for request_id in pending:  # interrupted: the engine must not keep running them
            engine.abort(request_id)
    stats.wall = time.perf_counter() - start
    return stats
