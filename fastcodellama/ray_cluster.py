"""Where a Ray job runs: the cluster options (RayConfig) and the connection to the cluster.

Nothing here imports Ray at module level, so the options exist whether or not the `ray` extra
is installed.
"""
from __future__ import annotations

from dataclasses import dataclass

LOCAL = "local"  # --ray without an address: start a local Ray in this process


@dataclass(frozen=True)
class RayConfig:
    """Where the job runs and how it is split.

    address: None starts a local Ray (or joins the one this process already started); otherwise
        what `ray.init(address=...)` takes: "auto", "HOST:6379", "ray://HOST:10001" (Ray Client,
        which needs `pip install 'ray[client]'`).
    replicas: engine replicas; None: one per GPU of the cluster, or 1 where it has none.
    gpus_per_replica: None: 1 if the cluster has GPUs and the engine's device is not the CPU, else 0.
    cpus_per_replica: CPUs each replica reserves; also its torch threads unless ReplicaSpec.threads sets them.
    tasks_in_flight: tasks a replica holds at once; None: enough to fill its batch (max_num_seqs
        samples), at most half a fair share, so that replicas that finish early can take more.
    max_task_attempts: a task whose replica died this many times fails the job (a task that
        kills every replica it reaches would otherwise go round for ever).
    max_restarts: fresh replicas started when every replica has died and work is left.
    local_cpus: num_cpus of a local Ray that this job starts (None: all of the machine's).
    """

    address: str | None = None
    replicas: int | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float = 1.0
    tasks_in_flight: int | None = None
    max_task_attempts: int = 3
    max_restarts: int = 2
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.cpus_per_replica < 0 or (self.gpus_per_replica or 0) < 0:
            raise ValueError("cpus_per_replica and gpus_per_replica must be >= 0")
        if self.tasks_in_flight is not None and self.tasks_in_flight < 1:
            raise ValueError(f"tasks_in_flight must be >= 1, got {self.tasks_in_flight}")
        if self.max_task_attempts < 1 or self.max_restarts < 0:
            raise ValueError("max_task_attempts must be >= 1 and max_restarts >= 0")


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("Ray is not installed: pip install 'fastcodellama[ray]'") from None
    return ray


def connect(address: str | None, local_cpus: int | None = None):
    """Joins the cluster at `address`, or starts a local Ray; keeps a connection this process already has."""
    ray = import_ray()
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray
