"""Sandbox: verdicts, forgeries that must fail, and hostile completions that must stay contained.

The strongest assertions depend on the isolation the kernel granted; the level is printed, and a
weaker level skips (never silently passes) what it cannot guarantee. The attacks of issue #21 are
in test_sandbox_isolation.py (the host) and test_sandbox_verdict.py (the verdict).
"""
from __future__ import annotations

import glob
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from fastcodellama.evaluation import sandbox, setup_forks
from fastcodellama.evaluation.evaluate import problem_check
from fastcodellama.evaluation.problems import Problem
from fastcodellama.evaluation.sandbox import check_program
from tests.fastcodellama.evaluation.helpers import marked_processes

ADD = Problem("t/add", "def add(a, b):\n", "def check(candidate):\n    assert candidate(2, 3) == 5, 'add(2, 3)'\n"
              "    assert candidate(-1, 1) == 0\n", "add")
GOOD = "    return a + b\n"
TIMEOUT = 2.0
SANDBOX_UIDS = (sandbox.SANDBOX_UID_BASE, sandbox.SANDBOX_UID_BASE + sandbox.SANDBOX_UID_COUNT)


def run(completion: str, timeout: float = TIMEOUT) -> sandbox.ExecResult:
    return check_program(problem_check(ADD, completion), timeout)


@pytest.fixture(scope="module")
def isolation() -> str:
    level = run(GOOD).isolation
    print(f"sandbox isolation here: {level}")
    return level


def needs(level: str, *features: str) -> None:
    missing = [f for f in features if f not in level]
    if missing:
        pytest.skip(f"isolation {level!r} lacks {missing}")


def sandbox_processes() -> list[int]:
    """Processes of this test process's checks: the sandbox's setup and harness carry a marker with
    our pid in their command line, and forks keep it (other sessions' checks on the machine do not).
    The interpreter that forks the setups carries it too (they are its forks): it is no check's."""
    forking = setup_forks.forking_pid()
    return [pid for pid in marked_processes(f"fcl-sandbox-of-{os.getpid()}".encode()) if pid != forking]


def assert_contained(before_dirs: set[str]) -> None:
    """Nothing of the check survives it, and the job goes on."""
    deadline = time.monotonic() + 3
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "fcl-sandbox-*"))) <= before_dirs
    assert run(GOOD).passed


@pytest.fixture
def workdirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "fcl-sandbox-*")))


# --- verdicts -----------------------------------------------------------------------------------

def test_correct_completion_passes(isolation):
    result = run(GOOD)
    assert (result.passed, result.status, result.detail, result.result) == (True, "passed", "", "passed")
    assert result.isolation == isolation != "unknown"


def test_wrong_completion_fails_with_the_reason():
    result = run("    return a - b\n")
    assert (result.passed, result.status, result.detail) == (False, "failed", "failed: add(2, 3)")
    assert run("    return a +\n").detail.startswith("failed: invalid syntax (<string>, line 2)")


def test_main_block_does_not_run_like_human_eval():
    assert run(GOOD + "if __name__ == '__main__':\n    raise SystemExit(1)\n").passed


def test_stdlib_imports_work():
    assert run("    import math, json, re, hashlib, collections, itertools\n    return math.fsum([a, b])\n").passed


def test_infinite_loop_times_out_on_time():
    start = time.monotonic()
    result = run("    while True:\n        pass\n", timeout=0.5)
    assert (result.passed, result.status, result.result) == (False, "timeout", "timed out")
    assert time.monotonic() - start < 5


def test_threads_left_running_do_not_hold_the_verdict():
    completion = ("    import threading, time\n    threading.Thread(target=time.sleep, args=(60,)).start()\n"
                  "    return a + b\n")
    start = time.monotonic()
    assert run(completion).passed
    assert time.monotonic() - start < TIMEOUT


# --- forgeries: anything that skips or fakes check() fails --------------------------------------

FORGERIES = {
    "os._exit(0)": "    return a - b\nimport os\nos._exit(0)\n",
    "sys.exit(0)": "    return a - b\nimport sys\nsys.exit(0)\n",
    "raise SystemExit": "    return a - b\nraise SystemExit\n",
    "exit in check": "    import os\n    os._exit(0)\n",
    "fake token lines": "    return a - b\nimport os\nfor fd in (1, 2, 3):\n"
                        "    os.write(fd, b'start\\ndone\\n' + b'0123456789abcdef' * 2 + b'\\npassed\\n')\nos._exit(0)\n",
    "patched print and builtins": "    return a - b\nimport builtins\nbuiltins.print = lambda *a, **k: None\n"
                                  "builtins.AssertionError = type('Quiet', (Exception,), {})\n"
                                  "builtins.__import__ = None\n",
    "reads stdin": "    return a - b\nimport sys, os\nos.write(1, sys.stdin.read().encode())\n"
                   "print(os.read(0, 100))\nos._exit(0)\n",
    "signal to self": "    return a - b\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
}


@pytest.mark.parametrize("completion", FORGERIES.values(), ids=FORGERIES.keys())
def test_forgery_fails(completion):
    result = run(completion)
    assert not result.passed and result.status == "failed", result


# --- hostile completions: contained, and the job goes on ----------------------------------------

def _hostile(body: str) -> str:
    """A completion that runs `body` at call time and then returns the right answer."""
    return "".join("    " + line + "\n" for line in body.strip("\n").splitlines()) + "    return a + b\n"


