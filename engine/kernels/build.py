"""Compiles a C source once per machine into the user's cache (keyed by source, flags and CPU)."""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from engine.paths import cache_root


def cache_dir() -> Path:
    return cache_root() / "kernels"


def compiler() -> str | None:
    """The C compiler to use ($CC, cc or gcc), or None; FASTCODELLAMA_NO_CPU_KERNELS turns all
    compiled paths off."""
    if os.environ.get("FASTCODELLAMA_NO_CPU_KERNELS"):
        return None
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def compile_once(cc: str, source: Path, flags: Sequence[str], name: str, suffix: str = ".so",
                 libs: Sequence[str] = ()) -> Path:
    """The shared library built from `source`; raises subprocess.CalledProcessError on a failed build."""
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode() + _cpu_name().encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}_{key}{suffix}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, str(source), "-o", tmp, *libs], check=True, capture_output=True, text=True)
        os.replace(tmp, target)  # atomic: concurrent builders never see a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
