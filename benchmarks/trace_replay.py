"""Copy drafting on real model behaviour: the engine replays recorded HumanEval outputs.

Each request carries the recorded continuations of real code models (shared/data/real_traces,
tokenized with the served model's tokenizer) as `SamplingParams.replay_token_ids`: wherever
the engine would take the argmax or sample, it takes the recorded token instead. Everything
else runs for real (scheduler, proposer and its indexes, draft budget and policy, the verify
forward over the paged cache, rollback, block accounting), so a draft token is accepted
exactly when the real model would have produced it. Every output is checked against its
trace token for token.

Workloads:
  greedy  CodeLlama-7B greedy, 164 problems (file 1)
  passk   CodeLlama-7B-Instruct, 10 samples per problem as n=10 requests (file 2)
  pass100 CodeGen-16B-mono, 100 samples per problem as n=100 requests (file 3, --pass100-tasks)
For each: plain vs drafting at each maximum of running sequences in --batches (same requests,
fresh proposer per run), tokens/s, tokens per forward, drafted/accepted by source, the share of
step time spent proposing. JSON + markdown + PNG under benchmarks/results/.

    python benchmarks/trace_replay.py                        # all workloads, default sweep
    python benchmarks/trace_replay.py --workloads greedy --batches 1,164
    python benchmarks/trace_replay.py --workloads passk --batches 64,256 --repeats 3   # best of 3 each
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402
from traces import TRACES, Request, load_workload, replay_params  # noqa: E402
from engine import DEFAULT_MODEL, LLM
from fastcodellama.drafting import SpecConfig, build_proposer

RESULTS = measure.RESULTS
# shared/measurements/copy_ceiling_real_traces.md (tokens per verify forward, k=20, proxy tokenizer).
CEILING = {"greedy": ("self, n=1", 1.92), "passk": ("self + 10 siblings side by side", 2.17),
           "pass100": ("(not in the ceiling file)", None)}


def run(model: str, requests: list[Request], name: str, batch: int, drafting: bool,
        spec: SpecConfig | None = None) -> dict:
    """One run: plain, the default drafting, or drafting with `spec` (e.g. a fixed k)."""
    proposer = build_proposer(spec or SpecConfig()) if drafting else None
    llm = LLM(model, proposer=proposer, max_num_seqs=batch, max_num_batched_tokens=max(2048, batch * 8))
    engine = llm.engine
    if spec is not None and spec.policy == "fixed":
        measure.hindsight_baseline(engine)
    start, cpu_start = time.perf_counter(), time.process_time()
    outs = llm.generate([r.prompt for r in requests], [replay_params(name, r) for r in requests], use_tqdm=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return with_rates({"batch": batch, "drafting": drafting, **outcome(engine, requests, outs)}, wall, cpu)


def with_rates(row: dict, wall: float, cpu: float) -> dict:
    """The row with the seconds a system took (wall, and the process's CPU time) and its tokens per second of each."""
    return {**row, "wall_s": wall, "tokens_per_s": row["tokens"] / wall, "cpu_s": cpu,
            "tokens_per_cpu_s": row["tokens"] / max(cpu, 1e-9)}


def outcome(engine, requests: list[Request], outs) -> dict:
    """What a run of `requests` gave (outputs in their order): tokens, tokens per forward, drafts
    by source, whether every output equals its trace then EOS, blocks still held."""
    stats = engine.stats()
    exact, tokens, steps, drafted, accepted = True, 0, 0, {}, {}
    for request, out in zip(requests, outs):
        for c in out.outputs:
            trace = request.continuations[c.index]
            exact &= tuple(c.token_ids[:len(trace)]) == trace and c.token_ids[len(trace):] == [engine.eos_id]
            tokens += len(c.token_ids)
            steps += c.spec.decode_steps
            for src, n in c.spec.drafted.items():
                drafted[src] = drafted.get(src, 0) + n
            for src, n in c.spec.accepted.items():
                accepted[src] = accepted.get(src, 0) + n
    return {"requests": len(requests), "sequences": sum(len(r.continuations) for r in requests),
            "tokens": tokens, "tokens_per_forward": tokens / max(1, steps),
            "engine_steps": stats.steps, "drafted": drafted, "accepted": accepted,
            "propose_share": stats.propose_time / max(1e-9, stats.forward_time + stats.propose_time),
            "replay_exact": bool(exact) and len(outs) == len(requests),
            "leaked_blocks": stats.num_blocks_total - stats.num_blocks_free}


def best_of(repeats: int, model: str, requests: list[Request], name: str, batch: int,
            fixed_k: tuple[int, ...] = ()) -> tuple[dict, dict]:
    """Plain and drafting run alternately (and each fixed k once per repeat, after them); the
    fastest of each (other load on a shared machine only ever adds time). The drafting row gets
    the best fixed policy in hindsight: the fastest of plain and every fixed k."""
    runs: dict[bool, list[dict]] = {False: [], True: []}
    fixed: dict[int, list[dict]] = {k: [] for k in fixed_k}
    for _ in range(repeats):
        for drafting in (False, True):
            runs[drafting].append(run(model, requests, name, batch, drafting))
        for k in fixed_k:
            fixed[k].append(run(model, requests, name, batch, True, SpecConfig(policy="fixed", k=k)))
    plain, draft = (max(runs[d], key=lambda r: r["tokens_per_s"]) for d in (False, True))
    if fixed_k:
        against_best_fixed(draft, plain, {k: max(r["tokens_per_s"] for r in rs) for k, rs in fixed.items()})
    # Each drafting run against the plain run just before it: slow drift of the machine's speed
    # cancels in a pair, where a fastest-of-each could pair a fast moment with a slow one.
    draft["pair_ratios"] = [d["tokens_per_s"] / p["tokens_per_s"] for p, d in zip(runs[False], runs[True])]
    # The same pairs in the process's CPU time: work done, which time a virtual machine's
    # neighbours take (steal) does not inflate; on a CPU a step's work is its forward's.
    draft["cpu_pair_ratios"] = [d["tokens_per_cpu_s"] / p["tokens_per_cpu_s"] for p, d in zip(runs[False], runs[True])]
    for r in (plain, draft):
        r["repeats"] = repeats
        r["replay_exact"] = all(x["replay_exact"] for x in runs[False] + runs[True])
    return plain, draft


def against_best_fixed(draft: dict, plain: dict, fixed_tokens_per_s: dict[int, float]) -> None:
    """Sets the drafting row against the best fixed policy in hindsight: the fastest of plain and
    every fixed k (tokens per second by k)."""
    best = {f"fixed k={k}": rate for k, rate in fixed_tokens_per_s.items()}
    best["plain"] = plain["tokens_per_s"]
    label = max(best, key=best.get)
    draft["best_fixed"], draft["vs_best_fixed"] = label, draft["tokens_per_s"] / best[label]
    draft["fixed_tokens_per_s"] = best


def subset(requests: list[Request], batch: int, min_sequences: int) -> list[Request]:
    """Enough requests to keep `batch` sequences busy for a while (all of them at large batch)."""
    per = len(requests[0].continuations)
    want = max(min_sequences, 4 * batch)
    return requests[: max(1, min(len(requests), math.ceil(want / per)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--traces", default=TRACES)
    ap.add_argument("--workloads", default="greedy,passk,pass100")
    ap.add_argument("--batches", default="1,4,16,64,256")
    ap.add_argument("--min-sequences", type=int, default=16, help="smallest number of sequences per run")
    ap.add_argument("--pass100-tasks", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1,
                    help="run plain and drafting alternately this many times; keep each one's fastest run")
    ap.add_argument("--fixed-k", default="",
                    help="also run fixed draft lengths (e.g. 1,2,4,8,16,20): the best fixed policy in hindsight")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    # The step costs learned in this invocation are kept between its runs (as a user's second run
    # starts informed), in a directory of its own: one left by earlier invocations, or by another
    # version of the engine, would make runs of the same code draft differently.
    if "FASTCODELLAMA_STEP_COST_DIR" not in os.environ:
        os.environ["FASTCODELLAMA_STEP_COST_DIR"] = tempfile.mkdtemp(prefix="fastcodellama_step_cost_")
    tokenizer = LLM(args.model).tokenizer
    results = {"machine": measure.machine(), "date": measure.utc_now(), "model": args.model,
               "args": vars(args), "workloads": {}}
    for name in args.workloads.split(","):
        requests = load_workload(name, tokenizer, args.traces, args.pass100_tasks)
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            chosen = subset(requests, batch, args.min_sequences)
            fixed_k = tuple(int(k) for k in args.fixed_k.split(",") if k.strip())
            plain, draft = best_of(args.repeats, args.model, chosen, name, batch, fixed_k)
            draft["speedup"] = draft["tokens_per_s"] / plain["tokens_per_s"]
            rows += [plain, draft]
            print(f"{name} batch {batch}: {len(chosen)} requests, plain {plain['tokens_per_s']:.1f} tok/s, "
                  f"drafting {draft['tokens_per_s']:.1f} tok/s ({draft['speedup']:.2f}x; pairs "
                  f"{' '.join(f'{x:.2f}' for x in draft['pair_ratios'])}; in CPU time "
                  f"{' '.join(f'{x:.2f}' for x in draft['cpu_pair_ratios'])}), "
                  f"{draft['tokens_per_forward']:.3f} tokens/forward, exact {plain['replay_exact'] and draft['replay_exact']}"
                  + (f", {draft['vs_best_fixed']:.3f} of the best fixed ({draft['best_fixed']})" if fixed_k else ""),
                  flush=True)
        results["workloads"][name] = rows
    write(results, args.out)


def write(results: dict, out_dir: str) -> None:
    lines = [f"# Trace replay ({results['date']})", "", f"machine: {results['machine']}", f"model: {results['model']}",
             f"each figure: the fastest of {results['args'].get('repeats', 1)} alternating run(s) of plain and drafting; "
             "paired ratios: each drafting run over the plain run just before it, in tokens per second of "
             "wall time and of the process's CPU time",
             "", "| workload | max running | requests | seqs | system | tokens | tokens/s | speedup | tokens/forward "
             "| ceiling | drafted (self/sibling/other) | accepted (self/sibling/other) | propose share | exact | leaked "
             "| paired ratios | paired ratios, CPU time | vs best fixed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results["workloads"].items():
        label, ceiling = CEILING[name]
        for r in rows:
            by = lambda d: "/".join(str(d.get(s, 0)) for s in ("self", "sibling", "other"))  # noqa: E731
            lines.append(
                f"| {name} | {r['batch']} | {r['requests']} | {r['sequences']} | {'drafting' if r['drafting'] else 'plain'} "
                f"| {r['tokens']} | {r['tokens_per_s']:.1f} | {r.get('speedup', 1.0):.2f}x | {r['tokens_per_forward']:.3f} "
                f"| {f'{ceiling} ({label})' if ceiling and r['drafting'] else ''} | {by(r['drafted'])} | {by(r['accepted'])} "
                f"| {r['propose_share']:.1%} | {r['replay_exact']} | {r['leaked_blocks']} "
                f"| {' '.join(f'{x:.2f}' for x in r.get('pair_ratios', []))} "
                f"| {' '.join(f'{x:.2f}' for x in r.get('cpu_pair_ratios', []))} | {_vs_best_fixed(r)} |")
    paths = measure.write_results(out_dir, "trace_replay", results, "\n".join(lines), lambda path: plot(results, path))
    print("wrote " + ", ".join(paths.values()))


def _vs_best_fixed(row: dict) -> str:
    if "vs_best_fixed" not in row:
        return ""
    return f"{row['vs_best_fixed']:.3f} ({row['best_fixed']})"


def plot(results: dict, path: str) -> None:
    import matplotlib  # ImportError: measure.write_results skips the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["workloads"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 8), squeeze=False)
    for i, name in enumerate(names):
        rows = results["workloads"][name]
        for drafting, style in ((False, "o-"), (True, "s-")):
            pts = [(r["batch"], r["tokens_per_s"]) for r in rows if r["drafting"] == drafting]
            axes[0][i].plot(*zip(*pts), style, label="drafting" if drafting else "plain")
        axes[0][i].set(xscale="log", title=f"{name}: tokens/s by max running sequences", xlabel="max running sequences")
        axes[0][i].legend()
        drafted = [r for r in rows if r["drafting"]]
        sources = ("self", "sibling", "other")
        bottom = [0.0] * len(drafted)
        for src in sources:
            vals = [r["accepted"].get(src, 0) / max(1, r["sequences"]) for r in drafted]
            axes[1][i].bar([str(r["batch"]) for r in drafted], vals, bottom=bottom, label=src)
            bottom = [b + v for b, v in zip(bottom, vals)]
        axes[1][i].set(title=f"{name}: accepted draft tokens per sequence, by source", xlabel="max running sequences")
        axes[1][i].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