@pytest.fixture
def canary():
    """A world-writable directory with a world-writable file: only a read-only file system (not
    the uid drop) stops a sandbox from deleting it."""
    directory = tempfile.mkdtemp(prefix="fcl-canary-", dir="/tmp")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "canary.txt")
    with open(path, "w") as f:
        f.write("alive")
    os.chmod(path, 0o666)
    yield path
    os.remove(path)
    os.rmdir(directory)


def test_cannot_delete_or_write_outside(isolation, canary, workdirs):
    needs(isolation, "mnt-ro")
    escape = f"/tmp/fcl-escape-{os.getpid()}"
    body = f"""
import os, shutil
for action in (lambda: open({canary!r}, 'w').write('dead'), lambda: os.remove({canary!r}),
               lambda: shutil.rmtree({os.path.dirname(canary)!r}), lambda: open({escape!r}, 'w'),
               lambda: os.chmod({canary!r}, 0), lambda: os.rename({canary!r}, {escape!r})):
    try:
        action()
    except OSError:
        pass
open('scratch.txt', 'w').write('the working directory is writable')
"""
    assert run(_hostile(body)).passed
    with open(canary) as f:
        assert f.read() == "alive"
    assert stat.S_IMODE(os.stat(canary).st_mode) == 0o666
    assert not os.path.exists(escape)
    assert_contained(workdirs)


def test_fork_bomb(isolation, workdirs):
    if os.geteuid() == 0:
        needs(isolation, "uid")  # RLIMIT_NPROC does not bind root
    body = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    start = time.monotonic()
    assert run(_hostile(body), timeout=1.0).status == "timeout"
    assert time.monotonic() - start < 10
    assert_contained(workdirs)


@pytest.mark.parametrize("body", ["x = bytearray(64 << 30)", "x = []\nwhile True:\n    x.append(bytearray(1 << 20))"],
                         ids=["at once", "step by step"])
def test_unbounded_allocation(body, workdirs):
    result = run(_hostile(body), timeout=15.0)  # the point is the MemoryError: time enough on a busy machine
    assert (result.status, result.detail) == ("failed", "failed: "), result  # MemoryError() has no message
    assert_contained(workdirs)


def test_huge_file(isolation, workdirs):
    body = """
with open('huge.bin', 'wb') as f:
    for _ in range(256):
        f.write(bytes(1 << 20))
"""
    result = run(_hostile(body))
    assert result.status == "failed" and "File too large" in result.detail, result
    assert_contained(workdirs)


@pytest.mark.parametrize("target", ["os.getppid()", "1", "-1", "0", "TEST_PID"])
def test_kill_parent(target, isolation, workdirs):
    if target == "TEST_PID":
        needs(isolation, "uid")  # without it, the sandbox could really kill this test process
        target = str(os.getpid())
    body = f"""
import os, signal
for sig in (signal.SIGKILL, signal.SIGTERM):
    try:
        os.kill({target}, sig)
    except OSError:
        pass
"""
    result = run(_hostile(body))
    assert result.status in ("passed", "failed")  # killing itself is allowed; nothing else is
    assert_contained(workdirs)


def test_no_network(isolation, workdirs):
    needs(isolation, "net")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        body = f"""
import socket
s = socket.create_connection(('127.0.0.1', {port}), timeout=1)
s.sendall(b'leak')
"""
        result = run(_hostile(body))
        assert result.status == "failed", result
        with pytest.raises(socket.timeout):
            listener.accept()
    assert_contained(workdirs)


# --- concurrent users: two processes checking at once ---------------------------------------------

# Each check reports, from inside its sandbox, its uid and when it ran; the job runs several in a row.
_SLOW_CHECK = "import os, time\nstart = time.time()\ntime.sleep({sleep})\n" \
              "__output__ = f'{{os.getuid()}} {{start}} {{time.time()}}'\n"
_JOB = """
import json, sys
from fastcodellama.evaluation.sandbox import run_program
program, checks = sys.argv[1], int(sys.argv[2])
results = [run_program(program, 30.0) for _ in range(checks)]
print(json.dumps([[r.status, r.output, r.detail] for r in results]))
"""


def test_two_processes_never_share_a_uid(isolation):
    # Each job's first check used to get the first uid of a per-process pool, and a check's clean-up
    # (kill -9 -1 as its uid) then killed whatever the other job ran under that uid.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root)
    jobs = [subprocess.Popen([sys.executable, "-c", _JOB, _SLOW_CHECK.format(sleep=sleep), "4"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for sleep in (0.5, 0.8)]
    runs = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=120)
        assert job.returncode == 0, stderr
        results = json.loads(stdout)
        assert [status for status, _, _ in results] == ["passed"] * 4, results  # none was killed
        runs.append([tuple(float(x) for x in output.split()) for _, output, _ in results])
    if "uid" in isolation:
        assert all(SANDBOX_UIDS[0] <= uid < SANDBOX_UIDS[1] for job in runs for uid, _, _ in job)
        shared = [(a, b) for a in runs[0] for b in runs[1] if a[0] == b[0] and a[1] < b[2] and b[1] < a[2]]
        assert shared == []


def test_default_workers_are_twice_the_cores_within_the_uid_range(monkeypatch):
    for cores, expected in ((None, 2), (1, 2), (2, 4), (16, 32), (96, sandbox.SANDBOX_UID_COUNT // 2)):
        monkeypatch.setattr(sandbox.os, "cpu_count", lambda cores=cores: cores)
        assert sandbox.default_workers() == expected
