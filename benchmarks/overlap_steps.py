"""Overlapped steps against synchronous ones, beside a simulated GPU: what queuing the next plain
decode step before the previous step's tokens reach the host saves (EngineConfig.overlap_steps).

The engine runs its real host side (scheduling, the step's inputs, sampling rows, applying tokens,
the proposer, outputs) around engine.models.stub.StubModel, the pass@10 traces replayed, and a
simulated device stands in for the GPU: each step's forward is queued on it and takes the time a
cost table gives for its shape (default: the H200 suite's step times, benchmarks/host_overhead.py's
GPU_TABLE, whose figures hold that machine's host time too: the device's part is taken as the
whole, which makes the host's share, and what overlapping it saves, look smaller than it is); the
device runs one step at a time, and reading a step's tokens back waits (in time.sleep, the GIL
released, as a CUDA read-back does) until the device has finished it. The engine's own clock
sees it all, so the drafting policy learns its costs as beside a GPU.

At each number of running sequences the same requests run with overlap off and on, in turns
(--rounds), plain decoding and copy drafting (the adaptive policy); reported: ms per step
(wall), tokens per second, the overlapped steps' share, and on / off.

    python benchmarks/overlap_steps.py                          # 1, 16, 64, 256 running
    python benchmarks/overlap_steps.py --batches 256 --rounds 3 --steps 200
    python benchmarks/overlap_steps.py --batches 64 --penalized 1    # one request of ten samples with a penalty

--penalized K: the first K requests carry a repetition penalty, as a client may send: their rows
are sampled row by row, each penalized by a history that ends, in a step queued ahead, in tokens
on the device (LLMEngine._device_tails). The stub's rows then hold the whole vocabulary (a penalty
reads its history's ids there), which this host samples: its share of a step grows (on a GPU
those rows are sampled on the device), as does what overlapping it saves.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")  # nothing learned before steers this run

import measure  # noqa: E402
from host_overhead import GPU_TABLE, busy_requests  # noqa: E402
from simulated_device import load_table  # noqa: E402
from traces import load_workload, replay_params  # noqa: E402

from engine import DEFAULT_MODEL, EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.models.registry import read_model_config  # noqa: E402
from engine.models.stub import StubModel  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from fastcodellama.drafting import build_proposer  # noqa: E402


class SimulatedDevice:
    """One stream: a queued step starts when the previous one ends (or at its launch, if later)
    and takes the table's time; a read-back waits for its step's end."""

    def __init__(self, table) -> None:
        self.table, self.free_at = table, 0.0
        self.runs: list[tuple[float, float]] = []  # (start, end) of every step queued

    def queue(self, seqs: int, rows: int) -> float:
        """Queues a step; returns when it ends."""
        start = max(time.perf_counter(), self.free_at)
        self.free_at = start + self.table(seqs, rows, 0.0)
        self.runs.append((start, self.free_at))
        return self.free_at

    def busy(self, start: float, end: float) -> float:
        """The share of [start, end] the device spent running steps (the rest it waited on the host)."""
        spent = sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.runs)
        return spent / (end - start) if end > start else 0.0

    @staticmethod
    def wait_until(t: float) -> None:
        left = t - time.perf_counter()
        if left > 0:
            time.sleep(left)


class _Queued:
    """A step's Sampled whose read-back waits for the simulated device to finish the step."""

    def __init__(self, sampled, ready_at: float) -> None:
        self._sampled, self._ready_at = sampled, ready_at

    def result(self):
        SimulatedDevice.wait_until(self._ready_at)
        return self._sampled.result()

    def __getattr__(self, name: str):
        return getattr(self._sampled, name)


def on_device(engine: LLMEngine, device: SimulatedDevice) -> SimulatedDevice:
    """Queues each forward the engine runs on `device`, and makes its read-backs wait for it."""
    execute, launch = engine.runner.execute, engine.sampler.launch
    ends: list[float] = []

    def queued_execute(out, *fed):
        logits = execute(out, *fed)
        ends.append(device.queue(len(out.scheduled), out.num_tokens))
        return logits

    def queued_launch(logits, rows, *shift):
        return _Queued(launch(logits, rows, *shift), ends[-1])

    engine.runner.execute = queued_execute
    engine.sampler.launch = queued_launch
    return device


def run(batch: int, drafting: bool, overlap: str, requests, tokenizer: Tokenizer, table, steps: int,
        warmup: int, penalized: int = 0) -> dict:
    config = EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, 8 * batch), num_kv_blocks=8192,
                          overlap_steps=overlap)
    engine = LLMEngine(config, proposer=build_proposer() if drafting else None,
                       # (a penalty reads the history's ids in the row: the rows are the vocabulary's then)
                       model=StubModel(read_model_config(DEFAULT_MODEL), columns=None if penalized else 1),
                       tokenizer=tokenizer)
    device = on_device(engine, SimulatedDevice(table))
    for i, r in enumerate(requests):
        params = replay_params("passk", r)
        engine.add_request(f"r{i}", r.prompt, dataclasses.replace(params, repetition_penalty=1.1) if i < penalized
                           else params)
    for _ in range(warmup):
        engine.step(collect="finished")
    before = engine.stats()
    start = time.perf_counter()
    done = 0
    while done < steps and engine.has_unfinished():
        engine.step(collect="finished")
        done += 1
    end = time.perf_counter()
    seconds = end - start
    after = engine.stats()
    tokens = after.generated_tokens - before.generated_tokens
    return {"batch": batch, "drafting": drafting, "overlap": overlap, "steps": done, "seconds": seconds,
            "ms_per_step": 1e3 * seconds / max(done, 1), "tokens_per_s": tokens / seconds,
            "overlapped": after.overlapped_steps - before.overlapped_steps,
            "drafted": after.spec.total_drafted - before.spec.total_drafted, "device_busy": device.busy(start, end)}


