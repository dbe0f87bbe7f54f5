"""Plain and drafting replay the same traces in one process, a step of each in turn.

benchmarks/trace_replay.py runs plain and drafting one after the other; on a shared VM the two
runs of a pair can see machine speeds 10-25% apart, more than drafting moves anything at a large
batch on this CPU. Here two engines (the embedded model; one plain, one with the copy proposer)
are given the same requests and step alternately, one step each, until both are done. Each
engine's time is the sum of its own steps (wall clock, and the process's CPU time), so both see
the same moments of the machine. Every output is checked against its trace, as in trace_replay.

With --fixed-k, an engine per fixed draft length k steps in the same turns, and the drafting
engine's adaptive policy is set against the best of plain and every fixed k in hindsight, all
measured in the same moments. The best of several noisy rates reads high, so a policy that drafts
exactly as the best fixed one reads below 1.0 against it: --control K steps a second engine of
fixed k=K in the same turns and sets it against the same best (itself left out), which is what
the adaptive engine's figure is to be read beside.

    python benchmarks/replay_interleaved.py                          # greedy and pass@10 at 4, 64, 256
    python benchmarks/replay_interleaved.py --workloads pass100 --batches 64
    python benchmarks/replay_interleaved.py --batches 1,16 --fixed-k 1,2,4,8,16,20
    python benchmarks/replay_interleaved.py --workloads greedy --batches 4 --fixed-k 1,2 --control 1
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402
from in_turn import TimedSteps, step_in_turn  # noqa: E402
from trace_replay import against_best_fixed, outcome, subset, with_rates  # noqa: E402
from traces import TRACES, Request, load_workload, replay_params  # noqa: E402

from engine import DEFAULT_MODEL, LLM  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from fastcodellama.drafting import SpecConfig, build_proposer  # noqa: E402


class TimedEngine(TimedSteps):
    """One engine, its requests, and the time of its own steps."""

    def __init__(self, model: str, requests: list[Request], name: str, batch: int, drafting: bool,
                 spec: SpecConfig | None = None) -> None:
        """Plain, the default drafting, or drafting with `spec` (a fixed k)."""
        proposer = build_proposer(spec or SpecConfig()) if drafting else None
        super().__init__(LLM(model, proposer=proposer, max_num_seqs=batch,
                             max_num_batched_tokens=max(2048, batch * 8)).engine)
        if spec is not None:
            measure.hindsight_baseline(self.engine)
        self.engine: LLMEngine
        self.drafting = drafting
        self.spec = spec
        self.order = {f"r{i}": i for i in range(len(requests))}
        self.outputs: list = [None] * len(requests)
        for request_id, r in zip(self.order, requests):
            self.engine.add_request(request_id, r.prompt, replay_params(name, r))

    def step(self) -> None:
        for out in super().step():
            self.outputs[self.order[out.request_id]] = out


def run(model: str, requests: list[Request], name: str, batch: int,
        fixed_k: tuple[int, ...] = (), control: int | None = None) -> tuple[dict, dict]:
    """Plain, drafting, each fixed k and the control (a second engine of fixed k=control), stepped
    in turn (in_turn.step_in_turn); the plain and drafting rows as trace_replay.run gives them, the
    drafting row with the best fixed policy in hindsight where there are fixed ones, and the
    control's tokens per second over that same best (control_vs_best_fixed)."""
    if control is not None and control not in fixed_k:
        raise ValueError(f"the control ({control}) must be one of the fixed draft lengths {fixed_k}")
    fixed = (*fixed_k, *(() if control is None else (control,)))
    engines = [TimedEngine(model, requests, name, batch, drafting) for drafting in (False, True)]
    engines += [TimedEngine(model, requests, name, batch, True, SpecConfig(policy="fixed", k=k)) for k in fixed]
    step_in_turn(engines)
    rows = [with_rates({"batch": batch, "drafting": e.drafting,
                        **outcome(e.engine, requests, [o for o in e.outputs if o is not None])}, e.wall, e.cpu)
            for e in engines]
    plain, draft = rows[0], rows[1]
    if fixed_k:
        against_best_fixed(draft, plain, {k: r["tokens_per_s"] for k, r in zip(fixed_k, rows[2:])})
        draft["fixed_exact"] = all(r["replay_exact"] and r["leaked_blocks"] == 0 for r in rows[2:])
    if control is not None:
        best = draft["fixed_tokens_per_s"][draft["best_fixed"]]
        draft["control_k"], draft["control_vs_best_fixed"] = control, rows[-1]["tokens_per_s"] / best
    return plain, draft


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--traces", default=TRACES)
    ap.add_argument("--workloads", default="greedy,passk")
    ap.add_argument("--batches", default="4,64,256")
    ap.add_argument("--min-sequences", type=int, default=16)
    ap.add_argument("--pass100-tasks", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per case")
    ap.add_argument("--fixed-k", default="", help="also step fixed draft lengths in turn (e.g. 1,2,4,8,16,20)")
    ap.add_argument("--control", type=int, default=None,
                    help="also a second engine of this fixed k (one of --fixed-k), set against the same best")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    fixed_k = tuple(int(k) for k in args.fixed_k.split(",") if k.strip())
    if args.control is not None and args.control not in fixed_k:
        ap.error(f"--control {args.control} must be one of --fixed-k ({args.fixed_k or 'none given'})")
    if "FASTCODELLAMA_STEP_COST_DIR" not in os.environ:  # as trace_replay: learned costs kept within this invocation
        os.environ["FASTCODELLAMA_STEP_COST_DIR"] = tempfile.mkdtemp(prefix="fastcodellama_step_cost_")
    tokenizer = LLM(args.model).tokenizer
    rows = []
    for name in args.workloads.split(","):
        requests = load_workload(name, tokenizer, args.traces, args.pass100_tasks)
        for batch in (int(b) for b in args.batches.split(",")):
            chosen = subset(requests, batch, args.min_sequences)
            for _ in range(args.repeats):
                plain, draft = run(args.model, chosen, name, batch, fixed_k, args.control)
                row = {"workload": name, "batch": batch, "requests": len(chosen), "plain": plain, "drafting": draft,
                       "ratio": draft["tokens_per_s"] / plain["tokens_per_s"],
                       "cpu_ratio": draft["tokens_per_cpu_s"] / plain["tokens_per_cpu_s"]}
                rows.append(row)
                print(f"{name} batch {batch}: {len(chosen)} requests, drafting / plain {row['ratio']:.3f} "
                      f"(CPU time {row['cpu_ratio']:.3f}), {draft['tokens_per_forward']:.3f} tokens/forward, "
                      f"exact {plain['replay_exact'] and draft['replay_exact']}"
                      + (f", {draft['vs_best_fixed']:.3f} of the best fixed ({draft['best_fixed']})" if fixed_k else "")
                      + (f"; the control (fixed k={args.control}) {draft['control_vs_best_fixed']:.3f}"
                         if args.control is not None else ""),
                      flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "model": args.model, "args": vars(args),
               "rows": rows}
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    lines = [f"# Trace replay, plain and drafting interleaved step by step ({results['date']})", "",
             f"machine: {results['machine']}", f"model: {results['model']}", "",
             "Each engine's tokens per second of its own steps (the two stepped in turn in one process).", ""]
    fixed = any("best_fixed" in r["drafting"] for r in results["rows"])
    control = any("control_vs_best_fixed" in r["drafting"] for r in results["rows"])
    if fixed:
        lines += ["Fixed draft lengths stepped in the same turns; vs best fixed: the drafting engine's tokens "
                  "per second over the best of plain and every fixed k.", ""]
    if control:
        lines += ["Control: a second engine of one fixed k in the same turns, over the same best (itself left "
                  "out): what a policy drafting exactly as that fixed one reads (the best of noisy rates reads "
                  "high).", ""]
    lines += measure.markdown_table(
        ["workload", "max running", "requests", "plain tok/s", "drafting tok/s", "drafting / plain",
         "in CPU time", "tokens/forward", "drafted", "accepted", "exact", "leaked"]
        + (["best fixed", "vs best fixed", "fixed k tok/s"] if fixed else [])
        + (["control vs best fixed"] if control else []),
        [[r["workload"], r["batch"], r["requests"], f"{r['plain']['tokens_per_s']:.1f}",
          f"{r['drafting']['tokens_per_s']:.1f}", f"{r['ratio']:.3f}", f"{r['cpu_ratio']:.3f}",
          f"{r['drafting']['tokens_per_forward']:.3f}", sum(r["drafting"]["drafted"].values()),
          sum(r["drafting"]["accepted"].values()),
          r["plain"]["replay_exact"] and r["drafting"]["replay_exact"] and r["drafting"].get("fixed_exact", True),
          r["plain"]["leaked_blocks"] + r["drafting"]["leaked_blocks"]]
         + ([r["drafting"]["best_fixed"], f"{r['drafting']['vs_best_fixed']:.3f}",
             " ".join(f"{k.removeprefix('fixed k=')}: {v:.0f}" for k, v in r["drafting"]["fixed_tokens_per_s"].items()
                      if k != "plain")] if fixed else [])
         + ([f"k={r['drafting']['control_k']}: {r['drafting']['control_vs_best_fixed']:.3f}"] if control else [])
         for r in results["rows"]])
    measure.write_results(out_dir, "replay_interleaved", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
