"""What a step costs on the host: the engine around a forward that costs nothing.

The model is engine.models.stub.StubModel (fixed logits, no layers); the tokens come from the real
traces (pass@10 of CodeLlama-7B-Instruct, replayed), so scheduling, the step's batch, sampling
rows, the sampler, verification, the proposer, detokenization and outputs all do their real work.
At each number of running sequences the engine runs plain, with copy drafting as its adaptive
policy decides here, drafting at every step (the fixed policy, --fixed-k), and with the adaptive
policy told each step's time from a GPU's cost table (--table, simulated_device.py's clock): the
stub's steps cost next to nothing, so the adaptive policy drafts as this machine's costs say, while
on a GPU, where draft rows are nearly free, it drafts at most steps of a large batch, and the host
then pays for the search, the verification and the proposer's feedback of the sequences it drafts
for. Drafting at every step is the most a step can cost; "GPU costs" is what the policy's own
choices cost the host beside that GPU (this host's search time is what the policy weighs). The
mean time of a step is split by phase. On a GPU this is the time the device would wait on Python.

Every figure is taken on two clocks: wall time, and the process's CPU time (time.process_time:
all its threads, so the sampler's OpenMP threads count; another process on the same cores does
not). Phases are exclusive (a phase called inside another is not counted twice); "other" is what
step() does outside every listed phase. "host" leaves out the stub's forward (the logits it
materializes stand for a device's output), and "host w/o sampler" also the sampler: on a GPU the
sampler runs on the device, on a CPU it is host time.

    python benchmarks/host_overhead.py                       # 1, 16, 64, 256 running sequences
    python benchmarks/host_overhead.py --batches 256 --steps 200
    python benchmarks/host_overhead.py --collect finished    # outputs as the HumanEval job takes them
    python benchmarks/host_overhead.py --logits device       # the host of a GPU: no logits rows on it
    python benchmarks/host_overhead.py --fixed-k 0           # plain and adaptive drafting only

--collect: "all" (the default) builds every step an output of every request that changed, as a
server streaming to its clients does; "finished" only of the requests that ended, as the
HumanEval job does.
--logits: "host" (the default) gives every row the vocabulary's logits in host memory and samples
them there, as on a CPU: reading hundreds of such rows each step evicts the host's caches, and
the Python after it runs slower for that. "device" gives each row one column, as a GPU that keeps
its logits and sends back only the sampled ids: the host's Python runs as it would beside a GPU,
and the sampler's time is then mostly its own host-side work (rows to knobs, seeds, forced ids),
which a GPU's host pays too.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
# Steps of this run teach nothing to later runs, and nothing learned before steers this one's drafting.
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")

import measure  # noqa: E402
from traces import load_workload, replay_params  # noqa: E402

from engine import DEFAULT_MODEL, EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.models.registry import read_model_config  # noqa: E402
from engine.models.stub import StubModel  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from fastcodellama.drafting import SpecConfig, build_proposer  # noqa: E402
from simulated_device import SimClock, load_table  # noqa: E402

# The H200's measured step costs (benchmarks/gpu/suite.py, the reference path with its cost table).
GPU_TABLE = os.path.join(measure.RESULTS, "gpu_suite_20261204T171846.json")
TARGET_MS = {1: 0.5, 256: 3.0}  # issue #20: at most 0.5 ms per step at batch 1 and 3 ms at 256
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
COLLECT = {"all": "every request that changed, every step (a server streaming to its clients)",
           "finished": "only requests that ended (the HumanEval job)"}
# Logits columns per row: a CPU's rows span the vocabulary in host memory (reading 256 of them
# evicts the host's caches every step); a GPU keeps its rows on the device and sends back ids.
LOGITS_COLUMNS = {"host": None, "device": 1}
LOGITS = {"host": "full rows in host memory, sampled there (a CPU)",
          "device": "one column per row: the host never reads a vocabulary's rows (a GPU keeps them); "
                    "the sampler's time is then mostly its host-side work"}
STUB_FORWARD = "forward (stub)"
SAMPLER = "sampler"
OTHER = "other"


class PhaseTimer:
    """Wraps methods so that each call's time, on every clock, is added to its phase, less the
    time of the phases called inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {c: defaultdict(float) for c in CLOCKS}
        self._inner: list[list[float]] = []  # per open call: the time of the phases inside it, by clock

    def timed(self, inner, phase: str):
        def call(*args, **kwargs):
            self._inner.append([0.0] * len(CLOCKS))
            t0 = [clock() for clock in CLOCKS.values()]
            try:
                return inner(*args, **kwargs)
            finally:
                spent = [clock() - t for clock, t in zip(CLOCKS.values(), t0)]
                nested = self._inner.pop()
                for i, name in enumerate(CLOCKS):
                    self.seconds[name][phase] += spent[i] - nested[i]
                    if self._inner:
                        self._inner[-1][i] += spent[i]

        return call

    def wrap(self, owner: object, name: str, phase: str) -> None:
        setattr(owner, name, self.timed(getattr(owner, name), phase))


