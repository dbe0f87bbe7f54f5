"""One control group per check, so that memory and processes are bounded for the check as a whole.

Per-process rlimits leave holes: every process of a check gets the full address space, and memfd
or tmpfs pages are counted in no address space at all. A cgroup's memory limit counts all pages of
all its processes (anonymous, page cache, shmem, kernel), and its pids limit all their tasks.

cgroup v2 where the evaluator's own group can hand out the memory and pids controllers (its
subtree_control has them, or it can enable them: the root group, or a delegated group without
processes of its own); otherwise the v1 memory and pids hierarchies, as a hybrid host mounts them;
otherwise none, and the caller falls back to per-process limits (`create` says why). The new group
sits under the evaluator's own group in each hierarchy, so it stays inside the evaluator's limits.

The evaluator creates the group and removes it; the check's setup program joins it (writes its pid
to each `procs` file) before it starts anything.
"""
from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass

_REMOVE_WAIT_S = 1.0  # how long `remove` waits for the group's last processes to be gone
# Settings written only where the kernel has them: swap limits exist where swap is accounted, and
# memory.oom.group (kill the whole group when it runs out of memory) since Linux 4.19.
_OPTIONAL = ("memory.swap", "memory.memsw", "memory.oom.group")


@dataclass(frozen=True)
class Group:
    version: int  # 1 or 2
    dirs: tuple[str, ...]  # v2: the group; v1: its memory and pids groups

    @property
    def label(self) -> str:
        return f"cgroup(v{self.version})"

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(os.path.join(d, "cgroup.procs") for d in self.dirs)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            try:
                with open(path) as f:
                    found.update(int(line) for line in f if line.strip())
            except OSError:
                pass
        return found

    def kill(self) -> None:
        """SIGKILLs every process in the group, also those forked while it runs."""
        kill_file = os.path.join(self.dirs[0], "cgroup.kill")
        if self.version == 2 and os.path.exists(kill_file):
            _write(kill_file, "1")
            return
        for _ in range(100):  # v1: a process may fork between the read and the kill; pids.max bounds that
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self) -> None:
        """Kills what is left and removes the group (waiting a little for dying processes)."""
        self.kill()
        deadline = time.monotonic() + _REMOVE_WAIT_S
        for directory in self.dirs:
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # left for the next check of the same name to clear
                    self.kill()
                    time.sleep(0.01)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _own_groups() -> dict[str, str]:
    """This process's group per hierarchy: "" for v2, else the v1 controller list (e.g. "memory")."""
    groups = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                groups[controller] = path
    return groups


def _mounts() -> dict[str, str]:
    """Mount point per hierarchy, keyed as in `_own_groups` (v1 by each of its controllers)."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            mount_point, fstype, options = fields[4], fields[separator + 1], fields[separator + 3]
            if fstype == "cgroup2":
                found.setdefault("", mount_point)
            elif fstype == "cgroup":
                for option in options.split(","):
                    found.setdefault(option, mount_point)
    return found


@functools.cache
def _locations() -> tuple[str | None, str | None, str | None, str]:
    """(v2 parent directory, v1 memory parent, v1 pids parent, why no usable v2/v1 if so)."""
    try:
        groups, mounts = _own_groups(), _mounts()
    except (OSError, ValueError) as e:
        return None, None, None, f"cannot read this process's cgroups: {e}"
    v2 = memory = pids = None
    reasons = []
    if "" in groups and "" in mounts:
        directory = os.path.join(mounts[""], groups[""].lstrip("/"))
        if _v2_delegates(directory):
            v2 = directory
        else:
            reasons.append(f"cgroup v2 group {directory} cannot hand out the memory and pids controllers")
    for name in ("memory", "pids"):
        if name in groups and name in mounts:
            directory = os.path.join(mounts[name], groups[name].lstrip("/"))
            if os.access(directory, os.W_OK):
                memory, pids = (directory, pids) if name == "memory" else (memory, directory)
                continue
        reasons.append(f"no writable cgroup v1 {name} hierarchy")
    return v2, memory, pids, "; ".join(reasons)


def _v2_delegates(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "cgroup.controllers")) as f:
            if not {"memory", "pids"} <= set(f.read().split()):
                return False
        control = os.path.join(directory, "cgroup.subtree_control")
        with open(control) as f:
            if {"memory", "pids"} <= set(f.read().split()):
                return os.access(directory, os.W_OK)
        _write(control, "+memory +pids")  # refused (EBUSY) where the group has processes of its own
        return True
    except OSError:
        return False


def create(name: str, memory_bytes: int, max_tasks: int) -> tuple[Group | None, str]:
    """A new group `name` limited to `memory_bytes` (no swap) and `max_tasks`, or (None, why not)."""
    v2, memory, pids, reason = _locations()
    if v2 is not None:
        settings = {"memory.max": str(memory_bytes), "memory.swap.max": "0", "memory.oom.group": "1",
                    "pids.max": str(max_tasks)}
        return _make(Group(2, (os.path.join(v2, name),)), [settings])
    if memory is not None and pids is not None:
        memory_settings = {"memory.limit_in_bytes": str(memory_bytes), "memory.memsw.limit_in_bytes": str(memory_bytes)}
        group = Group(1, (os.path.join(memory, name), os.path.join(pids, name)))
        return _make(group, [memory_settings, {"pids.max": str(max_tasks)}])
    return None, reason or "no cgroup hierarchy"


def _make(group: Group, settings: list[dict[str, str]]) -> tuple[Group | None, str]:
    try:
        for directory in group.dirs:
            try:
                os.mkdir(directory, 0o755)
            except FileExistsError:  # left by a crashed evaluator: clear it
                Group(group.version, (directory,)).remove()
                os.mkdir(directory, 0o755)
        for directory, values in zip(group.dirs, settings):
            for file, value in values.items():
                path = os.path.join(directory, file)
                if os.path.exists(path) or not file.startswith(_OPTIONAL):
                    _write(path, value)
    except OSError as e:
        group.remove()
        return None, f"cannot set up cgroup {group.dirs[0]}: {e}"
    return group, ""
