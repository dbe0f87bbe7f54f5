"""pass@k throughput, side by side in one run: HF generate(), this engine plain, engine + copy drafts.

Workloads (HumanEval prompts, the embedded model by default):
  forced  - every system generates exactly --max-tokens tokens per sample (no stops): the
            like-for-like comparison with Hugging Face generate().
  passk   - the real job: Codex stop strings, temperature 0.8 / top_p 0.95, n samples per
            prompt; engine plain vs engine + fastcodellama (identical outputs for a seed).
  greedy  - pass@1 greedy, one request per problem, engine plain vs + fastcodellama.

    python benchmarks/passk_throughput.py --problems 16 --samples 10 --max-tokens 128
Writes JSON and markdown under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone

import torch

from engine import DEFAULT_MODEL, LLM, SamplingParams
from fastcodellama.humaneval import CODEX_STOPS, load_tasks

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def hf_generate(model_dir: str, prompts: list[str], samples: int, max_tokens: int, batch: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens, start = 0, time.perf_counter()
    per_call = max(1, batch // samples)
    for i in range(0, len(prompts), per_call):
        enc = tok(prompts[i:i + per_call], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=0.8, top_p=0.95, num_return_sequences=samples,
                                 max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)
        tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def engine_run(llm: LLM, prompts: list[str], params: SamplingParams) -> dict:
    engine = llm.engine
    steps0 = engine.stats().steps
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    stats = engine.stats()
    completions = [c for o in outs for c in o.outputs]
    tokens = sum(len(c.token_ids) for c in completions)
    decode_steps = sum(c.spec.decode_steps for c in completions)
    drafted = sum(c.spec.total_drafted for c in completions)
    accepted = sum(c.spec.total_accepted for c in completions)
    verify = sum(c.spec.verify_steps for c in completions)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "engine_steps": stats.steps - steps0,
            "tokens_per_forward_per_seq": tokens / max(1, decode_steps), "drafted": drafted, "accepted": accepted,
            "mean_accepted_per_verify": accepted / max(1, verify),
            "propose_share": stats.propose_time / max(1e-9, stats.forward_time + stats.propose_time),
            "outputs": [c.token_ids for c in completions]}


def build(model: str, speculate: bool, max_num_seqs: int, budget_tokens: int) -> LLM:
    proposer = None
    if speculate:
        from fastcodellama.spec_config import SpecConfig, build_proposer

        proposer = build_proposer(SpecConfig())
    return LLM(model, proposer=proposer, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=160)
    ap.add_argument("--workloads", default="forced,passk,greedy")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    prompts = [t["prompt"] for t in load_tasks(None, args.problems)]
    workloads = args.workloads.split(",")
    plain = build(args.model, False, 256, 2048)

    def spec() -> LLM:  # a fresh proposer per workload: no copying from an earlier run of the same prompts
        return build(args.model, True, 256, 2048)

    results: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                f"{os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}",
                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
                     "args": vars(args), "workloads": {}}
    if "forced" in workloads:
        p = SamplingParams(n=args.samples, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, ignore_eos=True, seed=0)
        row = {"engine": engine_run(plain, prompts, p), "engine+fastcodellama": engine_run(spec(), prompts, p)}
        if not args.skip_hf:
            row["hf_generate"] = hf_generate(args.model, prompts, args.samples, args.max_tokens, args.hf_batch)
        results["workloads"]["forced"] = row
    if "passk" in workloads:
        p = SamplingParams(n=args.samples, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens,
                           stop=CODEX_STOPS, seed=0)
        results["workloads"]["passk"] = {"engine": engine_run(plain, prompts, p),
                                         "engine+fastcodellama": engine_run(spec(), prompts, p)}
    if "greedy" in workloads:
        p = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, stop=CODEX_STOPS)
        results["workloads"]["greedy_b1"] = {
            "engine": _one_at_a_time(plain, prompts, p), "engine+fastcodellama": _one_at_a_time(spec(), prompts, p)}
    report(results, args.out)


def _one_at_a_time(llm: LLM, prompts: list[str], p: SamplingParams) -> dict:
    runs = [engine_run(llm, [prompt], p) for prompt in prompts]
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    merged = {k: sum(r[k] for r in runs) for k in ("drafted", "accepted", "engine_steps")}
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, **merged,
            "tokens_per_forward_per_seq": tokens / max(1, merged["engine_steps"]),
            "outputs": [o for r in runs for o in r["outputs"]]}


def report(results: dict, out_dir: str) -> None:
    lines = [f"# pass@k throughput ({results['date']})", "", f"machine: {results['machine']}",
             f"model: {results['model']}", "",
             "| workload | system | tokens | wall s | tokens/s | ratio vs engine | tokens/forward/seq | drafted | accepted |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["workloads"].items():
        base = row["engine"]["tokens_per_s"]
        same = row["engine"]["outputs"] == row["engine+fastcodellama"]["outputs"]
        for system, r in row.items():
            lines.append(f"| {name} | {system} | {r['tokens']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.1f} | "
                         f"{r['tokens_per_s'] / base:.2f}x | {r.get('tokens_per_forward_per_seq', 1.0):.3f} | "
                         f"{r.get('drafted', '-')} | {r.get('accepted', '-')} |")
        lines.append(f"| {name} | outputs equal (engine vs +fastcodellama) | {same} | | | | | | |")
        if "hf_generate" in row:
            lines.append(f"| {name} | engine / HF generate | | | | "
                         f"{row['engine']['tokens_per_s'] / row['hf_generate']['tokens_per_s']:.2f}x | | | |")
        for r in row.values():
            r.pop("outputs", None)
    text = "\n".join(lines)
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    stamp = results["date"].replace(":", "").replace("-", "")[:15]
    with open(os.path.join(out_dir, f"passk_throughput_{stamp}.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, f"passk_throughput_{stamp}.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
