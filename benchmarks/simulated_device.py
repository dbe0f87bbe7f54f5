"""A device this project does not have, simulated: the real traces replayed through the whole
engine (scheduler, prefix cache, proposer and its policy, verification, rollback) over a model
that costs nothing (engine.models.stub.StubModel), each step's time read off a recorded cost table
instead of the clock. The engine learns its step cost from those times, as it would on the device,
so the draft policy is judged and tuned here for a GPU: against no drafting and against every
fixed draft length k at every batch, and the best fixed policy in hindsight.

Tables (--table):
  h200-reference   the engine's torch reference path on an H200 (../shared/measurements/
                   h200_engine_torch_reference_decode_7b_20261204.json): decode steps by batch,
                   verify steps by batch and draft tokens
  PATH.json        a benchmarks/gpu/suite.py result (its "cost_table_ms": sequences, rows, ms), or a
                   benchmarks/step_cost.py result (this CPU with its C kernels: decode steps, one
                   sequence verifying, sequences with one draft token each)
Each policy is also scored with this host's time added: every step's (schedule, sampling rows,
verification, outputs; the stub's forward is next to nothing) and the proposer's, as a device
whose host does not overlap its work with the device's would see it.
With --noise SEED the engine learns from the times of a busy machine: the table's times under a
load that holds for a while and then jumps (between 1x and 2.4x, as measured on this project's
2-core VM, where a plain step at 64 sequences went from 26 to 60 ms within 30 steps) plus a
small delay on every step. The policies are still scored on the table's own times: what their
decisions cost, judged without the noise they were made in.
The one thing still read off this host is the proposer's own search time, which the policy weighs
against the gain of a draft: runs of one code can differ by a few percent through it. With
--search-us US the policy is told US microseconds per query instead, and a run repeats exactly:
the way to compare two versions of the policy or the step cost. A search has a fixed part, so a
query costs far more at one sequence than among hundreds: --search-us 80@1,8@256 tells it per
batch size (between the points, linear in the logarithm of the batch; beyond them, the nearest),
as a host measured it (benchmarks/host_overhead.py and the GPU suite's part h print that figure).
A table's points are (sequences, rows, ms); between them the cost is interpolated: the plain step
by sequences, the draft rows' extra cost by rows at the nearest measured batches.

    python benchmarks/simulated_device.py                                   # h200-reference, all workloads
    python benchmarks/simulated_device.py --table benchmarks/results/gpu_suite_X.json --batches 1,64
    python benchmarks/simulated_device.py --table benchmarks/results/step_cost_X.json --noise 1
"""
from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402
from traces import WORKLOADS, load_workload, replay_params  # noqa: E402

from engine import DEFAULT_MODEL, EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.models.registry import read_model_config  # noqa: E402
from engine.models.stub import StubModel  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from fastcodellama.drafting import SpecConfig, build_proposer  # noqa: E402

MEASUREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "measurements")
FIXED_K = (1, 2, 4, 8, 16, 20)


