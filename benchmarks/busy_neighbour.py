"""The README job with and without one busy neighbour: how much a core shared with another
process costs the job, per thread setting and OpenMP wait policy.

Each setting runs the job (`fastcodellama humaneval ... --no-evaluate`, a fresh process each time)
alone and beside a neighbour, a process that spins on the machine's last CPU, alternating
(alone, beside, alone, beside, ...) so that a drift in the machine's load touches both alike.
The figure is the generation time of the job (from its report; start-up left out), and the
ratio beside / alone. On an otherwise idle 2-CPU machine a proportional cost is about 1.5 (the
job's two threads and the neighbour share two CPUs: the job keeps 4/3 of them); on a machine
that other work keeps busy already, the neighbour takes a smaller share and the ratio is lower.

    python benchmarks/busy_neighbour.py                      # 10 problems x 10 samples x 64 tokens
    python benchmarks/busy_neighbour.py --limit 20 --passk 10 --max-tokens 128 --repeats 2   # the README job

Settings: "spin (before)" is libgomp's own default, which the engine used before engine/threads.py
(waiting threads spin ~300k rounds: GOMP_SPINCOUNT=300000, which engine/threads.py leaves alone),
"default (after)" is what engine/threads.py picks (OMP_WAIT_POLICY=PASSIVE, one thread per CPU),
"1 thread" adds --threads 1 to it, "spin, 1 thread" is --threads 1 as it was before.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
from measure import RESULTS, busy_cpu_seconds, checkout_env, cpu_model, fmt, markdown_table, utc_now, write_results  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()


SETTINGS = {
    "spin (before)": Setting("spin (before)", (("GOMP_SPINCOUNT", "300000"),)),
    "default (after)": Setting("default (after)"),
    "1 thread": Setting("1 thread", args=("--threads", "1")),
    "spin, 1 thread": Setting("spin, 1 thread", (("GOMP_SPINCOUNT", "300000"),), ("--threads", "1")),
    "spin 0.1 ms": Setting("spin 0.1 ms", (("GOMP_SPINCOUNT", "10000"),)),  # libgomp: ~100k rounds per ms
    "spin 0.3 ms": Setting("spin 0.3 ms", (("GOMP_SPINCOUNT", "30000"),)),
    "passive": Setting("passive", (("OMP_WAIT_POLICY", "PASSIVE"),)),
}


@dataclass(frozen=True)
class Run:
    generation_s: float
    tokens_per_s: float
    others_cpus: float  # CPUs that processes other than the job and the neighbour kept busy, on average


def neighbour(cpu: int) -> subprocess.Popen:
    """A process that keeps `cpu` busy (pinned to it) until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def run_job(setting: Setting, job: list[str], output: str, beside: int | None = None) -> Run:
    """Generation time and tokens/s of one run of the job (`beside`: the neighbour's pid)."""
    env = {k: v for k, v in checkout_env().items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(setting.env)
    cmd = [sys.executable, "-m", "fastcodellama", "humaneval", *job, "--no-evaluate", "--overwrite",
           "--output_data_fn", output, *setting.args]
    before = (time.perf_counter(), busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN),
              busy_cpu_seconds(beside) if beside else 0.0)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - before[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    job_cpu = usage.ru_utime + usage.ru_stime - before[2].ru_utime - before[2].ru_stime
    neighbour_cpu = busy_cpu_seconds(beside) - before[3] if beside else 0.0
    others = (busy_cpu_seconds() - before[1] - job_cpu - neighbour_cpu) / wall
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    seconds = re.search(r"\| generation time \(s\)\s*\| ([0-9.]+) \|", done.stdout).group(1)
    rate = re.search(r"\| tokens/s \(generation\)\s*\| ([0-9.]+) \|", done.stdout).group(1)
    return Run(float(seconds), float(rate), max(0.0, others))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--passk", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-stop", action="store_true",
                    help="no stop strings: every sample runs --max-tokens (for --passk 1 --limit 1: batch 1)")
    ap.add_argument("--repeats", type=int, default=3, help="alone/beside pairs per setting")
    ap.add_argument("--settings", default="spin (before),default (after),1 thread",
                    help=f"comma-separated, any of: {', '.join(SETTINGS)}")
    ap.add_argument("--out", default=RESULTS)
    opts = ap.parse_args()
    settings = [SETTINGS[name] for name in opts.settings.split(",")]
    job = ["--limit", str(opts.limit), "--passk", str(opts.passk), "--max-tokens", str(opts.max_tokens)]
    if opts.no_stop:
        job += ["--stop", "@@never@@"]
    cpu = max(os.sched_getaffinity(0))
    times: dict[str, dict[str, list[Run]]] = {s.name: {"alone": [], "beside": []} for s in settings}
    load_before = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "samples.jsonl")
        for repeat in range(opts.repeats):
            for setting in settings:  # settings interleaved too: a drift in load spreads over all
                times[setting.name]["alone"].append(run_job(setting, job, output))
                busy = neighbour(cpu)
                try:
                    time.sleep(0.5)
                    times[setting.name]["beside"].append(run_job(setting, job, output, busy.pid))
                finally:
                    busy.kill()
                    busy.wait()
                t = times[setting.name]
                alone, beside = t["alone"][-1], t["beside"][-1]
                print(f"[{repeat + 1}/{opts.repeats}] {setting.name}: alone {alone.generation_s:.1f} s "
                      f"(others {alone.others_cpus:.2f} CPUs), beside a busy neighbour {beside.generation_s:.1f} s "
                      f"(others {beside.others_cpus:.2f})", file=sys.stderr, flush=True)
    rows, results = [], {}
    for name, t in times.items():
        alone = statistics.median(r.generation_s for r in t["alone"])
        beside = statistics.median(r.generation_s for r in t["beside"])
        ratios = [b.generation_s / a.generation_s for a, b in zip(t["alone"], t["beside"])]
        rates = [statistics.median(r.tokens_per_s for r in t[k]) for k in ("alone", "beside")]
        results[name] = {k: [r.__dict__ for r in t[k]] for k in ("alone", "beside")}
        results[name]["ratio_median"] = statistics.median(ratios)
        others = statistics.mean(r.others_cpus for k in ("alone", "beside") for r in t[k])
        rows.append([name, fmt(alone), fmt(beside), fmt(rates[0]), fmt(rates[1]), fmt(beside / alone, 2),
                     fmt(statistics.median(ratios), 2), fmt(others, 2)])
    date = utc_now()
    header = (f"Busy neighbour: `humaneval {' '.join(job)} --no-evaluate`, generation time, median of "
              f"{opts.repeats} alternating runs; neighbour: one spinning process pinned to CPU {cpu}.\n"
              f"{cpu_model()}, {os.cpu_count()} CPUs, load average before {load_before[0]:.2f}, "
              f"after {os.getloadavg()[0]:.2f}; {time.perf_counter() - start:.0f} s in all; {date}\n"
              "others' CPUs: how many CPUs processes other than the job and its neighbour kept busy during the "
              "runs, on average (0 on a quiet machine)\n")
    table = markdown_table(["setting", "alone (s)", "beside (s)", "alone tokens/s", "beside tokens/s",
                            "ratio of medians", "median ratio", "others' CPUs"], rows)
    write_results(opts.out, "busy_neighbour", {"date": date, "job": job, "cpu": cpu, "settings": results,
                                               "load_before": load_before, "load_after": os.getloadavg()},
                  header + "\n" + "\n".join(table))


if __name__ == "__main__":
    main()
