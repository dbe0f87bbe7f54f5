"""The draft policy's ranking of candidate tokens in Python against numpy, on the candidates a
real search gives, at each number of candidate tokens: where policy.NUMPY_FROM should sit.

An engine drafts over the stub forward of benchmarks/host_overhead.py (pass@10 traces replayed,
the adaptive policy told each step's time from the H200 suite's table, as it drafts beside that
GPU) at --batch running sequences; every ranking it asks for is kept. Each kept call is then
ranked by DraftPolicy._ranking down each of its paths (Python; numpy), on its first 16, 32,
64, ... candidates, in turns, --repeats times; the fastest mean of each is reported, with both
paths' answers checked equal.

    python benchmarks/draft_ranking.py --batch 256
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")

import host_overhead  # noqa: E402
import measure  # noqa: E402
from traces import load_workload, replay_params  # noqa: E402

from engine import DEFAULT_MODEL  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from fastcodellama.drafting import policy  # noqa: E402


def captured(batch: int, steps: int) -> list[tuple[list, int]]:
    """(candidates, budget) of every ranking an engine drafting as beside the H200 asks for."""
    tokenizer = Tokenizer(DEFAULT_MODEL)
    engine = host_overhead.build_engine(batch, True, tokenizer, "device", None, host_overhead.GPU_TABLE)
    for i, r in enumerate(host_overhead.busy_requests(load_workload("passk", tokenizer), batch)):
        engine.add_request(f"r{i}", r.prompt, replay_params("passk", r))
    calls: list[tuple[list, int]] = []
    ranking = policy.DraftPolicy._ranking

    def keep(cands, budget, every=False):
        calls.append((list(cands), budget))
        return ranking(cands, budget, every)

    policy.DraftPolicy._ranking = staticmethod(keep)
    try:
        for _ in range(steps):
            if not engine.has_unfinished():
                break
            engine.step(collect="finished")
    finally:
        policy.DraftPolicy._ranking = staticmethod(ranking)
    return calls


def ranked(numpy: bool, calls: list[tuple[list, int]]) -> tuple[float, list]:
    """Seconds per ranking of `calls` by DraftPolicy._ranking itself, made to take one path (its
    threshold moved out of the way), and the rankings."""
    saved = policy.NUMPY_FROM
    policy.NUMPY_FROM = 0 if numpy else 1 << 62
    try:
        start = time.perf_counter()
        out = [policy.DraftPolicy._ranking(cands, budget) for cands, budget in calls]
        return (time.perf_counter() - start) / len(calls), out
    finally:
        policy.NUMPY_FROM = saved


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    calls = captured(args.batch, args.steps)
    if not calls:
        raise SystemExit("no search ranked candidates: nothing to time")
    rows = []
    size = 16
    while True:
        cut = [(cands[:size], budget) for cands, budget in calls]
        equal = ranked(False, cut)[1] == ranked(True, cut)[1]
        py = min(ranked(False, cut)[0] for _ in range(args.repeats))
        np_ = min(ranked(True, cut)[0] for _ in range(args.repeats))
        tokens = statistics.fmean(len(policy.DraftPolicy._ranked(c)[0]) for c, _ in cut)
        rows.append({"candidates": size, "tokens": tokens, "python_ms": 1e3 * py, "numpy_ms": 1e3 * np_,
                     "equal": equal})
        print(f"{size} candidates, {tokens:.0f} tokens: python {1e3 * py:.3f} ms, numpy {1e3 * np_:.3f} ms, "
              f"equal {equal}", flush=True)
        if size >= args.batch:
            break
        size = min(2 * size, args.batch)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "calls": len(calls),
               "numpy_from": policy.NUMPY_FROM, "rows": rows}
    lines = [f"# The draft policy's ranking, Python against numpy ({results['date']})", "",
             f"machine: {results['machine']}", "",
             f"{len(calls)} rankings of a search drafting as beside the H200 at {args.batch} running sequences, "
             f"each cut to its first N candidates; mean ms per ranking, the fastest of {args.repeats} turns. "
             f"policy.NUMPY_FROM (candidate tokens from which numpy ranks): {policy.NUMPY_FROM}.", ""]
    lines += measure.markdown_table(
        ["candidates", "tokens (mean)", "python ms", "numpy ms", "numpy / python", "equal"],
        [[r["candidates"], f"{r['tokens']:.0f}", f"{r['python_ms']:.3f}", f"{r['numpy_ms']:.3f}",
          f"{r['numpy_ms'] / r['python_ms']:.2f}", r["equal"]] for r in rows])
    measure.write_results(args.out, "draft_ranking", results, "\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()
