"""Sandboxed checks fanned out over the nodes of a Ray cluster: one checking actor per node.

One process per node, not one per check, so that a node runs at most `workers` checks at once (the
sandbox leases each check a uid of its own across processes, so several actors on one node would
also be safe, only less bounded). Results come back in the order of the programs, as from local threads.
"""
from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from fastcodellama.evaluation.sandbox import Check, ExecResult, Limits, check_program


class SandboxNode:
    """The body of one node's actor: up to `workers` checks at once."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def check(self, checks: list[Check | str], timeout: float, limits: Limits) -> list[ExecResult]:
        return list(self.pool.map(lambda check: check_program(check, timeout, limits), checks))


class RaySandboxes:
    """`evaluate.CheckAll` on Ray: chunks of checks go to the node actors, two chunks in flight per
    node; the chunks of a node that dies are run again on the others. A node that cannot isolate the
    checks raises sandbox.SandboxUnavailable (unless the limits allow unsafe runs)."""

    def __init__(self, address: str | None, workers_per_node: int = 4, local_cpus: int | None = None,
                 progress: bool = True) -> None:
        from fastcodellama.job.ray_runner import connect  # here, so that the node actors do not import torch

        self.ray = connect(address, local_cpus)
        self.workers, self.progress = max(1, workers_per_node), progress

    def _start_actors(self) -> dict[str, object]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = self.ray.remote(SandboxNode)
        nodes = [n["NodeID"] for n in self.ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        # num_cpus=0: the checks are subprocesses outside Ray's accounting, and evaluation must not
        # wait for CPUs that the job's engine replicas still hold.
        return {node: actor.options(num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(self.workers) for node in nodes}

    def __call__(self, programs: list[Check | str], timeout: float, limits: Limits) -> list[ExecResult]:
        actors = self._start_actors()
        if not actors:
            raise RuntimeError("no live Ray node with CPUs to run the checks on")
        chunk = max(1, min(2 * self.workers, math.ceil(len(programs) / (2 * len(actors)))))
        queue = deque(range(0, len(programs), chunk))
        results: list[ExecResult | None] = [None] * len(programs)
        free, calls = list(actors) * 2, {}
        try:
            with tqdm(total=len(programs), desc="running tests", unit="sample", disable=not self.progress) as bar:
                while queue or calls:
                    while queue and free:
                        node, start = free.pop(), queue.popleft()
                        ref = actors[node].check.remote(programs[start:start + chunk], timeout, limits)
                        calls[ref] = (node, start)
                    ready, _ = self.ray.wait(list(calls), num_returns=1)
                    node, start = calls.pop(ready[0])
                    try:
                        done = self.ray.get(ready[0])
                    except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError):
                        queue.appendleft(start)
                        actors.pop(node, None)
                        free = [n for n in free if n != node]
                        if not actors:
                            raise RuntimeError("every node running sandboxed checks died") from None
                        continue
                    results[start:start + len(done)] = done
                    free.append(node)
                    bar.update(len(done))
        finally:
            for handle in actors.values():
                self.ray.kill(handle)
        return results  # type: ignore[return-value]
