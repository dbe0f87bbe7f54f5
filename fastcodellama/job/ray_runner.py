"""The pass@k job on Ray: one engine replica per GPU (or per CPU share) as a Ray actor.

The driver (the process that runs the job) owns the samples file. It hands out whole tasks (all
missing samples of one problem in one request, so that they draft from each other) to replicas a
few at a time; a replica adds them to its engine and steps until some of its tasks finish, then
returns them, and the driver appends them with the single-process job's `SamplesFile`. A task is
written only when its result reaches the driver, so a replica that dies (crash, node loss,
`ray.kill`) loses nothing: its unfinished tasks go back to the queue for the replicas still alive,
and no task is written twice. Resume after a driver crash is the single-process job's resume.

Ray is an optional extra (`pip install .[ray]`), imported only when a job uses it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from fastcodellama.job.run_record import RunRecord, start_run
from fastcodellama.job.samples_file import SamplesFile, done_counts
from fastcodellama.job.tasks import pending_tasks, samples_done
from fastcodellama.job.types import JobParams, JobStats, PendingTask, ReplicaSpec
from fastcodellama.ray_cluster import RayConfig, connect

if TYPE_CHECKING:
    from engine.outputs import CompletionOutput

@dataclass(frozen=True)
class ReplicaFailure:
    replica: int
    tasks_done: int  # tasks it had returned before it died
    tasks_retried: int  # its unfinished tasks, put back in the queue
    error: str


@dataclass
class ClusterReport:
    """What happened across the replicas; `rows()` extends the job's report."""

    replicas: int
    tasks_by_replica: dict[int, int] = field(default_factory=dict)
    failures: list[ReplicaFailure] = field(default_factory=list)
    restarts: int = 0
    startup_s: float = 0.0

    def rows(self) -> list[tuple[str, object]]:
        rows: list[tuple[str, object]] = [
            ("ray replicas", self.replicas),
            ("replica start-up (s)", f"{self.startup_s:.1f}"),
            ("tasks per replica", ", ".join(f"{r}: {n}" for r, n in sorted(self.tasks_by_replica.items()))),
            ("replica failures", len(self.failures)),
            ("tasks retried", sum(f.tasks_retried for f in self.failures))]
        rows += [(f"replica {f.replica} died", f"after {f.tasks_done} tasks, {f.tasks_retried} retried ({f.error})")
                 for f in self.failures]
        if self.restarts:
            rows.append(("replicas restarted", self.restarts))
        return rows


class EngineReplica:
    """The body of one replica actor: an engine that takes tasks and gives back finished ones."""

    def __init__(self, spec: ReplicaSpec) -> None:
        from engine import LLM  # in the actor's process only: the driver need not load torch's engine
        from fastcodellama.drafting import build_proposer

        proposer = build_proposer(spec.spec) if spec.spec is not None else None
        self.engine = LLM(spec.engine, proposer=proposer).engine

    def advance(self, new: list[PendingTask]) -> list[tuple[str, list["CompletionOutput"]]]:
        """Adds `new`, then steps until a task finishes (or none is left); returns the finished ones."""
        for task in new:
            self.engine.add_request(task.request_id, task.prompt, task.params)
        while self.engine.has_unfinished():
            finished = self.engine.step(collect="finished")
            if finished:
                return [(out.request_id, out.outputs) for out in finished]
        return []

    def ready(self) -> bool:
        return True