class CostTable:
    """ms of a step of `seqs` sequences and `rows` rows, from (sequences, rows, ms) points."""

    def __init__(self, points: list[tuple[int, int, float]]) -> None:
        plain = sorted({(s, ms) for s, r, ms in points if r == s})
        if not plain:
            raise ValueError("a cost table needs plain steps (rows == sequences)")
        self.plain_pts = plain
        extra: dict[int, list[tuple[int, float]]] = {}
        for s, r, ms in points:
            if r > s:
                extra.setdefault(s, []).append((r - s, max(0.0, ms - self.plain(s))))
        self.extra_pts = {s: sorted([(0, 0.0), *pts]) for s, pts in extra.items()}

    def plain(self, seqs: int) -> float:
        return _interp(self.plain_pts, seqs)

    def extra(self, seqs: int, draft_rows: int) -> float:
        if draft_rows <= 0 or not self.extra_pts:
            return 0.0
        batches = sorted(self.extra_pts)
        i = bisect.bisect_left(batches, seqs)
        near = [b for b in batches[max(0, i - 1):i + 1]]
        if len(near) == 1 or near[0] == near[1]:
            return _interp(self.extra_pts[near[0]], draft_rows)
        lo, hi = near
        w = (math.log(seqs) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (1 - w) * _interp(self.extra_pts[lo], draft_rows) + w * _interp(self.extra_pts[hi], draft_rows)

    def __call__(self, seqs: int, rows: int, measured_s: float) -> float:
        """The engine's StepTimer: the table's seconds for this step, whatever it took here."""
        return (self.plain(seqs) + self.extra(seqs, rows - seqs)) / 1000.0


def _interp(points: list[tuple[int, float]], x: float) -> float:
    """Piecewise linear, extended at the ends with the nearest segment's slope (never below 0)."""
    if len(points) == 1:
        return points[0][1]
    xs = [p[0] for p in points]
    i = min(max(bisect.bisect_right(xs, x), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def load_table(name: str) -> tuple[CostTable, str]:
    if name == "h200-reference":
        with open(os.path.join(MEASUREMENTS, "h200_engine_torch_reference_decode_7b_20261204.json")) as f:
            data = json.load(f)
        points = [(r["batch"], r["batch"], r["step_ms"]) for r in data["engine"]]
        points += [(v["batch"], v["tokens_in_step"], v["step_ms"]) for v in data["verify"]]
        return CostTable(points), "H200, the engine's torch reference path (shared/measurements)"
    with open(name) as f:
        data = json.load(f)
    if "cost_table_ms" in data:
        return CostTable([tuple(p) for p in data["cost_table_ms"]]), f"{name} ({data.get('machine', '')})"
    curves = data["kernel"]  # a benchmarks/step_cost.py result
    points = [(t, t, ms) for t, ms in curves["decode"]] + [(t, 2 * t, ms) for t, ms in curves["pairs"]]
    points += [(1, t, ms) for t, ms in curves["verify"] if t > 1]
    return CostTable(points), f"{name} (step_cost.py, C kernels: {data.get('machine', '')})"


class BusyMachine:
    """The factor a busy machine puts on each step's time (see the module docstring), from a seed."""

    LOADS = (1.0, 1.0, 1.3, 1.6, 2.0, 2.4)

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.load, self.left = 1.0, 0

    def __call__(self) -> float:
        if self.left <= 0:
            self.load, self.left = self.rng.choice(self.LOADS), self.rng.randint(5, 60)
        self.left -= 1
        return self.load * (1.0 + self.rng.expovariate(20.0))


class SimClock:
    """The engine's step timer on the simulated device: each step's seconds from the table, summed;
    the engine is told them through `busy` where one is given (--noise)."""

    def __init__(self, table: CostTable, busy: BusyMachine | None = None) -> None:
        self.table, self.busy, self.seconds, self.steps = table, busy, 0.0, 0
        self.host_seconds = 0.0  # what the steps took on this host (the stub's forward is next to nothing)

    def __call__(self, seqs: int, rows: int, measured_s: float) -> float:
        s = self.table(seqs, rows, measured_s)
        self.seconds += s
        self.host_seconds += measured_s
        self.steps += 1
        return s * self.busy() if self.busy is not None else s


def run(table: CostTable, workload: str, requests, batch: int, spec: SpecConfig | None, tokenizer,
        noise: int | None = None, search_us: list[tuple[int, float]] | None = None) -> dict:
    """`search_us`: the search time per query the policy is told, by batch size (--search-us's
    points; None: measured on this host)."""
    clock = SimClock(table, BusyMachine(noise) if noise is not None else None)
    config = EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, 24 * batch), num_kv_blocks=16384)
    search_time = None if search_us is None else (lambda n: 1e-6 * _interp_log(search_us, n))
    engine = LLMEngine(config, proposer=build_proposer(spec, search_time) if spec else None,
                       model=StubModel(read_model_config(DEFAULT_MODEL), columns=1), tokenizer=tokenizer,
                       step_timer=clock)  # the tokens are replayed: no row of logits needs the vocabulary
    start = time.perf_counter()
    for i, r in enumerate(requests):
        engine.add_request(f"r{i}", r.prompt, replay_params(workload, r))
    exact = True
    while engine.has_unfinished():
        for o in engine.step(collect="finished"):
            r = requests[int(o.request_id[1:])]
            exact &= all(tuple(c.token_ids[:len(r.continuations[c.index])]) == r.continuations[c.index]
                         for c in o.outputs)
    stats = engine.stats()
    tokens = stats.generated_tokens
    host_s = clock.host_seconds + stats.propose_time
    return {"tokens": tokens, "device_s": clock.seconds, "tokens_per_s": tokens / clock.seconds,
            "host_step_s": clock.host_seconds, "propose_s": stats.propose_time,
            "tokens_per_s_with_host": tokens / (clock.seconds + host_s),
            "steps": clock.steps, "host_s": time.perf_counter() - start, "exact": exact,
            "drafted": stats.spec.total_drafted, "accepted": stats.spec.total_accepted,
            "leaked": stats.num_blocks_total - stats.num_blocks_free,
            "tokens_per_forward": tokens / max(1, stats.spec.decode_steps)}


def search_points(text: str) -> list[tuple[int, float]]:
    """--search-us: "US" (at every batch) or "US@N,US@N,...": (sequences, us per query), by sequences."""
    points = []
    for part in text.split(","):
        us, _, n = part.partition("@")
        points.append((int(n) if n else 1, float(us)))
    if any(n < 1 or us < 0 or not math.isfinite(us) for n, us in points):
        raise argparse.ArgumentTypeError(f"{text!r}: microseconds >= 0 at batches >= 1")
    return sorted(points)


def _interp_log(points: list[tuple[int, float]], n: int) -> float:
    """The points' value at n: linear in log n between them (_interp), the nearest beyond them."""
    n = min(max(n, points[0][0]), points[-1][0])
    return _interp([(math.log(x), y) for x, y in points], math.log(n))


def policies(k_max: int = 20) -> list[tuple[str, SpecConfig | None]]:
    return ([("plain", None), ("adaptive", SpecConfig())]
            + [(f"fixed k={k}", SpecConfig(policy="fixed", k=k)) for k in FIXED_K if k <= k_max])


def subset(requests, batch: int, min_sequences: int):
    per = len(requests[0].continuations)
    want = max(min_sequences, 4 * batch)
    return requests[: max(1, min(len(requests), math.ceil(want / per)))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="h200-reference")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--min-sequences", type=int, default=20)
    ap.add_argument("--pass100-tasks", type=int, default=8)
    ap.add_argument("--noise", type=int, default=None, metavar="SEED",
                    help="the engine learns from the times of a busy machine (see above)")
    ap.add_argument("--search-us", type=search_points, default=None, metavar="US[@N,...]",
                    help="tell the policy a search costs US microseconds per query (at N sequences) instead of "
                         "timing it: the run then repeats exactly (see above)")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    # Each run learns from its own steps only: a cache file would carry one table's (or one
    # policy's) costs into the next run.
    os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")
    table, described = load_table(args.table)
    if args.noise is not None:
        described += f"; the engine learns from a busy machine's times (--noise {args.noise})"
    if args.search_us is not None:
        told = ", ".join(f"{us:g} us at {n}" for n, us in args.search_us)
        described += f"; the policy is told a search costs per query: {told} (--search-us)"
    tokenizer = Tokenizer(DEFAULT_MODEL)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "table": described, "args": vars(args),
               "rows": []}
    for workload in args.workloads.split(","):
        requests = load_workload(workload, tokenizer, pass100_tasks=args.pass100_tasks)
        for batch in (int(b) for b in args.batches.split(",")):
            chosen = subset(requests, batch, args.min_sequences)
            runs = {label: run(table, workload, chosen, batch, spec, tokenizer, args.noise, args.search_us)
                    for label, spec in policies()}
            fixed = {k: v for k, v in runs.items() if k.startswith("fixed") or k == "plain"}
            best = max(fixed, key=lambda k: fixed[k]["tokens_per_s"])
            row = {"workload": workload, "batch": batch, "sequences": sum(len(r.continuations) for r in chosen),
                   "runs": runs, "best_fixed": best,
                   "adaptive_vs_best_fixed": runs["adaptive"]["tokens_per_s"] / fixed[best]["tokens_per_s"],
                   "adaptive_vs_plain": runs["adaptive"]["tokens_per_s"] / runs["plain"]["tokens_per_s"]}
            with_host = {k: v["tokens_per_s_with_host"] for k, v in fixed.items()}
            best_with_host = max(with_host, key=with_host.get)
            row.update(best_fixed_with_host=best_with_host,
                       adaptive_vs_best_fixed_with_host=runs["adaptive"]["tokens_per_s_with_host"] / with_host[best_with_host])
            results["rows"].append(row)
            print(f"{workload} batch {batch}: adaptive {row['adaptive_vs_plain']:.2f}x plain, "
                  f"{row['adaptive_vs_best_fixed']:.3f} of the best fixed ({best}); exact "
                  f"{all(r['exact'] for r in runs.values())}", flush=True)
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    lines = [f"# Simulated device ({results['date']})", "", f"cost table: {results['table']}",
             f"host: {results['machine']}", "",
             "tokens/s of device time (the table's), every output checked equal to its trace; the last two columns "
             "add this host's time of each step and of the proposer, as a device whose host does not overlap "
             "its work would see them", "",
             "| workload | max running | seqs | plain | adaptive | best fixed | adaptive / plain | adaptive / best fixed "
             "| tokens per forward (batch 1) | with host: best fixed | with host: adaptive / best fixed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        runs = r["runs"]
        tpf = runs["adaptive"]["tokens_per_forward"]
        lines.append(f"| {r['workload']} | {r['batch']} | {r['sequences']} | {runs['plain']['tokens_per_s']:.1f} | "
                     f"{runs['adaptive']['tokens_per_s']:.1f} | {r['best_fixed']} {runs[r['best_fixed']]['tokens_per_s']:.1f} | "
                     f"{r['adaptive_vs_plain']:.3f}x | {r['adaptive_vs_best_fixed']:.3f} | "
                     f"{'' if tpf is None else f'{tpf:.3f}'} | {r['best_fixed_with_host']} | "
                     f"{r['adaptive_vs_best_fixed_with_host']:.3f} |")
    measure.write_results(out_dir, "simulated_device", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
