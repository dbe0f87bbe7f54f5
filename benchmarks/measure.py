"""What every benchmark here measures the same way: the machine, peak memory, percentiles, result files.

The benchmark scripts import it as a sibling module (`python benchmarks/X.py` puts benchmarks/ on
sys.path); `fastcodellama bench` and the tests put benchmarks/ on sys.path themselves.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkout_env() -> dict[str, str]:
    """The environment for a command a benchmark starts (`python -m fastcodellama ...`): this
    checkout's packages first, as its scripts put them, whichever ones are installed and wherever
    the benchmark was started from."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [CHECKOUT, os.environ.get("PYTHONPATH")])))


def hindsight_baseline(engine) -> None:
    """An engine drafting with a fixed length, run as the best fixed policy in hindsight: it reads
    the step-cost file but writes nothing to it. It drafts at nearly every step, so its drafting
    steps are set against plain steps from long before them, and cells written from them would
    seed the adaptive engine under test (the same file, the same key) with what it never measured."""
    engine.step_cost.keep_nothing()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU, cores, memory, torch and its threads, load average at the start."""
    import torch

    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = ", load %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu_model()}, {os.cpu_count()} cpus{mem}{gpu}, {platform.system()} {platform.release()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads){load}")


def busy_cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds the whole machine (or process `pid`) has been busy, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / tick


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp(date_iso: str) -> str:
    """2026-11-23T21:27:18+00:00 -> 20261123T212718 (file names)."""
    return date_iso.replace(":", "").replace("-", "")[:15]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: the high-water mark is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak resident memory of this process while the block runs, sampled by a thread every
    `interval` s (ru_maxrss cannot be reset, and all systems of a benchmark share one process).
    On CUDA also torch's peak allocated bytes in the block."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start_rss = self.peak_rss = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start_rss = self.peak_rss = _rss_bytes()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, _rss_bytes())

    def __exit__(self, *exc) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_bytes())
        if torch.cuda.is_available():
            self.cuda_peak = torch.cuda.max_memory_allocated()

    def as_dict(self) -> dict:
        out = {"peak_rss_mb": self.peak_rss / 2**20, "rss_growth_mb": (self.peak_rss - self.start_rss) / 2**20}
        if self.cuda_peak is not None:
            out["cuda_peak_mb"] = self.cuda_peak / 2**20
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict:
    """{'mean', 'p50', 'p90', 'p99', 'n'} of a list of latencies."""
    out = {f"p{q:g}": percentile(values, q) for q in qs}
    out["mean"] = sum(values) / len(values) if values else math.nan
    out["n"] = len(values)
    return out


def fmt(x: float | int | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write_results(out_dir: str, name: str, results: dict, markdown: str,
                  plot: Callable[[str], None] | None = None) -> dict[str, str]:
    """Prints the markdown, writes NAME_STAMP.json and NAME_STAMP.md, and NAME_STAMP.png through
    `plot(path)` when given and matplotlib is installed; returns the paths written."""
    print(markdown)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{name}_{stamp(results['date'])}")
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1, default=_jsonable)
    with open(base + ".md", "w") as f:
        f.write(markdown + "\n")
    paths = {"json": base + ".json", "md": base + ".md"}
    if plot is not None:
        try:
            plot(base + ".png")
            paths["png"] = base + ".png"
        except ImportError:
            print("no plot: matplotlib is not installed (pip install '.[bench]')", file=sys.stderr)
    return paths


def _jsonable(x):
    if hasattr(x, "tolist"):  # numpy arrays and scalars
        return x.tolist()
    return str(x)


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
