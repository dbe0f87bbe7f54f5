"""Where a batch-1 decode step's time goes on a GPU, in one short run (about a minute on an H200).

    python benchmarks/gpu/step_anatomy.py                                   # 7B shape, bf16
    python benchmarks/gpu/step_anatomy.py --device cpu --shape tiny --dtype float32   # a smoke run

One sequence decodes with CUDA graphs on; reported:
  step       the median engine.step() (the host clock; each step ends in the copy of its token back)
  replay     the median replay of the captured batch-1 graph alone (CUDA events): the device's part
  host       step less replay: what the scheduler, the step's inputs, the sampler and the outputs add
  roofline   the weights' bytes over the measured copy bandwidth
and, with graphs off, the kernels of a few eager steps by device time (torch.profiler): which
of them a fused kernel would save.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE), HERE]

import measure  # noqa: E402
import shapes  # noqa: E402

from engine import SamplingParams  # noqa: E402


def step_times(engine, prompt: list[int], tokens: int, device: torch.device) -> list[float]:
    engine.add_request(f"r{time.monotonic_ns()}", list(prompt),
                       SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
    times = []
    while engine.has_unfinished():
        shapes.sync(device)
        start = time.perf_counter()
        engine.step()
        shapes.sync(device)
        times.append(time.perf_counter() - start)
    return times[2:]  # the prefill and the first decode


def replay_ms(engine, repeats: int = 100) -> float | None:
    graphs = engine.runner.graphs
    if graphs is None or not graphs.capture:
        return None
    bucket = min(graphs.static.buckets, key=lambda b: (b.rows, b.seqs))
    graph = graphs._graphs[bucket]
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_profile(engine, prompt: list[int], device: torch.device, top: int, steps: int = 8) -> dict:
    """Device time per decode step by kernel (profiled steps only: not the prefill)."""
    step_times(engine, prompt, 8, device)  # warm: Triton compiles
    engine.add_request("profiled", list(prompt), SamplingParams(temperature=0.0, max_tokens=steps + 4, ignore_eos=True))
    engine.step()
    engine.step()  # the prefill and the first decode stay outside
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step()
        shapes.sync(device)
    while engine.has_unfinished():
        engine.step()
    rows = []
    for e in prof.key_averages():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue  # operators on the host; their kernels are listed themselves
        device_us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if device_us > 0:
            rows.append({"kernel": e.key[:90], "calls_per_step": e.count / steps, "us_per_step": device_us / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"kernels_per_step": sum(r["calls_per_step"] for r in rows),
            "device_us_per_step": sum(r["us_per_step"] for r in rows), "top": rows[:top]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="7b", choices=sorted(shapes.SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(shapes.DTYPES))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    model = shapes.random_model(args.shape, shapes.DTYPES[args.dtype], device)
    vocab = shapes.SHAPES[args.shape]["vocab_size"]
    prompt = shapes.random_prompts(1, 160, vocab, seed=1)[0]
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = shapes.copy_bandwidth(device, (1024 if device.type == "cuda" else 64) * 2**20)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args),
               "roofline_ms": 1e3 * weight_bytes / bandwidth, "copy_bandwidth_gbs": bandwidth / 1e9}
    engine = shapes.engine_for(model, args.device, args.dtype, 1, 256, 512, 1.0)
    step_times(engine, prompt, 8, device)
    results["step_ms"] = 1e3 * statistics.median(step_times(engine, prompt, args.tokens, device))
    results["replay_ms"] = replay_ms(engine)
    if results["replay_ms"] is not None:
        results["host_ms"] = results["step_ms"] - results["replay_ms"]
    results["fast_paths"] = engine.runner.paths.describe()
    graphs = engine.runner.graphs
    results["graph_capture"] = graphs.report.describe() if graphs is not None and graphs.report is not None else None
    del engine
    shapes.free(device)
    eager = shapes.engine_for(model, args.device, args.dtype, 1, 256, 512, 1.0, cuda_graphs=False)
    results["eager"] = kernel_profile(eager, prompt, device, args.top)
    text = markdown(results)
    measure.write_results(args.out, "gpu_step_anatomy", results, text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_step_anatomy.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


def markdown(r: dict) -> str:
    fmt = measure.fmt
    lines = [f"# A batch-1 decode step's anatomy ({r['date']})", "", f"machine: {r['machine']}",
             f"shape: {r['args']['shape']}, {r['args']['dtype']}, random weights; {r['fast_paths']}",
             f"graphs: {r.get('graph_capture') or 'none captured'}", "",
             f"- step (engine.step, graphs on): {fmt(r['step_ms'], 3)} ms",
             f"- graph replay alone: {fmt(r['replay_ms'], 3)} ms; host: {fmt(r.get('host_ms'), 3)} ms",
             f"- roofline (weights / copy bandwidth {r['copy_bandwidth_gbs']:.0f} GB/s): {fmt(r['roofline_ms'], 3)} ms",
             f"- eager: {fmt(r['eager']['kernels_per_step'])} kernels, {fmt(r['eager']['device_us_per_step'] / 1e3, 3)} ms "
             "of device time per step", ""]
    lines += measure.markdown_table(["kernel", "calls per step", "us per step"],
                                    [[k["kernel"], fmt(k["calls_per_step"]), fmt(k["us_per_step"])]
                                     for k in r["eager"]["top"]])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
