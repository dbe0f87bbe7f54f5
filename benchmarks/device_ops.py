"""What a step asks of a GPU's host beyond the forward: the torch ops it dispatches, by phase.

On a GPU each torch op outside the captured graph is a kernel launch (or a copy) that the host
issues one by one, at a few microseconds each, while the device waits: their count is the part of
a step's host time that this CPU can measure exactly. The engine runs here as a GPU host runs it:
a forward that costs nothing (engine.models.stub.StubModel, whose own ops are not counted), the
PyTorch sampler (not the CPU's C kernel) over the vocabulary's logits, greedy and sampled (T 0.8,
top-p 0.95: pass@10's), with the race noise from the reference or from the Triton kernel (one
launch; under the Triton interpreter here, whose own tensor work is not counted).

    python benchmarks/device_ops.py                    # 1, 16, 64, 256 running
    python benchmarks/device_ops.py --batches 1,64 --steps 10
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections import Counter

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import measure  # noqa: E402

from engine import DEFAULT_MODEL, EngineConfig, SamplingParams  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.models.registry import read_model_config  # noqa: E402
from engine.models.stub import StubModel  # noqa: E402
from engine.sampler import Sampler  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

PROMPT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n"
SAMPLING = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=0.8, top_p=0.95)}
UNCOUNTED = "forward (stub)"


class OpCounter(TorchDispatchMode):
    """Counts the torch ops dispatched inside it by the phase the engine is in."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.phase = "other"
        self.launches = 0  # Triton kernels (not torch ops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.phase != UNCOUNTED:
            self.ops[self.phase] += 1
        return func(*args, **(kwargs or {}))

    def within(self, phase: str, inner):
        def call(*args, **kwargs):
            outer, self.phase = self.phase, phase
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = outer
        return call


class _CountedKernel:
    """A Triton kernel whose launches are counted, and whose own tensor work (the interpreter's,
    on the CPU) is not: on a GPU a launch is one."""

    def __init__(self, kernel, counter: OpCounter) -> None:
        self.kernel, self.counter = kernel, counter

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def counted(*args, **kwargs):
            self.counter.launches += 1
            return self.counter.within(UNCOUNTED, launch)(*args, **kwargs)
        return counted


def run(batch: int, sampling: str, triton_noise: bool, steps: int, tokenizer: Tokenizer) -> dict:
    config = EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, 8 * batch), num_kv_blocks=8192)
    engine = LLMEngine(config, model=StubModel(read_model_config(DEFAULT_MODEL)), tokenizer=tokenizer)
    counter = OpCounter()
    engine.sampler = counter.within("sampler", Sampler(engine.eos_ids, use_kernels=False, triton_noise=triton_noise))
    engine.runner.model.forward = counter.within(UNCOUNTED, engine.runner.model.forward)
    engine.runner.model.compute_logits = counter.within(UNCOUNTED, engine.runner.model.compute_logits)
    engine.runner.execute = counter.within("step inputs", engine.runner.execute)
    params = SamplingParams(n=batch, max_tokens=steps + 8, ignore_eos=True, seed=1, **SAMPLING[sampling])
    engine.add_request("r", PROMPT, params)
    for _ in range(4):  # the prefill and the first decodes: only decode steps are counted
        engine.step(collect="finished")
    counter.launches = 0
    kernels = importlib.import_module("engine.kernels.triton_noise") if triton_noise else None  # needs triton
    kernel = kernels._uniform_hash_kernel if kernels else None
    if kernels:
        kernels._uniform_hash_kernel = _CountedKernel(kernel, counter)
    try:
        with counter:
            for _ in range(steps):
                counter.within("other", engine.step)(collect="finished")
    finally:
        if kernels:
            kernels._uniform_hash_kernel = kernel
    per_step = {phase: n / steps for phase, n in counter.ops.items()}
    return {"batch": batch, "sampling": sampling, "triton_noise": triton_noise, "steps": steps,
            "ops_per_step": per_step, "total_per_step": sum(per_step.values()),
            "noise_launches_per_step": counter.launches / steps}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--steps", type=int, default=20, help="decode steps counted per run")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    tokenizer = Tokenizer(DEFAULT_MODEL)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for sampling in SAMPLING:
            for triton_noise in ((False, True) if sampling == "sampled" else (False,)):
                row = run(batch, sampling, triton_noise, args.steps, tokenizer)
                rows.append(row)
                print(f"batch {batch:4d} {sampling:8s} noise {'triton' if triton_noise else 'torch '}: "
                      f"{row['total_per_step']:.1f} ops a step, {row['noise_launches_per_step']:.1f} noise kernels",
                      flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": rows}
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    rows = results["rows"]
    phases = list(dict.fromkeys(p for r in rows for p in r["ops_per_step"]))
    lines = [f"# Torch ops a step dispatches outside the forward ({results['date']})", "",
             f"machine: {results['machine']}", "",
             "A stub forward (not counted); the PyTorch sampler; on a GPU each op is a launch or a copy. "
             "Noise: the race's from the reference's torch ops, or from the Triton kernel (one launch, "
             "not among the ops).", ""]
    lines += measure.markdown_table(
        ["running", "sampling", "noise", "ops a step", *phases, "noise kernels"],
        [[r["batch"], r["sampling"], "triton" if r["triton_noise"] else "torch", f"{r['total_per_step']:.1f}",
          *(f"{r['ops_per_step'].get(p, 0.0):.1f}" for p in phases), f"{r['noise_launches_per_step']:.1f}"]
         for r in rows])
    measure.write_results(out_dir, "device_ops", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