def arguments(doc: str, rounds: str) -> argparse.ArgumentParser:
    """The options of a run beside the simulated device (this script's and benchmarks/after_drafts.py's)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--steps", type=int, default=150, help="steps timed per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help=rounds)
    ap.add_argument("--table", default=GPU_TABLE, help="the device's step costs (a benchmarks/gpu/ result)")
    ap.add_argument("--penalized", type=int, default=0, help="requests with a repetition penalty (row by row)")
    ap.add_argument("--out", default=measure.RESULTS)
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = arguments(__doc__, "off and on in turns, this many times each").parse_args(argv)
    table, described = load_table(args.table)
    tokenizer = Tokenizer(DEFAULT_MODEL)
    requests = load_workload("passk", tokenizer)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for drafting in (False, True):
            runs = {"off": [], "on": []}
            for r in range(args.rounds):
                for overlap in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    runs[overlap].append(run(batch, drafting, overlap, busy_requests(requests, batch), tokenizer,
                                             table, args.steps, args.warmup, args.penalized))
            row = summary(batch, drafting, runs)
            rows.append(row)
            print(f"batch {batch:4d} {'drafting' if drafting else 'plain':>8}: {row['off_ms']:.2f} -> "
                  f"{row['on_ms']:.2f} ms a step, tokens/s on/off {row['speedup']:.3f}", flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "table": described,
               "rows": rows}
    write(results, args.out)
    return results


def summary(batch: int, drafting: bool, runs: dict[str, list[dict]]) -> dict:
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    ms = {k: statistics.median(r["ms_per_step"] for r in v) for k, v in runs.items()}
    on = runs["on"]
    return {"batch": batch, "drafting": drafting, "off_ms": ms["off"], "on_ms": ms["on"],
            "off_tokens_per_s": med["off"], "on_tokens_per_s": med["on"], "speedup": med["on"] / med["off"],
            "overlapped_share": statistics.fmean(r["overlapped"] / max(r["steps"], 1) for r in on),
            "off_busy": statistics.fmean(r["device_busy"] for r in runs["off"]),
            "on_busy": statistics.fmean(r["device_busy"] for r in on),
            "pairs": [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(runs["off"], on)],
            "runs": runs}


def header(title: str, results: dict, systems: str) -> list[str]:
    """A results file's first lines beside the simulated device (this script's and after_drafts.py's)."""
    return [f"# {title} ({results['date']})", "", f"machine: {results['machine']}",
            f"device: each step's time from {results['table']}",
            f"model: engine.models.stub.StubModel, pass@10 traces replayed; {systems}", ""]


def write(results: dict, out_dir: str) -> None:
    lines = header("Overlapped steps beside a simulated device", results, "plain, and copy drafting (adaptive)")
    if results["args"].get("penalized"):
        lines += [f"the first {results['args']['penalized']} requests (of 10 samples each) carry a repetition "
                  "penalty: sampled row by row, their rows' whole vocabulary on this host", ""]
    lines += ["ms per step and tokens per second: medians of the rounds; on / off: tokens per second, and each "
              "round's pair; overlapped: the share of the timed steps queued ahead (overlap on); busy: the share "
              "of the time the device ran steps (the rest it waited on the host), mean of the rounds.", ""]
    lines += measure.markdown_table(
        ["running", "system", "off ms/step", "on ms/step", "off tok/s", "on tok/s", "on / off", "pairs", "overlapped",
         "busy off", "busy on"],
        [[r["batch"], "drafting" if r["drafting"] else "plain", f"{r['off_ms']:.2f}", f"{r['on_ms']:.2f}",
          f"{r['off_tokens_per_s']:.0f}", f"{r['on_tokens_per_s']:.0f}", f"{r['speedup']:.3f}",
          " ".join(f"{p:.3f}" for p in r["pairs"]), f"{r['overlapped_share']:.0%}", f"{r['off_busy']:.0%}",
          f"{r['on_busy']:.0%}"] for r in results["rows"]])
    lines += ["", "Drafting over plain decoding at each batch (tokens per second, medians of the rounds): what "
              "turning drafting on gives with overlap on and with it off, and, with overlap, what the same steps "
              "would give if the device never waited on the host (drafting's tokens per second over its busy "
              "share): the most any further overlap of drafting steps can bring.", ""]
    lines += measure.markdown_table(["running", "with overlap", "without overlap", "device never waiting"],
                                    drafting_over_plain(results["rows"]))
    measure.write_results(out_dir, "overlap_steps", results, "\n".join(lines) + "\n")


def drafting_over_plain(rows: list[dict]) -> list[list]:
    """Per batch that ran both systems: drafting's tokens per second over plain decoding's, on and off,
    and on over the device's busy share (the device never waiting on the host)."""
    by = {(r["batch"], r["drafting"]): r for r in rows}
    return [[batch, f"{d['on_tokens_per_s'] / p['on_tokens_per_s']:.3f}",
             f"{d['off_tokens_per_s'] / p['off_tokens_per_s']:.3f}",
             f"{d['on_tokens_per_s'] / max(d['on_busy'], 1e-9) / p['on_tokens_per_s']:.3f}"]
            for (batch, drafting), d in by.items() if drafting and (p := by.get((batch, False))) is not None]


if __name__ == "__main__":
    main()
