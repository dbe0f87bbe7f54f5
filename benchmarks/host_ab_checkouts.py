"""The host step's time of two checkouts' whole engines, stepped in turn in one process.

benchmarks/host_ab.py swaps single methods; a change that spans the scheduler, the engine and the
proposer at once cannot be swapped that way, and two runs of benchmarks/host_overhead.py minutes
apart on this shared VM differ by more than such a change moves (10-30%). Here the other
checkout's `engine` and `fastcodellama` packages are copied under names of their own
(`engine_base`, `fastcodellama_base`, their imports rewritten), and one engine of each, on the stub
forward of benchmarks/host_overhead.py with the same pass@10 requests, step in turn. Each step's
CPU time less the sampler and the stub's forward and logits is kept; the medians are compared, and
the means (where only some steps search, as with --gpu-costs at a large batch, the median is a step
that did not). Both engines must produce the same tokens and draft as much (the change is to the
host's work, not to what it decides).

    git worktree add /tmp/base HEAD~3
    python benchmarks/host_ab_checkouts.py --base /tmp/base --batch 256 --fixed-k 1
    python benchmarks/host_ab_checkouts.py --base /tmp/base --batch 256 --fixed-k 0    # plain
    python benchmarks/host_ab_checkouts.py --base /tmp/base --fixed-k 0 --collect all  # as a server takes outputs
    python benchmarks/host_ab_checkouts.py --base /tmp/base --gpu-costs 25     # as the policy drafts beside an H200
    python benchmarks/host_ab_checkouts.py --base /tmp/base --fixed-k 1 --search 6   # and the search alone
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed
os.environ.setdefault("FASTCODELLAMA_STEP_COST_DIR", "")

import host_overhead  # noqa: E402
from simulated_device import SimClock, load_table  # noqa: E402
from traces import load_workload, replay_params  # noqa: E402

PACKAGES = ("engine", "fastcodellama")
_IMPORT = re.compile(r"\b(from|import) (engine|fastcodellama)\b")


def copy_base(base_root: str, into: str) -> None:
    """The base checkout's packages under `into`, renamed PACKAGE_base, their own imports rewritten."""
    for pkg in PACKAGES:
        target = os.path.join(into, f"{pkg}_base")
        shutil.copytree(os.path.join(base_root, pkg), target, ignore=shutil.ignore_patterns("__pycache__"))
        for folder, _, files in os.walk(target):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path) as f:
                        text = f.read()
                    with open(path, "w") as f:
                        f.write(_IMPORT.sub(lambda m: f"{m.group(1)} {m.group(2)}_base", text))


def _module(name: str, suffix: str):
    """engine.llm_engine as engine_base.llm_engine where suffix is "_base"."""
    top, dot, rest = name.partition(".")
    return importlib.import_module(top + suffix + dot + rest)


class Timed:
    """One engine (its packages' names end in `suffix`) with the requests, and each step's CPU time
    less the sampler and the stub's forward and logits."""

    def __init__(self, suffix: str, batch: int, fixed_k: int, requests: list, search_us: float | None = None) -> None:
        """`search_us`: the adaptive policy instead of a fixed k, told each step's time from the
        GPU's cost table (host_overhead.GPU_TABLE) and that a search costs this much a query, so
        that both sides decide alike whatever their searches take."""
        self.mod = mod = functools.partial(_module, suffix=suffix)
        eng_pkg, drafting = mod("engine"), mod("fastcodellama.drafting")
        config = eng_pkg.EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, 8 * batch),
                                      num_kv_blocks=8192)
        model = mod("engine.models.stub").StubModel(
            mod("engine.models.registry").read_model_config(eng_pkg.DEFAULT_MODEL), columns=1)
        proposer, timer = None, {}
        if search_us is not None:
            proposer = drafting.build_proposer(drafting.SpecConfig(), search_us * 1e-6)
            timer = {"step_timer": SimClock(load_table(host_overhead.GPU_TABLE)[0])}
        elif fixed_k > 0:
            proposer = drafting.build_proposer(drafting.SpecConfig(policy="fixed", k=fixed_k))
        self.engine = mod("engine.llm_engine").LLMEngine(
            config, proposer=proposer, model=model, tokenizer=mod("engine.tokenizer").Tokenizer(eng_pkg.DEFAULT_MODEL),
            **timer)
        for i, r in enumerate(requests):
            self.engine.add_request(f"r{i}", r.prompt, replay_params("passk", r))
        self.left_out = host_overhead.LeftOut(self.engine)
        self.steps: list[float] = []
        self.tokens: dict[str, list[list[int]]] = {}

    def search_s(self, searches: int) -> float:
        """CPU seconds of one search for copies over every decoding sequence, each looked up (no
        back-off), nothing new to index, its drafts thrown away: the mean of `searches`."""
        engine, proposers = self.engine, self.mod("fastcodellama.drafting.proposer")
        room, query = self.mod("engine.llm_engine")._room, self.mod("engine.proposer").DraftQuery
        queries = [query(seq.seq_id, room(seq, engine.max_model_len)) for seq in engine.scheduler.decoding()]
        engine.proposer._index_all()
        decision = self.mod("fastcodellama.drafting.policy").Decision(True)
        skip_from, proposers.SKIP_FROM = proposers.SKIP_FROM, 1 << 30
        try:
            t0 = time.process_time()
            for _ in range(searches):
                engine.proposer._search(queries, 1 << 20, engine.step_cost, decision)
            return (time.process_time() - t0) / searches
        finally:
            proposers.SKIP_FROM = skip_from

    def step(self, keep: bool, collect: str) -> None:
        self.left_out.seconds = 0.0
        t0 = time.process_time()
        done = self.engine.step(collect=collect)
        if keep:
            self.steps.append(time.process_time() - t0 - self.left_out.seconds)
        for out in done:
            if out.finished:
                self.tokens[out.request_id] = [list(c.token_ids) for c in out.outputs]


