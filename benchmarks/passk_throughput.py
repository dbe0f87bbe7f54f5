"""pass@k throughput, every system side by side in one process run, on the same model, prompts and lengths.

Systems:
  hf_generate               transformers generate(), batched (several prompts x num_return_sequences per call)
  hf_prompt_lookup          transformers generate(prompt_lookup_num_tokens=K): assisted generation takes
                            batch size 1 only, so it runs one sample per call (on the --slow-* subset)
  engine                    this engine, plain decoding
  engine+fastcodellama      this engine + copy drafts (fastcodellama's proposer and policy)
  llama.cpp                 llama.cpp's C API through llama-cpp-python, batched like its `batched` example
  llama.cpp+prompt_lookup   llama_cpp.Llama with LlamaPromptLookupDecoding(K): one sample at a time
                            (--slow-* subset)
The llama.cpp rows need `python benchmarks/llamacpp_peer.py setup --install` first; without
llama-cpp-python they are skipped (and the report says so).

Every system loads its model and does a short warm-up generation before its timed run.

Workloads (HumanEval prompts; every sample is exactly --max-tokens tokens long, EOS does not stop it,
so that every system does the same work):
  forced  - pass@k-shaped: --problems x --samples, temperature 0.8, top-p 0.95.
  greedy  - pass@1-shaped: one problem at a time (batch 1), greedy; token ids of every system are
            compared with the engine's, token for token.
  passk   - the real job (Codex stop strings): engine and engine+fastcodellama only (stop-string
            semantics differ between peers); their outputs must be identical for a seed.

    python benchmarks/passk_throughput.py --problems 16 --samples 10 --max-tokens 128
Writes JSON, markdown and a PNG plot under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402

SYSTEMS = ("hf_generate", "hf_prompt_lookup", "engine", "engine+fastcodellama", "llama.cpp", "llama.cpp+prompt_lookup")
SLOW = {"hf_prompt_lookup", "llama.cpp+prompt_lookup"}  # batch 1 only: run on the --slow-* subset
WORKLOADS = ("forced", "greedy", "passk")


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[list[int]]  # token ids, BOS included: every system gets the same ids
    samples: int
    max_tokens: int
    temperature: float
    top_p: float
    batch1: bool  # one prompt at a time


def _row(tokens: int, wall: float, batch: str, outputs: list[list[int]] | None, **extra) -> dict:
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "batch": batch, "outputs": outputs, **extra}


# ---------------------------------------------------------------------- this engine


class RecordingProposer:
    """Passes everything to the real proposer; keeps a histogram of accepted tokens per verify."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.accepted_hist: Counter = Counter()

    def record(self, seq_id: int, draft, num_accepted: int) -> None:
        self.accepted_hist[num_accepted] += 1
        self.inner.record(seq_id, draft, num_accepted)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def run_engine(model: str, wl: Workload, speculate: bool, stops: Sequence[str] = (),
               kv_cache_gb: float | None = None) -> dict:
    from engine import LLM, SamplingParams

    proposer = None
    if speculate:  # a fresh proposer per workload: nothing copied from an earlier run of the same prompts
        from fastcodellama.drafting import SpecConfig, build_proposer

        proposer = RecordingProposer(build_proposer(SpecConfig()))
    kv = {} if kv_cache_gb is None else {"kv_cache_memory_gb": kv_cache_gb}
    llm = LLM(model, proposer=proposer, max_num_seqs=256, max_num_batched_tokens=2048, **kv)
    params = SamplingParams(n=wl.samples, temperature=wl.temperature, top_p=wl.top_p, max_tokens=wl.max_tokens,
                            ignore_eos=not stops, stop=tuple(stops), seed=0)
    groups = [[p] for p in wl.prompts] if wl.batch1 else [wl.prompts]
    llm.generate(groups[0][:1], dataclasses.replace(params, max_tokens=2, stop=()), use_tqdm=False)  # warm-up
    completions, wall = [], 0.0
    steps0 = llm.engine.stats().steps
    for group in groups:
        start = time.perf_counter()
        outs = llm.generate(group, params, use_tqdm=False)
        wall += time.perf_counter() - start
        completions += [c for o in outs for c in o.outputs]
    tokens = sum(len(c.token_ids) for c in completions)
    decode_steps = sum(c.spec.decode_steps for c in completions)
    verify = sum(c.spec.verify_steps for c in completions)
    accepted = sum(c.spec.total_accepted for c in completions)
    return _row(tokens, wall, "1" if wl.batch1 else f"<= {min(256, len(wl.prompts) * wl.samples)}",
                [c.token_ids for c in completions], engine_steps=llm.engine.stats().steps - steps0,
                tokens_per_forward_per_seq=tokens / max(1, decode_steps),
                drafted=sum(c.spec.total_drafted for c in completions), accepted=accepted,
                mean_accepted_per_verify=accepted / verify if verify else None,
                accepted_hist=dict(proposer.accepted_hist) if proposer else None)


