"""What a step costs on the host: the engine around a forward that costs nothing.

The model is engine.models.stub.StubModel (fixed logits, no layers); the tokens come from the real
traces (pass@10 of CodeLlama-7B-Instruct, replayed), so scheduling, the step's batch, sampling
rows, the sampler, verification, the proposer, detokenization and outputs all do their real work.
At each number of running sequences the engine runs plain and with copy drafting, and the mean
time of a step is split by phase. On a GPU this is the time the device would wait on Python.

    python benchmarks/host_overhead.py                       # 1, 16, 64, 256 running sequences
    python benchmarks/host_overhead.py --batches 256 --steps 200
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402
from traces import load_workload, replay_params  # noqa: E402

from engine import DEFAULT_MODEL, EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.models.registry import read_model_config  # noqa: E402
from engine.models.stub import StubModel  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from fastcodellama.drafting import SpecConfig, build_proposer  # noqa: E402

TARGET_MS = {1: 0.5, 256: 3.0}  # issue #20: at most 0.5 ms per step at batch 1 and 3 ms at 256


class PhaseTimer:
    """Wraps methods so that each call's time is added to its phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0

        setattr(owner, name, timed)


class TimedCall:
    """A callable's calls timed into a phase (special methods are looked up on the type, so an
    instance's __call__ cannot be wrapped in place)."""

    def __init__(self, inner, timer: PhaseTimer, phase: str) -> None:
        self.inner, self.timer, self.phase = inner, timer, phase

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.timer.seconds[self.phase] += time.perf_counter() - t0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def build_engine(batch: int, drafting: bool, tokenizer: Tokenizer) -> LLMEngine:
    config = EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, 8 * batch), num_kv_blocks=8192)
    model = StubModel(read_model_config(DEFAULT_MODEL))
    proposer = build_proposer(SpecConfig()) if drafting else None
    return LLMEngine(config, proposer=proposer, model=model, tokenizer=tokenizer)


def instrument(engine: LLMEngine, timer: PhaseTimer) -> None:
    timer.wrap(engine.scheduler, "schedule", "schedule")
    timer.wrap(engine.runner, "execute", "batch + forward")
    timer.wrap(engine, "_sampling_rows", "sampling rows")
    engine.sampler = TimedCall(engine.sampler, timer, "sampler")
    timer.wrap(engine.scheduler, "postprocess", "verify + append + KV")
    timer.wrap(engine, "_account", "proposer feedback")
    timer.wrap(engine, "_propose", "propose")
    timer.wrap(engine, "_outputs", "outputs")


def run(batch: int, drafting: bool, requests, tokenizer: Tokenizer, steps: int, warmup: int) -> dict:
    engine = build_engine(batch, drafting, tokenizer)
    for i, r in enumerate(requests):
        engine.add_request(f"r{i}", r.prompt, replay_params("passk", r))
    timer = PhaseTimer()
    step_s: list[float] = []
    for i in range(warmup + steps):
        if not engine.has_unfinished():
            break
        if i == warmup:
            instrument(engine, timer)
        t0 = time.perf_counter()
        engine.step()
        if i >= warmup:
            step_s.append(time.perf_counter() - t0)
    n = max(1, len(step_s))
    spec = engine.stats().spec
    return {"batch": batch, "drafting": drafting, "steps": len(step_s),
            "mean_ms": 1e3 * statistics.fmean(step_s) if step_s else 0.0,
            "median_ms": 1e3 * statistics.median(step_s) if step_s else 0.0,
            "phases_ms": {k: 1e3 * v / n for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1])},
            "drafted": spec.total_drafted, "accepted": spec.total_accepted}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--steps", type=int, default=300, help="steps timed per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    tokenizer = Tokenizer(DEFAULT_MODEL)
    requests = load_workload("passk", tokenizer)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        chosen = requests[: max(2, -(-4 * batch // 10))]  # enough to keep `batch` sequences running
        for drafting in (False, True):
            row = run(batch, drafting, chosen, tokenizer, args.steps, args.warmup)
            rows.append(row)
            phases = ", ".join(f"{k} {v:.3f}" for k, v in row["phases_ms"].items())
            print(f"batch {batch:4d} {'drafting' if drafting else 'plain   '}: {row['mean_ms']:.3f} ms/step "
                  f"(median {row['median_ms']:.3f}; target {TARGET_MS.get(batch, '-')}) [{phases}]", flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": rows}
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    lines = [f"# Host overhead per step ({results['date']})", "", f"machine: {results['machine']}",
             "model: engine.models.stub.StubModel (a forward that costs nothing), pass@10 traces replayed", "",
             "| running | system | ms/step (mean) | median | target | phases (ms/step) |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        phases = "; ".join(f"{k} {v:.3f}" for k, v in r["phases_ms"].items())
        lines.append(f"| {r['batch']} | {'drafting' if r['drafting'] else 'plain'} | {r['mean_ms']:.3f} | "
                     f"{r['median_ms']:.3f} | {TARGET_MS.get(r['batch'], '')} | {phases} |")
    measure.write_results(out_dir, "host_overhead", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
