"""What one engine step costs on this machine, with the C linear kernel and without it.

Times forward + logits + sampling of (a) decode steps of T single-token sequences, (b) verify
steps of one sequence feeding T tokens and (c) steps of T sequences feeding 2 tokens each
(engine/cost_sweep.py, the sweep that seeds the engine's step cost),
side by side in one process, alternately: with the C kernels (the linear kernel over bf16 weight
copies, engine/models/linear.py, and the decoder stack in one call, engine/models/cpu_stack.py),
and with those copies and the stack dropped so the modules and F.linear run (the reference); the
fastest of --rounds runs for each point.

    python benchmarks/step_cost.py
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402

from engine import DEFAULT_MODEL, LLM  # noqa: E402
from engine import cost_sweep  # noqa: E402
from engine.models.linear import Linear  # noqa: E402


def curves(llm: LLM) -> cost_sweep.StepCostPoints:
    cost_sweep._MEASURED.clear()
    return llm.engine.sweep_step_cost()


def fastest(runs: list[cost_sweep.StepCostPoints]) -> cost_sweep.StepCostPoints:
    def best(curves: list[cost_sweep.Points]) -> cost_sweep.Points:
        n = min(len(c) for c in curves)
        return tuple((curves[0][i][0], min(c[i][1] for c in curves)) for i in range(n))

    return cost_sweep.StepCostPoints(best([r.decode for r in runs]), best([r.verify for r in runs]),
                                     best([r.pairs for r in runs]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args()
    llm = LLM(args.model, max_num_batched_tokens=256)
    layers = [m for m in llm.engine.runner.model.modules() if isinstance(m, Linear)]
    copies = {m: m.packed for m in layers}
    model = llm.engine.runner.model
    stack = model.cpu_stack
    packed = sum(c is not None for c in copies.values())
    rounds: dict[str, list[cost_sweep.StepCostPoints]] = {"kernel": [], "reference": []}
    for _ in range(args.rounds):  # alternating; the fastest of each point (load only ever adds time)
        for name in rounds:
            for m in layers:
                m.packed = copies[m] if name == "kernel" else None
            model.cpu_stack = stack if name == "kernel" else None
            rounds[name].append(curves(llm))
    kernel, reference = (fastest(rounds[name]) for name in ("kernel", "reference"))
    results = {"machine": measure.machine(), "date": measure.utc_now(), "model": args.model,
               "packed_layers": f"{packed}/{len(layers)}", "kernel": kernel.__dict__, "reference": reference.__dict__}
    lines = [f"# Step cost ({results['date']})", "", f"machine: {results['machine']}", f"model: {args.model}",
             f"linear layers with a bf16 copy: {results['packed_layers']}", "",
             "ms per step (forward + logits + sampling, fastest of several tries)", "",
             "| T | decode, kernel | decode, F.linear | verify, kernel | verify, F.linear | pairs, kernel "
             "| pairs, F.linear | kernel: ms per draft row in pairs | kernel: ms per sequence in decode |",
             "|---|---|---|---|---|---|---|---|---|"]
    pk, pr = dict(kernel.pairs), dict(reference.pairs)
    for (t, dk), (_, dr), (_, vk), (_, vr) in zip(kernel.decode, reference.decode, kernel.verify, reference.verify):
        pairs = f"{pk[t]:.2f} | {pr[t]:.2f} | {(pk[t] - dk) / t:.3f}" if t in pk and t in pr else " | | "
        lines.append(f"| {t} | {dk:.2f} | {dr:.2f} | {vk:.2f} | {vr:.2f} | {pairs} | {dk / t:.3f} |")
    paths = measure.write_results(args.out, "step_cost", results, "\n".join(lines))
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