# ---------------------------------------------------------------------- Hugging Face transformers


def _hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = model.generation_config
    gen.eos_token_id = None  # exactly max_new_tokens, like ignore_eos: EOS neither stops nor is masked
    gen.pad_token_id = 0 if gen.pad_token_id is None else gen.pad_token_id
    return model


def _hf_kwargs(wl: Workload) -> dict:
    if wl.temperature == 0.0:
        return dict(do_sample=False, max_new_tokens=wl.max_tokens, min_new_tokens=0)
    return dict(do_sample=True, temperature=wl.temperature, top_p=wl.top_p, top_k=0, max_new_tokens=wl.max_tokens)


def _left_pad(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def run_hf_generate(model_dir: str, wl: Workload, batch: int) -> dict:
    model = _hf_model(model_dir)
    torch.manual_seed(0)
    per_call = 1 if wl.batch1 else max(1, batch // wl.samples)
    with torch.no_grad():  # warm-up
        model.generate(input_ids=torch.tensor([wl.prompts[0]]), **dict(_hf_kwargs(wl), max_new_tokens=2))
    outputs, tokens, wall = [], 0, 0.0
    for i in range(0, len(wl.prompts), per_call):
        ids, mask = _left_pad(wl.prompts[i:i + per_call], model.generation_config.pad_token_id)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, num_return_sequences=wl.samples, **_hf_kwargs(wl))
        wall += time.perf_counter() - start
        new = out[:, ids.shape[1]:]
        tokens += new.numel()
        outputs += new.tolist()
    return _row(tokens, wall, str(min(per_call * wl.samples, len(wl.prompts) * wl.samples)), outputs,
                tokens_per_forward_per_seq=1.0)


class _LookupTrace:
    """Counts forwards of an HF model and, for prompt lookup, the accepted tokens of each forward
    that carried candidates (by wrapping the candidate generator's two calls for the run's time)."""

    def __init__(self, model) -> None:
        from transformers.generation.candidate_generator import PromptLookupCandidateGenerator as G

        self.cls, self.forwards, self.hist, self._last = G, 0, Counter(), 0
        self._orig = (G.get_candidates, G.update_candidate_strategy)
        self._hook = model.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.forwards += 1

    def __enter__(self) -> "_LookupTrace":
        get, update = self._orig
        trace = self

        def get_candidates(gen, input_ids, **kw):
            out = get(gen, input_ids, **kw)
            trace._last = out[0].shape[1] - input_ids.shape[1]
            return out

        def update_candidate_strategy(gen, input_ids, scores, num_matches):
            if trace._last > 0:
                trace.hist[int(num_matches)] += 1
            return update(gen, input_ids, scores, num_matches)

        self.cls.get_candidates, self.cls.update_candidate_strategy = get_candidates, update_candidate_strategy
        return self

    def __exit__(self, *exc) -> None:
        self.cls.get_candidates, self.cls.update_candidate_strategy = self._orig
        self._hook.remove()


def run_hf_prompt_lookup(model_dir: str, wl: Workload, lookup_tokens: int) -> dict:
    model = _hf_model(model_dir)
    with torch.no_grad():  # warm-up
        model.generate(input_ids=torch.tensor([wl.prompts[0]]), prompt_lookup_num_tokens=lookup_tokens,
                       **dict(_hf_kwargs(wl), max_new_tokens=2))
    torch.manual_seed(0)
    outputs, tokens, wall, calls = [], 0, 0.0, 0
    with _LookupTrace(model) as trace:
        for prompt in wl.prompts:
            ids = torch.tensor([prompt])
            for _ in range(wl.samples):  # assisted generation: num_return_sequences must be 1
                start = time.perf_counter()
                with torch.no_grad():
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         prompt_lookup_num_tokens=lookup_tokens, **_hf_kwargs(wl))
                wall += time.perf_counter() - start
                calls += 1
                outputs.append(out[0, ids.shape[1]:].tolist())
                tokens += len(outputs[-1])
    decode_forwards = trace.forwards - calls  # one prefill per call
    verify = sum(trace.hist.values())
    accepted = sum(k * v for k, v in trace.hist.items())
    return _row(tokens, wall, "1", outputs, tokens_per_forward_per_seq=tokens / max(1, decode_forwards),
                accepted=accepted, mean_accepted_per_verify=accepted / verify if verify else None,
                accepted_hist=dict(trace.hist))


