"""Setups forked from one waiting interpreter (fastcodellama/evaluation/setup_forks.py): checks run as
from a fresh setup, that interpreter comes back when it dies, an in-flight check it took down fails
instead of hanging, checks start afresh where it cannot run, and it ends with its evaluator."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fastcodellama.evaluation import sandbox, setup_forks
from fastcodellama.evaluation.sandbox import check_program, run_program
from tests.fastcodellama.evaluation.helpers import marked_processes

pytestmark = pytest.mark.skipif(not setup_forks._forks_here(), reason="no pidfds or descriptor passing here")


def _available() -> None:
    try:
        sandbox.preflight()
    except sandbox.SandboxUnavailable as e:
        pytest.skip(str(e))


def test_checks_are_forked_from_one_preloaded_interpreter():
    _available()
    first = run_program("import sys\n__output__ = str('typing' in sys.modules)", 10.0)
    forking = setup_forks.forking_pid()
    second = run_program("from typing import List\n__output__ = 'ok'", 10.0)
    assert (first.status, first.output, second.output) == ("passed", "True", "ok")
    assert forking is not None and setup_forks.forking_pid() == forking


def test_a_forking_interpreter_that_died_comes_back_and_takes_its_checks_down_with_it():
    """Killed between checks, it is started again for the next; killed during one, that check's
    setup dies with it, and its PID 1 and the namespace with that: the check fails at once."""
    _available()
    assert check_program("x = 1", 10.0).passed
    os.kill(setup_forks.forking_pid(), signal.SIGKILL)
    time.sleep(0.2)
    assert check_program("x = 1", 10.0).passed  # started again
    forking = setup_forks.forking_pid()
    killer = threading.Timer(0.5, os.kill, (forking, signal.SIGKILL))
    killer.start()
    result = run_program("import time\ntime.sleep(20)\n__output__ = 'done'", 30.0)
    killer.join()
    assert result.status == "failed", result  # it would have passed with 'done', the setup alive
    assert check_program("x = 1", 10.0).passed and setup_forks.forking_pid() not in (None, forking)


def test_an_evaluator_killed_during_a_check_leaves_nothing_of_it():
    """SIGKILL to the evaluator: its forking interpreter reads the end of its socket and ends, the
    setup dies with it, PID 1 with the setup, and every process of the check with PID 1 (before,
    PID 1 and the program outlived the setup until the program ended)."""
    _available()
    script = textwrap.dedent("""
        import os
        from fastcodellama.evaluation.sandbox import check_program
        print(os.getpid(), flush=True)
        check_program("import time\\ntime.sleep(60)", 120.0)
    """)
    evaluator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    marker = f"fcl-sandbox-of-{evaluator.stdout.readline().strip()}".encode()
    deadline = time.monotonic() + 10
    while len(marked_processes(marker)) < 3 and time.monotonic() < deadline:  # forking, setup, PID 1, program
        time.sleep(0.05)
    assert len(marked_processes(marker)) >= 3
    evaluator.kill()
    evaluator.wait()
    deadline = time.monotonic() + 10
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_processes(marker) == []


def test_checks_start_afresh_where_setups_cannot_be_forked(monkeypatch):
    _available()
    monkeypatch.setattr(setup_forks, "_forks", None)
    monkeypatch.setattr(setup_forks, "_forks_here", lambda: False)
    out = run_program("import sys\n__output__ = str('typing' in sys.modules)", 10.0)
    assert (out.status, out.output) == ("passed", "False") and setup_forks.forking_pid() is None


def test_the_forking_interpreter_ends_with_its_evaluator(tmp_path):
    """An evaluator process that ran a check and exits leaves no process behind, its forking
    interpreter included (it reads the end of its socket)."""
    _available()
    script = textwrap.dedent("""
        import os, sys
        from fastcodellama.evaluation import setup_forks
        from fastcodellama.evaluation.sandbox import check_program
        assert check_program("x = 1", 10.0).passed
        print(os.getpid(), setup_forks.forking_pid(), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    evaluator, forking = (int(x) for x in done.stdout.split())
    deadline = time.monotonic() + 5
    while marked_processes(f"fcl-sandbox-of-{evaluator}".encode()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_processes(f"fcl-sandbox-of-{evaluator}".encode()) == []
    assert _gone(forking)


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_forked_evaluator_starts_its_own_forking_interpreter():
    """A fork of the evaluator (a fork-started worker) does not share its parent's socket: two
    processes asking on one socket would read each other's answers."""
    _available()
    assert check_program("x = 1", 10.0).passed and setup_forks.forking_pid() is not None
    pid = os.fork()
    if pid == 0:
        ok = setup_forks._forks is None and run_program("__output__ = 'child'", 10.0).output == "child"
        os._exit(0 if ok and setup_forks.forking_pid() is not None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert check_program("x = 1", 10.0).passed  # the parent's goes on