def wrap_sampler(engine, wrap) -> None:
    """Wraps the sampler's work with `wrap` (a function of a function), in place: its launch and
    its result's read-back (Sampler.launch, Sampled.result), or, in a checkout from before them,
    its call."""
    sampler = engine.sampler
    if not hasattr(sampler, "launch"):
        engine.sampler = wrap(sampler)
        return
    launch = wrap(sampler.launch)

    def launched(*args, **kwargs):
        sampled = launch(*args, **kwargs)
        sampled.result = wrap(sampled.result)
        return sampled
    sampler.launch = launched


class LeftOut:
    """The CPU seconds an engine's steps spend in its sampler and its model (the stub's forward and
    logits): what benchmarks/host_ab*.py take off a step's time. Wraps them in place."""

    def __init__(self, engine) -> None:
        self.seconds = 0.0
        model = engine.runner.model
        wrap_sampler(engine, self._counted)
        model.forward, model.compute_logits = self._counted(model.forward), self._counted(model.compute_logits)

    def _counted(self, f):
        def call(*args, **kwargs):
            t0 = time.process_time()
            try:
                return f(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - t0
        return call


def busy_requests(requests: list, batch: int) -> list:
    """Enough pass@10 requests to keep `batch` sequences running for the steps timed."""
    return requests[: max(2, -(-4 * batch // 10))]


def build_engine(batch: int, drafting: bool, tokenizer: Tokenizer, logits: str = "host",
                 fixed_k: int | None = None, table: str | None = None) -> LLMEngine:
    """`fixed_k`: drafting with the fixed policy (every copy found, up to k tokens, every step);
    `table`: the engine is told each step's time from that cost table (simulated_device.py), so
    that the adaptive policy drafts as on that device."""
    # On the CPU wherever it runs: on a GPU machine too, the host's Python is what is measured.
    config = EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, 8 * batch), num_kv_blocks=8192,
                          device="cpu")
    model = StubModel(read_model_config(DEFAULT_MODEL), columns=LOGITS_COLUMNS[logits])
    spec = SpecConfig() if fixed_k is None else SpecConfig(policy="fixed", k=fixed_k)
    proposer = build_proposer(spec) if drafting else None
    timer = {} if table is None else {"step_timer": SimClock(load_table(table)[0])}
    return LLMEngine(config, proposer=proposer, model=model, tokenizer=tokenizer, **timer)


def instrument(engine: LLMEngine, timer: PhaseTimer) -> None:
    timer.wrap(engine.scheduler, "schedule", "schedule")
    timer.wrap(engine.runner, "execute", "step batch")
    timer.wrap(engine.runner.model, "forward", STUB_FORWARD)
    timer.wrap(engine.runner.model, "compute_logits", STUB_FORWARD)
    timer.wrap(engine, "_sampling_rows", "sampling rows")
    wrap_sampler(engine, lambda f: timer.timed(f, SAMPLER))
    timer.wrap(engine.scheduler, "postprocess", "verify + append + KV")
    timer.wrap(engine, "_account", "proposer feedback")
    timer.wrap(engine, "_propose", "propose")
    timer.wrap(engine, "_outputs", "outputs")


def system_name(drafting: bool, fixed_k: int | None, table: str | None = None) -> str:
    if table is not None:
        return "drafting, GPU costs"
    return "plain" if not drafting else "drafting" if fixed_k is None else f"every step, k={fixed_k}"


def run(batch: int, drafting: bool, requests, tokenizer: Tokenizer, steps: int, warmup: int,
        collect: str = "all", logits: str = "host", fixed_k: int | None = None, table: str | None = None) -> dict:
    engine = build_engine(batch, drafting, tokenizer, logits, fixed_k, table)
    for i, r in enumerate(requests):
        engine.add_request(f"r{i}", r.prompt, replay_params("passk", r))
    timer = PhaseTimer()
    step_s: dict[str, list[float]] = {c: [] for c in CLOCKS}
    step = functools.partial(engine.step, collect=collect)
    for i in range(warmup + steps):
        if not engine.has_unfinished():
            break
        if i == warmup:
            instrument(engine, timer)
            step = functools.partial(timer.timed(engine.step, OTHER), collect=collect)
        t0 = {c: clock() for c, clock in CLOCKS.items()}
        step()
        if i >= warmup:
            for c, clock in CLOCKS.items():
                step_s[c].append(clock() - t0[c])
    n = max(1, len(step_s["wall"]))
    spec = engine.stats().spec
    row = {"batch": batch, "drafting": drafting, "system": system_name(drafting, fixed_k, table), "steps": len(step_s["wall"]),
           "drafted": spec.total_drafted, "accepted": spec.total_accepted}
    if engine.proposer is not None:  # what the policy is told a search costs (simulated_device.py --search-us)
        row["search_us_per_query"] = engine.proposer.search_us_at(batch)
    for c in CLOCKS:
        phases = {k: 1e3 * v / n for k, v in timer.seconds[c].items()}
        mean = 1e3 * statistics.fmean(step_s[c]) if step_s[c] else 0.0
        host = mean - phases.get(STUB_FORWARD, 0.0)
        row[c] = {"mean_ms": mean, "median_ms": 1e3 * statistics.median(step_s[c]) if step_s[c] else 0.0,
                  "host_ms": host, "host_without_sampler_ms": host - phases.get(SAMPLER, 0.0),
                  "phases_ms": dict(sorted(phases.items(), key=lambda kv: -kv[1]))}
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--steps", type=int, default=300, help="steps timed per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--collect", choices=("all", "finished"), default="all",
                    help="outputs of every changed request each step (a server), or of finished ones (the job)")
    ap.add_argument("--logits", choices=tuple(LOGITS_COLUMNS), default="host",
                    help="full logits rows in host memory, sampled there (a CPU), or one column (a GPU's stay on it)")
    ap.add_argument("--fixed-k", type=int, default=1,
                    help="also draft at every step with the fixed policy, up to K tokens a copy (0: not)")
    ap.add_argument("--table", default=GPU_TABLE,
                    help="also draft with the adaptive policy told each step's time from this cost table "
                         "(a benchmarks/gpu/ result): as it drafts on that GPU ('': not)")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    tokenizer = Tokenizer(DEFAULT_MODEL)
    requests = load_workload("passk", tokenizer)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        chosen = busy_requests(requests, batch)
        systems = [(False, None, None), (True, None, None)]
        systems += [(True, args.fixed_k, None)] if args.fixed_k else []
        systems += [(True, None, args.table)] if args.table else []
        for drafting, fixed_k, table in systems:
            row = run(batch, drafting, chosen, tokenizer, args.steps, args.warmup, args.collect, args.logits,
                      fixed_k, table)
            rows.append(row)
            print(summary_line(row), flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": rows}
    write(results, args.out)
    return results


def summary_line(row: dict) -> str:
    w, c = row["wall"], row["cpu"]
    return (f"batch {row['batch']:4d} {row['system']:>15}: "
            f"host {w['host_ms']:.3f} ms/step wall, {c['host_ms']:.3f} cpu; w/o sampler {w['host_without_sampler_ms']:.3f} "
            f"wall, {c['host_without_sampler_ms']:.3f} cpu (target {TARGET_MS.get(row['batch'], '-')})")


def write(results: dict, out_dir: str) -> None:
    rows = results["rows"]
    system = lambda r: r.get("system") or ("drafting" if r["drafting"] else "plain")  # noqa: E731
    collect, logits = results["args"]["collect"], results["args"].get("logits", "host")
    lines = [f"# Host overhead per step ({results['date']})", "", f"machine: {results['machine']}",
             "model: engine.models.stub.StubModel (a forward that costs nothing), pass@10 traces replayed",
             f"outputs (--collect {collect}): " + COLLECT[collect], f"logits (--logits {logits}): " + LOGITS[logits],
             *([f"drafting, GPU costs: the adaptive policy, the engine told each step's time from "
                f"{os.path.basename(table)} (--table): it drafts as on that GPU"] if (table := results["args"].get("table")) else []),
             "",
             "ms per step, mean. host: the step less the stub's forward; w/o sampler: also less the sampler "
             "(a GPU samples on the device). cpu: the process's CPU time (all threads).", ""]
    lines += measure.markdown_table(
        ["running", "system", "host wall", "host cpu", "w/o sampler wall", "w/o sampler cpu", "sampler cpu",
         "stub forward cpu", "target"],
        [[r["batch"], system(r), f"{r['wall']['host_ms']:.3f}", f"{r['cpu']['host_ms']:.3f}",
          f"{r['wall']['host_without_sampler_ms']:.3f}", f"{r['cpu']['host_without_sampler_ms']:.3f}",
          f"{r['cpu']['phases_ms'].get(SAMPLER, 0.0):.3f}", f"{r['cpu']['phases_ms'].get(STUB_FORWARD, 0.0):.3f}",
          TARGET_MS.get(r["batch"], "")] for r in rows])
    phases = list(dict.fromkeys(p for r in rows for p in r["cpu"]["phases_ms"]))
    for clock in CLOCKS:
        lines += ["", f"Phases, {clock} time (ms per step, mean):", ""]
        lines += measure.markdown_table(
            ["running", "system", *phases],
            [[r["batch"], system(r), *(f"{r[clock]['phases_ms'].get(p, 0.0):.3f}" for p in phases)] for r in rows])
    measure.write_results(out_dir, "host_overhead", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
