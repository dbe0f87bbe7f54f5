"""A benchmark script runs the engine of the checkout it sits in, not whichever one is installed:
two checkouts measured side by side (a worktree of the commit before, say) must each run their
own code, and an editable install of one of them would otherwise serve both."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

from tests.benchmarks.conftest import BENCHMARKS

PATH_LINE = "sys.path[:0] = [HERE, os.path.dirname(HERE)]"
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(BENCHMARKS, "*.py"))
                 if PATH_LINE in open(p).read())


def _runs_engine(name: str) -> bool:
    """A script (it has a main) that imports the engine or the job's package as it starts."""
    text = open(os.path.join(BENCHMARKS, name)).read()
    return '__name__ == "__main__"' in text and any(
        line.startswith(("from engine", "import engine", "from fastcodellama", "import fastcodellama"))
        for line in text.splitlines())


def test_every_script_that_puts_its_folder_on_the_path_puts_its_checkout_there_too():
    for path in glob.glob(os.path.join(BENCHMARKS, "*.py")):
        text = open(path).read()
        if "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))" in text:
            pytest.fail(f"{os.path.basename(path)} puts only benchmarks/ on the path")
    assert len(SCRIPTS) >= 20


@pytest.mark.parametrize("name", [os.path.basename(p) for p in sorted(glob.glob(os.path.join(BENCHMARKS, "*.py")))
                                  if _runs_engine(os.path.basename(p))])
def test_a_script_in_another_checkout_imports_that_checkouts_engine(name, tmp_path):
    """A copy of the script beside `engine` and `fastcodellama` packages of its own, which say so
    when imported: run from there, the script reaches them (before this repository's installed ones)."""
    shutil.copytree(BENCHMARKS, tmp_path / "benchmarks", ignore=shutil.ignore_patterns("results", "gpu", "__pycache__"))
    for package in ("engine", "fastcodellama"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text('raise ImportError("the engine of the other checkout")\n')
    run = subprocess.run([sys.executable, str(tmp_path / "benchmarks" / name), "--help"], cwd=tmp_path.parent,
                         capture_output=True, text=True, timeout=120)
    assert "the engine of the other checkout" in run.stderr, (run.returncode, run.stderr[-2000:])


def test_the_commands_a_benchmark_starts_run_its_checkouts_packages_wherever_it_was_started(tmp_path):
    """whole_process.py times `python -m fastcodellama humaneval ...`: started from outside the
    other checkout, its commands must still run that checkout's package (here one that says so)."""
    shutil.copytree(BENCHMARKS, tmp_path / "other" / "benchmarks",
                    ignore=shutil.ignore_patterns("results", "gpu", "__pycache__"))
    (tmp_path / "other" / "fastcodellama").mkdir()
    (tmp_path / "other" / "fastcodellama" / "__main__.py").write_text(
        'raise SystemExit("the job of the other checkout")\n')
    (tmp_path / "other" / "fastcodellama" / "__init__.py").write_text("")
    run = subprocess.run([sys.executable, str(tmp_path / "other" / "benchmarks" / "whole_process.py"), "--jobs",
                          "readme", "--rounds", "1", "--out", str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0 and "the job of the other checkout" in run.stderr, run.stderr[-2000:]
