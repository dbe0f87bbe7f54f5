"""What the user sees: the whole `fastcodellama humaneval` command, start-up included, with copy
drafting (`--type fastcodellama`) against plain decoding (`--type base`).

Each job runs once per type as a warm-up (the first command of a machine compiles the C kernels),
then alternately, the order swapped each round, so that both types share the machine's drifts.
Reported per job: the median wall time of each type and their ratio (base / fastcodellama: above
1.0 drafting saves the user time), and each round's pair.

    python benchmarks/whole_process.py                          # the README's job, 20-problem pass@1 and pass@10
    python benchmarks/whole_process.py --jobs readme --rounds 5

--side sets other pairs of commands side by side in place of the two types (the first over the
second is the ratio), and --extra adds arguments to every command: e.g. tests beside generation
against tests afterwards, on a job whose tasks finish over time, with a core left idle as a GPU
leaves the host's:

    python benchmarks/whole_process.py --jobs pass10-60 --extra "--threads 1" \
        --side "after=--tests-while-generating off" --side "beside=--tests-while-generating on"
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402

TYPES = {"base": ["--type", "base"], "fastcodellama": ["--type", "fastcodellama"]}
JOBS: dict[str, list[str]] = {
    # README.md, command 1 (evaluated in the sandbox, as a newcomer runs it)
    "readme": ["--limit", "20", "--passk", "10", "--max-tokens", "128"],
    "pass1-20": ["--limit", "20", "--passk", "1", "--max-tokens", "256", "--no-evaluate"],
    "pass10-20": ["--limit", "20", "--passk", "10", "--temperature", "0.8", "--max-tokens", "256", "--no-evaluate"],
    # Evaluated, and more samples than run at once: tasks finish (and can be tested) over time.
    "pass10-60": ["--limit", "60", "--passk", "10", "--max-tokens", "128"],
}


def run_once(job: str, side: str, args: list[str], workdir: str) -> float:
    """Seconds the command took, start to exit; a failed command stops the benchmark."""
    out = os.path.join(workdir, f"{job}-{side}.jsonl")
    cmd = [sys.executable, "-m", "fastcodellama", "humaneval", *JOBS[job], *args,
           "--output_data_fn", out, "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=measure.checkout_env())
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def measure_job(job: str, rounds: int, workdir: str, sides: dict[str, list[str]] = TYPES) -> dict:
    """The job under each of the two sides' arguments; ratio: the first side's time over the second's."""
    names = list(sides)
    for name in names:
        run_once(job, name, sides[name], workdir)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(run_once(job, name, sides[name], workdir))
        print(f"{job} round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in names), flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    first, second = names
    return {"job": job, "args": JOBS[job], "sides": sides, "seconds": times, "median_s": median,
            "ratio": median[first] / median[second],
            "pairs": [a / b for a, b in zip(times[first], times[second])]}


def _sides(specs: list[str] | None, extra: str) -> dict[str, list[str]]:
    """NAME=ARGS pairs (default: the two types), each with `extra` added."""
    sides = dict(TYPES) if not specs else dict(spec.split("=", 1) for spec in specs)
    if len(sides) != 2:
        raise SystemExit("--side: give two, NAME=ARGS each")
    return {name: [*(args if isinstance(args, list) else shlex.split(args)), *shlex.split(extra)]
            for name, args in sides.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--side", action="append", metavar="NAME=ARGS",
                    help="two of these in place of --type base and --type fastcodellama")
    ap.add_argument("--extra", default="", help="arguments added to every command")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    sides = _sides(args.side, args.extra)
    first, second = sides
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": []}
    with tempfile.TemporaryDirectory() as workdir:
        for job in args.jobs.split(","):
            results["rows"].append(measure_job(job, args.rounds, workdir, sides))
    lines = [f"# Whole process: `fastcodellama humaneval` ({results['date']})", "", f"machine: {results['machine']}",
             "", "Wall time of the command, start-up included; median of the alternating rounds after one "
             f"warm-up run of each side. ratio = {first} / {second}"
             + (" (above 1.0: drafting saves time)." if sides == _sides(None, "") else "."), "",
             "sides: " + "; ".join(f"{k}: `{' '.join(v)}`" for k, v in sides.items()), ""]
    lines += measure.markdown_table(
        ["job", "arguments", f"{first} s", f"{second} s", "ratio", "pairs"],
        [[r["job"], " ".join(r["args"]), f"{r['median_s'][first]:.2f}", f"{r['median_s'][second]:.2f}",
          f"{r['ratio']:.2f}x", " ".join(f"{p:.2f}" for p in r["pairs"])] for r in results["rows"]])
    text = "\n".join(lines) + "\n"
    measure.write_results(args.out, "whole_process", results, text)
    return results


if __name__ == "__main__":
    main()
