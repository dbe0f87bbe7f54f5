"""The sandbox's setups forked from one waiting interpreter instead of each started afresh.

A check's setup (sandbox_setup.py) used to be a new `python -I -S` process: an interpreter's start,
the setup's imports (ctypes) and the program's own `from typing import ...` (most HumanEval prompts)
were most of a check's cost (benchmarks/results/sandbox_setup_forks_ab_20261206.md). Here one
interpreter per evaluator process (started as the setup was: `-I -S`, a clean environment, its own
session) imports all that once and then forks a child per check, which runs sandbox_setup.main
exactly as a fresh setup would: its stdin (the program), stderr and the reply and request pipes
arrive over a Unix socket (SCM_RIGHTS); it starts a session of its own. The interpreter holds
nothing of any check (programs and pipes go to the children only), and nothing secret: a check's
program can read what it preloaded, as it could the setup's.

The evaluator's end (`SetupForks`, `ForkedSetup`) keeps Popen's surface for sandbox.py: the pid
(a process group of its own to kill), stdin and stderr, poll() and wait(), the exit status. A child
is reaped only when the evaluator asks (its pid cannot be reused before), through a pidfd that
says when it exited. The forking interpreter exits when the evaluator's end of the socket closes;
its children die with it (the setup's parent-death signal, and the check's PID 1's with the
setup). Where it died it is started again; where it cannot run (no pidfd), checks start their
setup afresh (`spawn_setup`).
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
# What checks import that a fresh interpreter would import for each: the setup's own modules, and
# what HumanEval's prompts import (typing pulls re, collections, functools, contextlib, enum).
PRELOAD = ("sandbox_setup", "typing", "math", "itertools", "string", "heapq", "bisect")
_SERVE = ("import sys; sys.path.insert(0, %r); import setup_forks; del sys.path[0]; "
          "setup_forks.serve(%d)")
_MAX_MESSAGE = 1 << 16
_FDS = 4  # the program's stdin, stderr, the reply pipe, the request pipe


# ---------------------------------------------------------------------- the forking interpreter

def serve(fd: int) -> None:
    """The forking interpreter's loop: one request, one answer, until the evaluator goes."""
    sys.path.insert(0, HERE)  # the setup and its siblings, as a fresh setup imports them
    try:
        for name in PRELOAD:
            __import__(name)
    finally:
        del sys.path[0]
    sys.modules["sandbox_setup"].warm()
    sock = socket.socket(fileno=fd)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, _FDS)
        except OSError:
            return
        if not data:
            return  # the evaluator closed its end
        request = json.loads(data)
        op = request["op"]
        if op == "spawn":
            answer = {"pid": _spawn(sock, request["argv"], fds)}
        elif op == "reap":
            answer = {"code": _reap(request["pid"])}
        else:
            answer = {"error": f"unknown op {op!r}"}
        sock.send(json.dumps(answer).encode())