def run(base_root: str, batch: int, fixed_k: int, steps: int, warmup: int, collect: str = "finished",
        search_us: float | None = None, search_rounds: int = 0) -> dict:
    """`search_rounds`: after the steps, rounds of 20 searches over the running batch (both sides in
    the same state), in turn; each side's least round is kept."""
    with tempfile.TemporaryDirectory(prefix="host_ab_checkouts_") as into:
        copy_base(base_root, into)
        sys.path.insert(0, into)
        try:
            from engine import DEFAULT_MODEL
            from engine.tokenizer import Tokenizer

            requests = host_overhead.busy_requests(load_workload("passk", Tokenizer(DEFAULT_MODEL)), batch)
            sides = {"base": Timed("_base", batch, fixed_k, requests, search_us),
                     "new": Timed("", batch, fixed_k, requests, search_us)}
            for i in range(warmup + steps):
                for name in (("base", "new") if i % 2 else ("new", "base")):  # neither always second
                    if sides[name].engine.has_unfinished():
                        sides[name].step(i >= warmup, collect)
            searched: dict[str, list[float]] = {"base": [], "new": []}
            for i in range(search_rounds if sides["new"].engine.proposer is not None else 0):
                for name in (("base", "new") if i % 2 else ("new", "base")):
                    searched[name].append(sides[name].search_s(20))
        finally:
            sys.path.remove(into)
            for name in [m for m in sys.modules if m.split(".")[0] in {f"{p}_base" for p in PACKAGES}]:
                del sys.modules[name]
    base, new = (statistics.median(sides[k].steps) for k in ("base", "new"))
    base_mean, new_mean = (statistics.fmean(sides[k].steps) for k in ("base", "new"))
    stats = {k: s.engine.stats() for k, s in sides.items()}
    return {"batch": batch, "fixed_k": fixed_k, "gpu_costs_search_us": search_us, "collect": collect, "base_ms": 1e3 * base, "new_ms": 1e3 * new,
            "ratio": new / base, "base_mean_ms": 1e3 * base_mean, "new_mean_ms": 1e3 * new_mean,
            "mean_ratio": new_mean / base_mean,
            "steps": min(len(s.steps) for s in sides.values()),
            "same_tokens": sides["base"].tokens == sides["new"].tokens,
            "drafted": {k: s.spec.total_drafted for k, s in stats.items()},
            "search_queries": len(sides["new"].engine.scheduler.decoding()),
            **({f"{k}_search_ms": 1e3 * min(v) for k, v in searched.items()} if searched["new"] else {})}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the other checkout's root (e.g. a git worktree)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--fixed-k", type=int, default=1, help="draft up to K tokens a copy at every step (0: plain)")
    ap.add_argument("--steps", type=int, default=200, help="steps timed per engine (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--collect", choices=tuple(host_overhead.COLLECT), default="finished",
                    help="outputs of finished requests only (the HumanEval job), or of every request that changed "
                         "every step (a server streaming)")
    ap.add_argument("--search", type=int, default=0, metavar="ROUNDS",
                    help="also time the search for copies alone over the running batch after the steps, "
                         "ROUNDS rounds of 20 searches, the two sides in turn")
    ap.add_argument("--gpu-costs", type=float, default=None, metavar="SEARCH_US",
                    help="the adaptive policy as it drafts beside the H200 of host_overhead.GPU_TABLE (in place "
                         "of --fixed-k), told that a search costs SEARCH_US a query")
    args = ap.parse_args(argv)
    row = run(args.base, args.batch, args.fixed_k, args.steps, args.warmup, args.collect, args.gpu_costs, args.search)
    gpu = args.gpu_costs is not None
    system = host_overhead.system_name(gpu or args.fixed_k > 0, None if gpu else args.fixed_k or None,
                                       host_overhead.GPU_TABLE if gpu else None)
    print(f"batch {row['batch']} {system}, "
          f"--collect {args.collect}: "
          f"base {row['base_ms']:.3f} ms, new {row['new_ms']:.3f} ms, new / base {row['ratio']:.3f} (median step CPU "
          f"time without the sampler and the stub's forward and logits, {row['steps']} steps each; the means "
          f"{row['base_mean_ms']:.3f} and {row['new_mean_ms']:.3f} ms, {row['mean_ratio']:.3f}); same tokens "
          f"{row['same_tokens']}, drafted {row['drafted']['base']} / {row['drafted']['new']}")
    if "new_search_ms" in row:
        q = max(1, row["search_queries"])
        print(f"a search over {q} running: base {1e3 * row['base_search_ms'] / q:.2f} us a query, new "
              f"{1e3 * row['new_search_ms'] / q:.2f}, new / base {row['new_search_ms'] / row['base_search_ms']:.3f}")
    return row


if __name__ == "__main__":
    main()
