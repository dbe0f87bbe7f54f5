"""engine/threads.py: the OpenMP wait policy and thread count, set before torch loads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine import threads


@pytest.fixture
def before_torch(monkeypatch):
    """This process as it was before torch loaded, with no OpenMP settings of the user's."""
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, "")  # recorded, so that what configure_openmp sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(threads, "cpu_quota", lambda: None)
    return monkeypatch


def test_the_engine_sets_it_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", "import os, engine; print(os.environ.get('OMP_WAIT_POLICY'))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "PASSIVE", done.stderr


def test_passive_waiting_unless_the_user_chose(before_torch):
    assert threads.configure_openmp() == {"OMP_WAIT_POLICY": "PASSIVE"}
    before_torch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.configure_openmp() == {} and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    before_torch.delenv("OMP_WAIT_POLICY")
    before_torch.setenv("GOMP_SPINCOUNT", "300000")  # libgomp's own default, as the user asked
    assert threads.configure_openmp() == {} and "OMP_WAIT_POLICY" not in os.environ


def test_threads_follow_a_cpu_quota(before_torch):
    before_torch.setattr(threads, "cpu_quota", lambda: 1)
    before_torch.setattr(threads, "affinity_cpus", lambda: 8)
    assert threads.configure_openmp()["OMP_NUM_THREADS"] == "1"
    before_torch.setenv("OMP_NUM_THREADS", "3")
    assert "OMP_NUM_THREADS" not in threads.configure_openmp()


def test_too_late_once_torch_runs(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    import torch  # noqa: F401

    assert threads.configure_openmp() == {}


def test_cgroup_quota(tmp_path):
    assert threads.cpu_quota(str(tmp_path)) is None  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cpu_quota(str(tmp_path)) == 2
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert threads.cpu_quota(str(tmp_path)) == 1