def _spawn(sock: socket.socket, argv: list[str], fds: list[int]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _setup(sock, argv, fds, parent)
        except BaseException:  # noqa: BLE001 - as an uncaught exception of `python -c` would end
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return pid


def _setup(sock: socket.socket, argv: list[str], fds: list[int], parent: int) -> int:
    """In the child: what Popen gave a fresh setup (its session, stdin, stdout, stderr, the two
    pipes and nothing else, the root as its directory), then the setup itself. A child whose
    forking interpreter is already gone ends at once: its evaluator was told nothing of it."""
    import sandbox_setup

    sandbox_setup.die_with_parent()
    if os.getppid() != parent:
        return 1
    stdin, stderr, reply, request = fds
    sock.close()
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(stdin, 0)
    os.dup2(null, 1)
    os.dup2(stderr, 2)
    for fd in (null, stdin, stderr):
        os.close(fd)
    os.chdir("/")
    argv = [a for a in argv if not a.startswith(("reply_fd=", "request_fd="))]
    return sandbox_setup.main([*argv, f"reply_fd={reply}", f"request_fd={request}"])


def _reap(pid: int) -> int | None:
    """The child's exit status once it ended (Popen's: -N for signal N); None if it is no child."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


# ---------------------------------------------------------------------- the evaluator's end

class SetupForks:
    """The evaluator's forking interpreter, started on first use (and again after it died)."""

    def __init__(self, env: dict[str, str], marker: str) -> None:
        self._env, self._marker = env, marker
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self.broken = False  # a fresh start did not answer: setups start afresh from now on

    @property
    def pid(self) -> int | None:
        """The forking interpreter's pid (None: not running): no check's process."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def spawn(self, argv: list[str], fds: list[int]) -> int:
        """Forks a setup with these arguments and descriptors (stdin, stderr, reply, request); its pid."""
        return self._ask({"op": "spawn", "argv": argv}, fds, restart=True)["pid"]

    def reap(self, pid: int) -> int | None:
        """Waits for the setup `pid` (which has ended, or was killed) and returns its exit status."""
        return self._ask({"op": "reap", "pid": pid}, [], restart=False).get("code")

    def _ask(self, request: dict, fds: list[int], restart: bool) -> dict:
        with self._lock:
            fresh = self._proc is None or self._proc.poll() is not None
            if fresh:
                if not restart:
                    return {}  # it died, and its children with it: nothing left to reap
                self._start()
            try:
                socket.send_fds(self._sock, [json.dumps(request).encode()], fds)
                data = self._sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                self._stop()
                self.broken = self.broken or fresh
                raise OSError("the sandbox's forking interpreter ended")
            return json.loads(data)

    def _start(self) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SERVE % (HERE, theirs.fileno()), self._marker],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True, env=self._env, cwd="/")
        finally:
            theirs.close()
        self._sock = ours

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # it exits when it reads the end
            self._sock = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


@contextlib.contextmanager
def handed_over(keep: Sequence[int], give: Sequence[int]) -> Iterator[None]:
    """Pipe ends handed to a child started in the block: `give` (the child's) are closed here
    whatever happens, `keep` (ours) only where starting it failed."""
    try:
        yield
    except BaseException:
        for fd in keep:
            os.close(fd)
        raise
    finally:
        for fd in give:
            os.close(fd)


class ForkedSetup:
    """A forked setup behind Popen's surface, as sandbox.py uses it."""

    def __init__(self, forks: SetupForks, argv: list[str], pass_fds: tuple[int, int]) -> None:
        stdin_r, stdin_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        with handed_over(keep=(stdin_w, stderr_r), give=(stdin_r, stderr_w)):
            self.pid = forks.spawn(argv, [stdin_r, stderr_w, *pass_fds])
            try:
                self._pidfd = os.pidfd_open(self.pid)  # not reaped until _reap() below: no other process's
            except OSError:  # out of descriptors: the setup must not go on unseen, with the pipes
                os.killpg(self.pid, signal.SIGKILL)
                forks.reap(self.pid)
                raise
        self._forks = forks
        self.stdin = open(stdin_w, "wb")
        self.stderr = open(stderr_r, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self._reap()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("sandbox setup", timeout)
            self._reap()
        return self.returncode

    def _reap(self) -> None:
        code = self._forks.reap(self.pid)
        self.returncode = code if code is not None else -9  # its forking interpreter died, and it with it
        os.close(self._pidfd)


_forks: SetupForks | None = None
_forks_lock = threading.Lock()


def _forget() -> None:
    """In a forked child of the evaluator: the forking interpreter and its socket are the parent's."""
    global _forks
    if _forks is not None and _forks._sock is not None:
        _forks._sock.close()
    _forks = None


os.register_at_fork(after_in_child=_forget)


def _forks_here() -> bool:
    """Whether this machine has what forked setups need: pidfds (Linux 5.3) and descriptor passing."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return hasattr(socket, "send_fds")


def spawn_setup(argv: list[str], pass_fds: tuple[int, int], env: dict[str, str],
                marker: str) -> ForkedSetup | subprocess.Popen:
    """A started setup with `argv` (sandbox_setup's KEY=VALUE arguments) and the reply and request
    pipes: forked from this process's waiting interpreter, or started afresh where it cannot be."""
    global _forks
    with _forks_lock:
        if _forks is None and _forks_here():
            _forks = SetupForks(env, marker)
    if _forks is not None and not _forks.broken:
        try:
            return ForkedSetup(_forks, argv, pass_fds)
        except OSError:
            pass  # the forking interpreter could not start or answer: a fresh setup
    # Imported from this directory (its cached bytecode: a script is compiled afresh at every start).
    code = "import sys; sys.path.insert(0, %r); import sandbox_setup; del sys.path[0]; " \
           "sys.exit(sandbox_setup.main(sys.argv[1:]))" % HERE
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", code, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds,
                            start_new_session=True, env=env, cwd="/")


def forking_pid() -> int | None:
    """This process's forking interpreter's pid, if it runs (tests tell it from checks' processes)."""
    return _forks.pid if _forks is not None else None