class ReplicaPool:
    """The replicas of one job and the tasks each holds; deals out the queue and takes back the work
    of replicas that died."""

    def __init__(self, ray, replica: ReplicaSpec, config: RayConfig, queue: list[PendingTask]) -> None:
        self.ray, self.replica, self.config = ray, replica, config
        self.queue = deque(queue)
        self.attempts: dict[str, int] = {}
        gpus = config.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) and not replica.engine.device.startswith("cpu") else 0.0
        self.actor_class = ray.remote(EngineReplica).options(
            num_cpus=config.cpus_per_replica, num_gpus=gpus, max_restarts=0, max_task_retries=0)
        count = config.replicas or max(1, int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else 1)
        _check_fits(ray.cluster_resources(), count, config.cpus_per_replica, gpus)
        self.handles: list = []
        self.held: list[dict[str, PendingTask]] = []  # per replica: request id -> task
        self.calls: dict = {}  # object ref of a running advance() -> replica index
        self.report = ClusterReport(replicas=count)
        for _ in range(count):
            self._start_replica()
        cap = max(1, replica.engine.max_num_seqs // max(1, queue[0].params.n))
        self.window = config.tasks_in_flight or max(1, min(cap, math.ceil(len(queue) / (2 * count))))

    def _start_replica(self) -> None:
        spec = self.replica
        if spec.engine.num_threads is None:  # a replica's threads match the CPUs it reserved
            threads = max(1, int(self.config.cpus_per_replica))
            spec = ReplicaSpec(dataclasses.replace(spec.engine, num_threads=threads), spec.spec)
        self.handles.append(self.actor_class.remote(spec))
        self.held.append({})

    def wait_ready(self) -> float:
        """Blocks until every replica has loaded its model (a replica that fails to start counts as
        died); returns the seconds it took."""
        start = time.perf_counter()
        for index, handle in enumerate(self.handles):
            try:
                self.ray.get(handle.ready.remote())
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError) as e:
                self._lose_replica(index, e)
        self.report.startup_s = time.perf_counter() - start
        return self.report.startup_s

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.calls or any(self.held))

    def dispatch(self) -> None:
        """Gives every live replica without a running call its next call, topped up from the queue."""
        running = set(self.calls.values())
        for index, handle in enumerate(self.handles):
            if handle is None or index in running:
                continue
            new = []
            while self.queue and len(self.held[index]) < self.window:
                task = self.queue.popleft()
                self.held[index][task.request_id] = task
                new.append(task)
            if self.held[index]:
                self.calls[handle.advance.remote(new)] = index

    def collect(self) -> list[tuple[PendingTask, list["CompletionOutput"]]]:
        """Waits for one replica's call; returns its finished tasks (none if the replica died)."""
        ready, _ = self.ray.wait(list(self.calls), num_returns=1)
        index = self.calls.pop(ready[0])
        try:
            finished = self.ray.get(ready[0])
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError) as e:
            self._lose_replica(index, e)
            return []
        self.report.tasks_by_replica[index] = self.report.tasks_by_replica.get(index, 0) + len(finished)
        return [(self.held[index].pop(request_id), outputs) for request_id, outputs in finished]

    def _lose_replica(self, index: int, error: Exception) -> None:
        self.ray.kill(self.handles[index])
        self.handles[index] = None
        lost = list(self.held[index].values())  # in queue order
        self.held[index] = {}
        for task in reversed(lost):
            self.attempts[task.request_id] = self.attempts.get(task.request_id, 0) + 1
            if self.attempts[task.request_id] >= self.config.max_task_attempts:
                raise RuntimeError(f"task {task.task_id} was lost with {self.attempts[task.request_id]} replicas; "
                                   "giving up")
            self.queue.appendleft(task)
        self.report.failures.append(ReplicaFailure(index, self.report.tasks_by_replica.get(index, 0), len(lost),
                                                   type(error).__name__))
        if all(h is None for h in self.handles) and self.queue:
            if self.report.restarts >= self.config.max_restarts:
                raise RuntimeError(f"every replica died and {self.config.max_restarts} restarts are used up")
            self.report.restarts += 1
            self._start_replica()

    def shutdown(self) -> None:
        for handle in self.handles:
            if handle is not None:
                self.ray.kill(handle)


def _check_fits(cluster: dict, replicas: int, cpus: float, gpus: float) -> None:
    """Replicas that the cluster cannot hold would wait for resources for ever. (An autoscaling
    cluster, which would add nodes on demand, has to be scaled up before the job.)"""
    for name, each in (("CPU", cpus), ("GPU", gpus)):
        if replicas * each > cluster.get(name, 0) + 1e-9:
            raise ValueError(f"{replicas} replicas need {replicas * each:g} {name}s; the Ray cluster has "
                             f"{cluster.get(name, 0):g}")


def generate_samples_on_ray(tasks: list[dict], params_for: JobParams, output: str, replica: ReplicaSpec,
                            config: RayConfig = RayConfig(), progress: bool = True,
                            on_result: Callable[[ReplicaPool], None] | None = None) -> tuple[JobStats, ClusterReport]:
    """`fastcodellama.job.runner.generate_samples` spread over Ray replicas: the same samples file, resume and stats.

    `on_result(pool)` runs after each task is written (tests use it to kill a replica mid-job)."""
    stats = JobStats()
    done = done_counts(output)
    stats.resumed = samples_done(tasks, params_for, done)
    start_run(output, RunRecord.of(params_for, replica.engine.model, replica.spec is not None), sum(done.values()))
    pending = pending_tasks(tasks, params_for, done)
    if not pending:
        return stats, ClusterReport(replicas=0)
    pool = ReplicaPool(connect(config.address, config.local_cpus), replica, config, pending)
    try:
        pool.wait_ready()  # like the single-process job, the wall time leaves out loading the model
        start = time.perf_counter()
        # Replicas hand back whole tasks: the bar counts finished samples, with tokens/s beside.
        with SamplesFile(output, stats) as f, \
                tqdm(total=sum(p.params.n for p in pending), desc="generating", unit="sample",
                     disable=not progress, dynamic_ncols=True) as bar:
            while pool.busy:
                pool.dispatch()
                for task, completions in pool.collect():
                    f.write(task.task_id, completions)
                    bar.set_postfix_str(f"{stats.tokens / max(1e-9, time.perf_counter() - start):.1f} tokens/s",
                                        refresh=False)
                    bar.update(len(completions))
                    if on_result is not None:
                        on_result(pool)
    finally:
        pool.shutdown()
    stats.wall = time.perf_counter() - start
    return stats, pool.report
