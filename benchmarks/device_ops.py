"""What a step asks of a GPU's host beyond the forward: the torch ops it dispatches, by phase.

On a GPU each torch op outside the captured graph is a kernel launch (or a copy) that the host
issues one by one, at a few microseconds each, while the device waits: their count is the part of
a step's host time that this CPU can measure exactly. The engine runs here as a GPU host runs it:
a forward that costs nothing (engine.models.stub.StubModel, whose own ops are not counted), the
PyTorch sampler (not the CPU's C kernel) over the vocabulary's logits, greedy and sampled (T 0.8,
top-p 0.95: pass@10's): the reference's torch ops, the race's noise from the Triton kernel, or that
and the race over each row's likeliest tokens from the other Triton kernel (a launch each; under
the Triton interpreter here, whose own tensor work is not counted).

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
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import measure  # noqa: E402
from host_overhead import wrap_sampler  # noqa: E402

from engine import DEFAULT_MODEL, EngineConfig, SamplingParams  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.models.registry import read_model_config  # noqa: E402
from engine.models.stub import StubModel  # noqa: E402
from engine.sampler import Sampler  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

PROMPT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n"
SAMPLING = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=0.8, top_p=0.95)}
# The sampler's Triton kernels in use: none (the reference), the noise's, the noise's and the race's.
KERNELS = {"torch": (), "noise": ("noise",), "noise+race": ("noise", "race")}
_KERNEL_OF = {"noise": ("engine.kernels.triton_noise", "_uniform_hash_kernel"),
              "race": ("engine.kernels.triton_race", "_race_kernel")}
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


def run(batch: int, sampling: str, kernels: str, steps: int, tokenizer: Tokenizer) -> dict:
    """`kernels`: which of the sampler's Triton kernels it uses (a key of KERNELS)."""
    config = EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, 8 * batch), num_kv_blocks=8192)
    engine = LLMEngine(config, model=StubModel(read_model_config(DEFAULT_MODEL)), tokenizer=tokenizer)
    counter = OpCounter()
    used = KERNELS[kernels]
    engine.sampler = Sampler(engine.eos_ids, use_kernels=False, triton_noise="noise" in used,
                             triton_race="race" in used, redraw_at_launch=True)  # as a GPU's queued steps
    wrap_sampler(engine, lambda f: counter.within("sampler", f))
    engine.runner.model.forward = counter.within(UNCOUNTED, engine.runner.model.forward)
    engine.runner.model.compute_logits = counter.within(UNCOUNTED, engine.runner.model.compute_logits)
    engine.runner.execute = counter.within("step inputs", engine.runner.execute)
    params = SamplingParams(n=batch, max_tokens=steps + 8, ignore_eos=True, seed=1, **SAMPLING[sampling])
    engine.add_request("r", PROMPT, params)
    for _ in range(4):  # the prefill and the first decodes: only decode steps are counted
        engine.step(collect="finished")
    counter.launches = 0
    saved = [(importlib.import_module(module), name) for module, name in map(_KERNEL_OF.get, used)]  # needs triton
    originals = [getattr(module, name) for module, name in saved]
    for (module, name), kernel in zip(saved, originals):
        setattr(module, name, _CountedKernel(kernel, counter))
    try:
        with counter:
            for _ in range(steps):
                counter.within("other", engine.step)(collect="finished")
    finally:
        for (module, name), kernel in zip(saved, originals):
            setattr(module, name, kernel)
    per_step = {phase: n / steps for phase, n in counter.ops.items()}
    return {"batch": batch, "sampling": sampling, "kernels": kernels, "steps": steps,
            "ops_per_step": per_step, "total_per_step": sum(per_step.values()),
            "kernel_launches_per_step": counter.launches / steps}


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
            for kernels in (KERNELS if sampling == "sampled" else ("torch",)):
                row = run(batch, sampling, kernels, args.steps, tokenizer)
                rows.append(row)
                print(f"batch {batch:4d} {sampling:8s} {kernels:10s}: {row['total_per_step']:.1f} ops a step, "
                      f"{row['kernel_launches_per_step']:.1f} Triton kernels", flush=True)
    results = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args), "rows": rows}
    write(results, args.out)
    return results


def write(results: dict, out_dir: str) -> None:
    rows = results["rows"]
    phases = list(dict.fromkeys(p for r in rows for p in r["ops_per_step"]))
    lines = [f"# Torch ops a step dispatches outside the forward ({results['date']})", "",
             f"machine: {results['machine']}", "",
             "A stub forward (not counted); the PyTorch sampler; on a GPU each op is a launch or a copy. "
             "Triton kernels: none (the reference's torch ops), the race's noise (noise), or that and "
             "the race over each row's likeliest tokens (noise+race); a launch each, not among the ops.", ""]
    lines += measure.markdown_table(
        ["running", "sampling", "Triton kernels", "ops a step", *phases, "kernel launches"],
        [[r["batch"], r["sampling"], r["kernels"], f"{r['total_per_step']:.1f}",
          *(f"{r['ops_per_step'].get(p, 0.0):.1f}" for p in phases), f"{r['kernel_launches_per_step']:.1f}"]
         for r in rows])
    measure.write_results(out_dir, "device_ops", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
