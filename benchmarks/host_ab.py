"""The host step's time with some methods as another checkout has them, side by side in one run.

A change to the host side of a step moves it by a few percent, less than this machine drifts
between two runs. Here one engine (the stub forward of benchmarks/host_overhead.py, pass@10
traces) steps along, and every BLOCK steps the named methods switch between the other checkout's
(`--base`, e.g. a git worktree of the commit before the change) and this one's. The median step's
CPU time, less the sampler and the stub's forward, is reported for each.

    git worktree add /tmp/base HEAD~1
    python benchmarks/host_ab.py --base /tmp/base --batch 256 \\
        engine.scheduler:Scheduler.schedule engine.scheduler:Scheduler._decode_only

Each method is given as module:Class.method. The base method runs with its own module's globals
(its helpers as the base has them); what it calls through `self` is this checkout's. State the
two versions keep differently cannot be compared this way.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")

import host_overhead  # noqa: E402
from traces import load_workload, replay_params  # noqa: E402

from engine import DEFAULT_MODEL  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402


@dataclass(frozen=True)
class Swap:
    owner: type
    name: str
    new: object
    base: object


def load_base_module(base_root: str, module: str):
    """The base checkout's module, loaded under a name of its own (this checkout's stays in use)."""
    path = os.path.join(base_root, *module.split(".")) + ".py"
    name = "_base_" + module.replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no module {module} under {base_root}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def swaps(base_root: str, targets: list[str]) -> list[Swap]:
    out = []
    for target in targets:
        module, _, qual = target.partition(":")
        cls, _, name = qual.partition(".")
        if not (module and cls and name):
            raise SystemExit(f"{target!r}: want module:Class.method")
        owner = getattr(importlib.import_module(module), cls)
        base_owner = getattr(load_base_module(base_root, module), cls)
        out.append(Swap(owner, name, owner.__dict__[name], base_owner.__dict__[name]))
    return out


def use(chosen: list[Swap], which: str) -> None:
    for s in chosen:
        setattr(s.owner, s.name, s.new if which == "new" else s.base)


def run(batch: int, drafting: bool, chosen: list[Swap], blocks: int, block: int, warmup: int,
        requests=None, tokenizer: Tokenizer | None = None, logits: str = "host",
        fixed_k: int | None = None) -> dict[str, list[float]]:
    """Per variant, each measured step's CPU seconds less the sampler and the stub's forward."""
    tokenizer = tokenizer or Tokenizer(DEFAULT_MODEL)
    requests = requests or host_overhead.busy_requests(load_workload("passk", tokenizer), batch)
    engine = host_overhead.build_engine(batch, drafting, tokenizer, logits, fixed_k)
    for i, r in enumerate(requests):
        engine.add_request(f"r{i}", r.prompt, replay_params("passk", r))
    left_out = host_overhead.LeftOut(engine)
    times: dict[str, list[float]] = {"base": [], "new": []}
    try:
        for i in range(warmup + blocks * block):
            if not engine.has_unfinished():
                break
            which = "new" if (i - warmup) // block % 2 else "base"
            use(chosen, which)
            left_out.seconds = 0.0
            t0 = time.process_time()
            engine.step()
            if i >= warmup:
                times[which].append(time.process_time() - t0 - left_out.seconds)
    finally:
        use(chosen, "new")
    return times


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+", help="module:Class.method, as both checkouts have it")
    ap.add_argument("--base", required=True, help="the other checkout's root (e.g. a git worktree)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--drafting", action="store_true")
    ap.add_argument("--fixed-k", type=int, default=None,
                    help="with --drafting: the fixed policy, drafting up to K tokens a copy at every step")
    ap.add_argument("--blocks", type=int, default=60, help="blocks of steps, alternating base and new")
    ap.add_argument("--block", type=int, default=5, help="steps per block")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--logits", choices=tuple(host_overhead.LOGITS_COLUMNS), default="host",
                    help="as benchmarks/host_overhead.py: full rows on the host (a CPU), or one column (a GPU)")
    args = ap.parse_args(argv)
    times = run(args.batch, args.drafting, swaps(args.base, args.targets), args.blocks, args.block, args.warmup,
                logits=args.logits, fixed_k=args.fixed_k)
    if not times["base"] or not times["new"]:
        raise SystemExit("the run ended before both variants were timed: fewer --blocks or a larger --batch")
    base, new = (statistics.median(times[k]) for k in ("base", "new"))
    print(f"batch {args.batch} {host_overhead.system_name(args.drafting, args.fixed_k)}: base {1e3 * base:.3f} ms, "
          f"new {1e3 * new:.3f} ms, new / base {new / base:.3f} (median step CPU time without the sampler "
          f"and the stub's forward; {len(times['base'])} and {len(times['new'])} steps)")
    return {"base_ms": 1e3 * base, "new_ms": 1e3 * new, "ratio": new / base}


if __name__ == "__main__":
    main()