# ---------------------------------------------------------------------- llama.cpp


def run_llamacpp(gguf: str, wl: Workload) -> dict:
    import llamacpp_peer as peer

    seqs = 1 if wl.batch1 else min(256, len(wl.prompts) * wl.samples)
    runner = peer.LlamaCppBatched(gguf, max_seqs=seqs, max_len=max(map(len, wl.prompts)) + wl.max_tokens)
    stats = peer.RunStats()
    groups = [[p] for p in wl.prompts] if wl.batch1 else [wl.prompts]
    outputs, wall = [], 0.0
    try:
        runner.generate(groups[0], wl.samples, 2, wl.temperature, wl.top_p)  # warm-up: llama.cpp's first decode is slow
        for group in groups:
            start = time.perf_counter()
            outputs += runner.generate(group, wl.samples, wl.max_tokens, wl.temperature, wl.top_p, seed=0, stats=stats)
            wall += time.perf_counter() - start
    finally:
        runner.close()
    return _row(stats.tokens, wall, str(seqs), outputs, tokens_per_forward_per_seq=1.0, threads=peer.threads())


def run_llamacpp_lookup(gguf: str, wl: Workload, lookup_tokens: int) -> dict:
    import llamacpp_peer as peer

    runner = peer.LlamaCppPromptLookup(gguf, max(map(len, wl.prompts)) + wl.max_tokens + lookup_tokens + 1,
                                       num_pred_tokens=lookup_tokens)
    runner.generate_one(wl.prompts[0], 2, wl.temperature, wl.top_p)  # warm-up
    stats = peer.RunStats()
    outputs, wall = [], 0.0
    for p, prompt in enumerate(wl.prompts):
        for s in range(wl.samples):
            start = time.perf_counter()
            outputs.append(runner.generate_one(prompt, wl.max_tokens, wl.temperature, wl.top_p, seed=p * 1000 + s,
                                               stats=stats))
            wall += time.perf_counter() - start
    verify = sum(stats.accepted_hist.values())
    accepted = sum(k * v for k, v in stats.accepted_hist.items())
    return _row(stats.tokens, wall, "1", outputs, tokens_per_forward_per_seq=stats.tokens / max(1, stats.seq_forwards),
                accepted=accepted, mean_accepted_per_verify=accepted / verify if verify else None,
                accepted_hist=stats.accepted_hist, threads=peer.threads())


# ---------------------------------------------------------------------- the run


def measured(fn: Callable[[], dict]) -> dict:
    """Runs one system (model load included in the memory figure, not in the wall time)."""
    gc.collect()
    with measure.PeakMemory() as mem:
        row = fn()
    gc.collect()
    row.update(mem.as_dict())
    return row


def compare_outputs(ref: list[list[int]], other: list[list[int]]) -> dict:
    """Token-for-token comparison of sequences that line up (the other may cover a prefix of them)."""
    pairs = list(zip(ref, other))
    same = sum(a == b for a, b in pairs)
    prefixes = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in pairs]
    return {"sequences": len(pairs), "identical": same,
            "mean_common_prefix": sum(prefixes) / len(prefixes) if prefixes else None,
            "first_divergence": min(prefixes) if same < len(pairs) else None}


def build_workloads(args, prompt_ids: list[list[int]]) -> dict[str, tuple[Workload, Workload]]:
    """name -> (full workload, the subset the slow batch-1 systems run)."""
    out = {}
    P, S, M = args.problems, args.samples, args.max_tokens
    sp, ss = min(args.slow_problems, P), min(args.slow_samples, S)
    if "forced" in args.workloads:
        full = Workload("forced", prompt_ids[:P], S, M, 0.8, 0.95, batch1=False)
        out["forced"] = (full, Workload("forced", prompt_ids[:sp], ss, M, 0.8, 0.95, batch1=True))
    if "greedy" in args.workloads:
        full = Workload("greedy", prompt_ids[:args.greedy_problems or P], 1, M, 0.0, 1.0, batch1=True)
        out["greedy"] = (full, full)
    if "passk" in args.workloads:
        full = Workload("passk", prompt_ids[:P], S, M, 0.8, 0.95, batch1=False)
        out["passk"] = (full, full)
    return out


