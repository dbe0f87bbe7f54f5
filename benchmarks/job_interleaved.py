"""The HumanEval job's generation with and without copy drafting, a step of each in turn.

benchmarks/whole_process.py times the whole command, as the user sees it; on this shared VM two
runs of one command minutes apart can differ by 10%, more than drafting moves these jobs. Here the
two engines the command would build (`--type base` and `--type fastcodellama`, through the CLI's
own options) are given the same job's requests in one process and step alternately, one step
each, until both are done. Each engine's time is the sum of its own steps (wall clock, and the
process's CPU time), so both see the same moments of the machine. Start-up is not in it:
whole_process.py covers that. Every sample must come out the same from both engines (drafting is
lossless), and no KV block may stay held.

Learned step costs are read from and written to the user's cache, as by the command (the fixed
draft lengths only read it: measure.hindsight_baseline); the first round of a machine that has
none learns them.

    python benchmarks/job_interleaved.py                            # the jobs of whole_process.py
    python benchmarks/job_interleaved.py --jobs pass10-20 --rounds 5
    python benchmarks/job_interleaved.py --jobs readme --fixed-k 1,2,4   # and fixed draft lengths

With --fixed-k, an engine per fixed draft length (`--draft-policy fixed --k K`) steps in the same
turns, and each round also gives base's time over each of theirs: the best of plain and every
fixed k in hindsight is the most drafting could have given that job.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402
from in_turn import TimedSteps, step_in_turn  # noqa: E402
from whole_process import JOBS  # noqa: E402

from engine.llm_engine import LLMEngine  # noqa: E402
from fastcodellama.cli.humaneval import job_params  # noqa: E402
from fastcodellama.cli.main import build_parser  # noqa: E402
from fastcodellama.cli.options import build_llm  # noqa: E402
from fastcodellama.job.tasks import load_tasks, pending_tasks  # noqa: E402

TYPES = ("base", "fastcodellama")


class TimedJob(TimedSteps):
    """One engine as `fastcodellama humaneval ARGS --type KIND` builds it, the job's requests in it,
    and the time of its own steps."""

    def __init__(self, job_args: list[str], kind: str, fixed_k: int | None = None) -> None:
        extra = ["--draft-policy", "fixed", "--k", str(fixed_k)] if fixed_k is not None else []
        args = build_parser().parse_args(["humaneval", *job_args, "--type", kind, *extra])
        args.speculate = kind != "base"
        super().__init__(build_llm(args).engine)
        if fixed_k is not None:
            measure.hindsight_baseline(self.engine)
        self.engine: LLMEngine
        self.kind = kind if fixed_k is None else f"fixed k={fixed_k}"
        self.tokens: dict[str, list[list[int]]] = {}
        for p in pending_tasks(load_tasks(args.input_data_fn, args.limit), job_params(args), {}):
            self.engine.add_request(p.request_id, p.prompt, p.params)

    def step(self) -> None:
        for out in super().step():
            self.tokens[out.request_id] = [c.token_ids for c in out.outputs]

    def row(self) -> dict:
        stats = self.engine.stats()
        generated = sum(len(t) for samples in self.tokens.values() for t in samples)
        return {"type": self.kind, "wall_s": self.wall, "cpu_s": self.cpu, "steps": stats.steps,
                "tokens": generated, "drafted": stats.spec.total_drafted, "accepted": stats.spec.total_accepted,
                "propose_s": stats.propose_time,
                "leaked_blocks": stats.num_blocks_total - stats.num_blocks_free}


def run(job_args: list[str], fixed_k: tuple[int, ...] = ()) -> dict:
    """Both types of one job, and each fixed k, stepped in turn (in_turn.step_in_turn)."""
    jobs = [TimedJob(job_args, kind) for kind in TYPES]
    jobs += [TimedJob(job_args, "fastcodellama", k) for k in fixed_k]
    step_in_turn(jobs)
    base, fast, *fixed = (j.row() for j in jobs)
    return {"base": base, "fastcodellama": fast, "same_samples": all(j.tokens == jobs[0].tokens for j in jobs),
            "ratio": base["wall_s"] / fast["wall_s"], "cpu_ratio": base["cpu_s"] / fast["cpu_s"],
            "fixed": {r["type"]: {**r, "ratio": base["wall_s"] / r["wall_s"]} for r in fixed}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default="readme,pass1-20,pass10-20", help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fixed-k", default="", help="also step fixed draft lengths in turn (e.g. 1,2,4)")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    fixed_k = tuple(int(k) for k in args.fixed_k.split(",") if k.strip())
    rows = []
    for job in args.jobs.split(","):
        for r in range(args.rounds):
            row = {"job": job, "args": JOBS[job], "round": r + 1, **run(JOBS[job], fixed_k)}
            rows.append(row)
            print(f"{job} round {r + 1}: base / fastcodellama {row['ratio']:.3f} (CPU time {row['cpu_ratio']:.3f}), "
                  f"drafted {row['fastcodellama']['drafted']}, accepted {row['fastcodellama']['accepted']}, "
                  f"same samples {row['same_samples']}"
                  + "".join(f", {name} {f['ratio']:.3f}" for name, f in row["fixed"].items()), flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": rows,
               "median_ratio": {job: statistics.median(r["ratio"] for r in rows if r["job"] == job)
                                for job in args.jobs.split(",")}}
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    lines = [f"# The HumanEval job's generation, base and fastcodellama interleaved step by step ({results['date']})",
             "", f"machine: {results['machine']}", "",
             "Each engine's time is the sum of its own steps (the two stepped in turn in one process); "
             "ratio = base / fastcodellama (above 1.0: drafting saves time). Start-up is not included.", ""]
    lines += measure.markdown_table(
        ["job", "round", "base s", "fastcodellama s", "ratio", "in CPU time", "steps (base / fcl)",
         "drafted", "accepted", "proposer s", "same samples", "leaked", "base / fixed k"],
        [[r["job"], r["round"], f"{r['base']['wall_s']:.2f}", f"{r['fastcodellama']['wall_s']:.2f}",
          f"{r['ratio']:.3f}", f"{r['cpu_ratio']:.3f}", f"{r['base']['steps']} / {r['fastcodellama']['steps']}",
          r["fastcodellama"]["drafted"], r["fastcodellama"]["accepted"], f"{r['fastcodellama']['propose_s']:.3f}",
          r["same_samples"],
          r["base"]["leaked_blocks"] + r["fastcodellama"]["leaked_blocks"]
          + sum(f["leaked_blocks"] for f in r["fixed"].values()),
          " ".join(f"{name}: {f['ratio']:.3f}" for name, f in r["fixed"].items()) or "-"] for r in results["rows"]])
    lines += ["", "Median ratio per job: " + ", ".join(f"{j} {v:.3f}" for j, v in results["median_ratio"].items())]
    measure.write_results(out_dir, "job_interleaved", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
