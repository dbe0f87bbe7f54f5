"""How many CPU threads the engine's OpenMP runtime starts, and how its idle threads wait: set
once, before torch loads.

Torch's kernels, MKL's and the engine's C kernels share one OpenMP runtime (the libgomp that torch
loads; the C kernels link the same soname), whose threads meet at a barrier after every parallel
loop. libgomp's default lets a thread that reaches a barrier early spin for a few milliseconds.
On an idle machine that costs nothing; when another busy process shares a core with one of the
threads, every barrier waits until the kernel schedules that thread again while the spinning
threads keep their own cores busy. Threads that sleep at once (OMP_WAIT_POLICY=PASSIVE) give their
core back, and the scheduler moves the late thread onto it (benchmarks/busy_neighbour.py). Sleeping
costs a wake-up per parallel loop, which a machine that runs nothing else can notice: there,
OMP_WAIT_POLICY=ACTIVE or GOMP_SPINCOUNT=300000 (libgomp's own default) brings spinning back.

The thread count stays libgomp's (one per CPU the process may run on) except where a cgroup CPU
quota (a container's --cpus) allows fewer: more threads than the quota are throttled in turn,
which stalls every barrier the same way.

libgomp reads both once, when it loads with torch, so `configure_openmp()` runs from
engine/__init__ before anything imports torch, and never overrides what the user set.
"""
from __future__ import annotations

import math
import os
import sys

WAIT_POLICY = "PASSIVE"
_WAIT_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def configure_openmp() -> dict[str, str]:
    """Sets the wait policy (and, under a CPU quota, the thread count) for this process and its
    children, unless the user set them or OpenMP already runs; returns what it set."""
    if "torch" in sys.modules:
        return {}
    chosen = {}
    if not any(name in os.environ for name in _WAIT_KNOBS):
        chosen["OMP_WAIT_POLICY"] = WAIT_POLICY
    quota = cpu_quota()
    if "OMP_NUM_THREADS" not in os.environ and quota is not None and quota < affinity_cpus():
        chosen["OMP_NUM_THREADS"] = str(quota)
    os.environ.update(chosen)
    return chosen


def affinity_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs a cgroup quota allows (rounded up), None where there is no quota."""
    v1_period = f"{root}/cpu/cpu.cfs_period_us"
    for path, parse in ((f"{root}/cpu.max", _v2_quota),
                        (f"{root}/cpu/cpu.cfs_quota_us", lambda text: _v1_quota(text, v1_period))):
        try:
            with open(path) as f:
                cpus = parse(f.read())
        except (OSError, ValueError):
            continue
        return None if cpus is None else max(1, math.ceil(cpus))
    return None


def _v2_quota(text: str) -> float | None:
    quota, period = text.split()[:2]  # "max 100000" or "150000 100000"
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(text: str, period_path: str) -> float | None:
    quota = int(text)
    if quota <= 0:  # -1: no quota
        return None
    with open(period_path) as f:
        return quota / int(f.read())