def run(args) -> dict:
    from engine.tokenizer import Tokenizer
    from fastcodellama.job.tasks import load_tasks
    from fastcodellama.job.types import CODEX_STOPS

    tok = Tokenizer(args.model)
    texts = [t["prompt"] for t in load_tasks(None, max(args.problems, args.greedy_problems or 0))]
    prompt_ids = [tok.encode(t) for t in texts]
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}; choose from {SYSTEMS}")
    notes = []
    gguf = None
    if any(s.startswith("llama.cpp") for s in systems):
        import llamacpp_peer as peer

        if not peer.available():
            notes.append("llama.cpp rows skipped: llama-cpp-python is not installed "
                         "(python benchmarks/llamacpp_peer.py setup --install)")
            systems = [s for s in systems if not s.startswith("llama.cpp")]
        else:
            gguf = args.gguf or peer.convert(args.model)
            agree = peer.token_agreement(gguf, args.model, texts)
            notes.append(f"llama.cpp {peer.version()} ({gguf}, {peer.threads()} threads); prompts fed as our "
                         f"token ids; its own tokenizer gives identical ids for {agree['identical']}/{agree['texts']} prompts")

    results: dict = {"machine": measure.machine(), "date": measure.utc_now(), "model": args.model,
                     "args": vars(args), "notes": notes, "workloads": {}}
    for name, (full, slow) in build_workloads(args, prompt_ids).items():
        runners: dict[str, Callable[[], dict]] = {
            "engine": lambda: run_engine(args.model, full, False, CODEX_STOPS if name == "passk" else (),
                                         args.kv_cache_gb),
            "engine+fastcodellama": lambda: run_engine(args.model, full, True, CODEX_STOPS if name == "passk" else (),
                                                       args.kv_cache_gb),
        }
        if name != "passk":
            runners.update({
                "hf_generate": lambda: run_hf_generate(args.model, full, args.hf_batch),
                "hf_prompt_lookup": lambda: run_hf_prompt_lookup(args.model, slow, args.lookup_tokens),
                "llama.cpp": lambda: run_llamacpp(gguf, full),
                "llama.cpp+prompt_lookup": lambda: run_llamacpp_lookup(gguf, slow, args.lookup_tokens),
            })
        rows = {}
        for system in SYSTEMS:
            if system in systems and system in runners:
                print(f"[{name}] {system} ...", file=sys.stderr, flush=True)
                rows[system] = measured(runners[system])
                rows[system]["subset"] = (f"{len(slow.prompts)} prompts x {slow.samples}" if system in SLOW
                                          else f"{len(full.prompts)} prompts x {full.samples}")
        if "engine" in rows and (name == "greedy" or name == "passk"):
            ref = rows["engine"]["outputs"]
            for system, r in rows.items():
                if system != "engine":
                    r["vs_engine_outputs"] = compare_outputs(ref, r["outputs"])
        elif "engine" in rows and "engine+fastcodellama" in rows:  # sampled: only our two share the noise
            rows["engine+fastcodellama"]["vs_engine_outputs"] = compare_outputs(
                rows["engine"]["outputs"], rows["engine+fastcodellama"]["outputs"])
        results["workloads"][name] = rows
    return results


def report(results: dict, out_dir: str, plot: bool = True) -> dict[str, str]:
    lines = [f"# pass@k throughput ({results['date']})", "", f"machine: {results['machine']}",
             f"model: {results['model']}", ""]
    lines += [f"- {n}" for n in results["notes"]]
    if results["notes"]:
        lines.append("")
    header = ["workload", "system", "batch", "sequences", "tokens", "wall s", "tokens/s", "vs engine",
              "vs HF generate", "vs llama.cpp", "tokens/forward/seq", "mean accepted/verify", "peak RSS MB",
              "greedy ids = engine"]
    table = []
    for name, rows in results["workloads"].items():
        base = rows.get("engine", {}).get("tokens_per_s")
        hf = rows.get("hf_generate", {}).get("tokens_per_s")
        lc = rows.get("llama.cpp", {}).get("tokens_per_s")
        for system, r in rows.items():
            tps = r["tokens_per_s"]
            cmp = r.get("vs_engine_outputs")
            same = "ref" if system == "engine" else (f"{cmp['identical']}/{cmp['sequences']}" if cmp else "-")
            table.append([name, system, r["batch"], r["subset"], r["tokens"], measure.fmt(r["wall_s"]),
                          measure.fmt(tps), _ratio(tps, base), _ratio(tps, hf), _ratio(tps, lc),
                          measure.fmt(r.get("tokens_per_forward_per_seq"), 3),
                          measure.fmt(r.get("mean_accepted_per_verify"), 2), measure.fmt(r.get("peak_rss_mb"), 0), same])
    lines += measure.markdown_table(header, table)
    lines += ["", "Ratios are of tokens/s. Rows marked batch 1 run one sequence per call: on `forced` they run "
              "the smaller subset shown (their tokens/s is per-sequence speed, not a batched figure). "
              "'greedy ids = engine': sequences whose token ids equal the engine's (forced sampling: only "
              "engine+fastcodellama shares the engine's noise, so only it is compared)."]
    divergences = [(n, s, r["vs_engine_outputs"]) for n, rows in results["workloads"].items()
                   for s, r in rows.items() if r.get("vs_engine_outputs") and
                   r["vs_engine_outputs"]["identical"] < r["vs_engine_outputs"]["sequences"]]
    for n, s, c in divergences:
        lines.append(f"- {n}/{s}: {c['sequences'] - c['identical']} of {c['sequences']} sequences differ from the "
                     f"engine's; first divergence at token {c['first_divergence']}, mean common prefix "
                     f"{c['mean_common_prefix']:.1f} tokens")
    for rows in results["workloads"].values():
        for r in rows.values():
            r.pop("outputs", None)
    text = "\n".join(lines)
    return measure.write_results(out_dir, "passk_throughput", results, text,
                                 (lambda path: plot_results(results, path)) if plot else None)


