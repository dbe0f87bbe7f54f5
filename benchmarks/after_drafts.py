"""After a drafting step, queue the next step ahead or wait for its tokens: each way against the other,
and against what engine/overlap_choice.py learns, beside a simulated GPU.

The set-up of benchmarks/overlap_steps.py (the engine's real host side around a stub model, the
pass@10 traces replayed, each step's time on a simulated device from a GPU's cost table), with
overlap on and copy drafting (adaptive): the step after a drafting step is always queued ahead
(its rows moved on the device by what the draft got, its drafts the copies' continuations),
always waits for the drafting step's tokens (then drafts are found with them known, and the device
idles), or as OverlapChoice decides from what each way gave so far ("learned"). The ways run in
turns at each number of running sequences; reported: drafting over plain decoding (with overlap)
for each, medians of the rounds.

    python benchmarks/after_drafts.py
    python benchmarks/after_drafts.py --batches 16,256 --steps 400 --rounds 3
"""
from __future__ import annotations

import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")  # nothing learned before steers this run

import measure  # noqa: E402
import overlap_steps  # noqa: E402
from host_overhead import busy_requests  # noqa: E402
from simulated_device import load_table  # noqa: E402
from traces import load_workload  # noqa: E402

from engine import DEFAULT_MODEL  # noqa: E402
from engine.overlap_choice import OverlapChoice  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

LEARNED = OverlapChoice.ahead
WAYS = {"learned": LEARNED, "ahead": lambda self, seqs: True, "wait": lambda self, seqs: False}


def run(batch: int, way: str, requests, tokenizer: Tokenizer, table, steps: int, warmup: int) -> dict:
    """One run of drafting with overlap, the step after a drafting step as `way` says."""
    OverlapChoice.ahead = WAYS[way]
    try:
        return overlap_steps.run(batch, True, "on", requests, tokenizer, table, steps, warmup)
    finally:
        OverlapChoice.ahead = LEARNED


def main(argv: list[str] | None = None) -> dict:
    args = overlap_steps.arguments(__doc__, "every way in turns, this many times").parse_args(argv)
    table, described = load_table(args.table)
    tokenizer = Tokenizer(DEFAULT_MODEL)
    workload = load_workload("passk", tokenizer)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        requests = busy_requests(workload, batch)
        plain = overlap_steps.run(batch, False, "on", requests, tokenizer, table, args.steps, args.warmup)
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        for r in range(args.rounds):
            for way in (list(WAYS) if r % 2 == 0 else list(reversed(WAYS))):
                runs[way].append(run(batch, way, requests, tokenizer, table, args.steps, args.warmup))
        row = {"batch": batch, "plain_tokens_per_s": plain["tokens_per_s"], "runs": runs,
               "over_plain": {way: statistics.median(r["tokens_per_s"] for r in rs) / plain["tokens_per_s"]
                              for way, rs in runs.items()},
               "overlapped": {way: statistics.fmean(r["overlapped"] / max(r["steps"], 1) for r in rs)
                              for way, rs in runs.items()}}
        rows.append(row)
        print(f"batch {batch:4d}: " + ", ".join(f"{w} {v:.3f}" for w, v in row["over_plain"].items()), flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "table": described,
               "rows": rows}
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    lines = overlap_steps.header("After a drafting step: queued ahead, waiting, or learned", results,
                                 "overlap on, copy drafting (adaptive)")
    lines += ["Drafting over plain decoding with overlap (tokens per second, medians of the rounds; plain: one run "
              "per batch), the step after a drafting step queued ahead, waiting for its tokens, or as "
              "engine/overlap_choice.py learns; in brackets, the share of the steps queued ahead.", ""]
    lines += measure.markdown_table(
        ["running", "plain tok/s", *(way for way in WAYS)],
        [[r["batch"], f"{r['plain_tokens_per_s']:.0f}",
          *(f"{r['over_plain'][way]:.3f} ({r['overlapped'][way]:.0%})" for way in WAYS)] for r in results["rows"]])
    measure.write_results(out_dir, "after_drafts", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