def _ratio(x: float, base: float | None) -> str:
    return f"{x / base:.2f}x" if base else "-"


def plot_results(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(results["workloads"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(SYSTEMS)
    for j, system in enumerate(SYSTEMS):
        xs = [i for i, w in enumerate(workloads) if system in results["workloads"][w]]
        ys = [results["workloads"][workloads[i]][system]["tokens_per_s"] for i in xs]
        if xs:
            ax1.bar([x + (j - len(SYSTEMS) / 2 + 0.5) * width for x in xs], ys, width,
                    label=system + (" (batch 1)" if system in SLOW else ""))
    ax1.set_xticks(range(len(workloads)), workloads)
    ax1.set_ylabel("tokens/s")
    ax1.set_title("throughput per system")
    ax1.legend(fontsize=8)
    plotted = False
    for w in workloads:
        for system, r in results["workloads"][w].items():
            hist = r.get("accepted_hist")
            if hist:
                total = sum(hist.values())
                ks = sorted(int(k) for k in hist)
                ax2.plot(ks, [hist.get(k, hist.get(str(k), 0)) / total for k in ks], marker="o",
                         label=f"{w}: {system}")
                plotted = True
    ax2.set_xlabel("draft tokens accepted in a verify forward")
    ax2.set_ylabel("share of verify forwards")
    ax2.set_title("accepted length")
    if plotted:
        ax2.legend(fontsize=8)
    fig.suptitle(f"{os.path.basename(os.path.normpath(results['model']))}: {results['machine'][:110]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from engine import DEFAULT_MODEL

    ap = parser or argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face Llama folder (default: the embedded model)")
    ap.add_argument("--problems", type=int, default=16, help="HumanEval problems (forced, passk)")
    ap.add_argument("--samples", type=int, default=10, help="samples per problem (forced, passk)")
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens per sample")
    ap.add_argument("--greedy-problems", type=int, default=None, help="problems of the greedy workload (default --problems)")
    ap.add_argument("--slow-problems", type=int, default=2, help="problems the batch-1 peers run on `forced`")
    ap.add_argument("--slow-samples", type=int, default=2, help="samples per problem the batch-1 peers run on `forced`")
    ap.add_argument("--hf-batch", type=int, default=160, help="sequences per HF generate() call")
    ap.add_argument("--lookup-tokens", type=int, default=10, help="draft length of the prompt-lookup peers")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {WORKLOADS}")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {SYSTEMS}")
    ap.add_argument("--kv-cache-gb", type=float, default=None, help="the engine's KV cache (default: the engine's)")
    ap.add_argument("--gguf", default=None, help="GGUF for the llama.cpp rows (default: convert --model, cached)")
    ap.add_argument("--out", default=measure.RESULTS, help="folder for the JSON, markdown and PNG")
    ap.add_argument("--no-plot", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main_with(args)


def main_with(args: argparse.Namespace) -> int:
    if args.problems < 1 or args.samples < 1 or args.max_tokens < 1:
        print("--problems, --samples and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    results = run(args)
    paths = report(results, args.out, plot=not args.no_plot)
    print("\nwrote " + ", ".join(paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
