"""GPU decode benchmark: a CodeLlama-7B-shaped model with random weights (no download), bf16.

    python benchmarks/gpu/decode_roofline.py                          # on a GPU machine: 7B shape, bf16
    python benchmarks/gpu/decode_roofline.py --device cpu --shape tiny --batches 1,4 --gen-len 8   # smoke run

Measures, in one run:
  - the device's copy bandwidth (a large tensor copied; read + write bytes / time) and the weight
    bytes, hence the batch-1 roofline: tokens/s <= bandwidth / weight bytes;
  - this engine, plain decode, at batch 1 and at pass@10 batch sizes (--batches; --samples sequences
    share each random prompt of --prompt-len tokens; every sequence makes exactly --gen-len tokens):
    decode tokens/s, excluding prefill (a prefill-only run of the same requests is subtracted);
  - the cost of a verify forward: the same decode with a proposer that drafts k tokens for every
    sequence every step (random weights reject them, so each step still yields one token per
    sequence), step time with k draft tokens / plain step time, for each --verify-k;
  - Hugging Face transformers generate() on a model of the same shape, same lengths (--hf-batches).
Weights are random (normal, std 0.02), so outputs are meaningless; only time and memory are measured.
Writes JSON and markdown under benchmarks/results/ (gpu_decode_*).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import measure  # noqa: E402

SHAPES = {  # Hugging Face config.json fields
    "7b": dict(vocab_size=32016, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=16384,
               rms_norm_eps=1e-5, rope_theta=1_000_000.0, tie_word_embeddings=False),
    "tiny": dict(vocab_size=32016, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                 rms_norm_eps=1e-5, rope_theta=1_000_000.0, tie_word_embeddings=False),
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy, counting the read and the write."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    seconds = time.perf_counter() - start
    del src, dst
    return 2 * nbytes * repeats / seconds


def random_engine_model(hf_config: dict, dtype: torch.dtype, device: torch.device):
    from engine.config import ModelConfig
    from engine.models.llama import LlamaForCausalLM

    cfg = ModelConfig.from_hf_dict(dict(hf_config, architectures=["LlamaForCausalLM"], model_type="llama"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of 7B weights
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    _randomize(model)
    return model


def _randomize(model: torch.nn.Module) -> None:
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02))
            else:
                p.fill_(1.0)  # norms


class FixedDraftProposer:
    """Drafts k tokens for every sequence every step (the engine's Proposer protocol): for the cost of
    a verify forward, not for acceptance."""

    def __init__(self, k: int, token: int = 13) -> None:
        self.k, self.token = k, token

    def add_sequence(self, seq_id, group_id, prompt_token_ids) -> None:
        pass

    def extend(self, seq_id, token_ids) -> None:
        pass

    def propose(self, queries, budget: int):
        from engine.proposer import Draft

        drafts = []
        for q in queries:
            n = max(0, min(self.k, q.max_len, budget))
            budget -= n
            drafts.append(Draft((self.token,) * n))
        return drafts

    def record(self, seq_id, draft, num_accepted: int) -> None:
        pass

    def finish(self, seq_id, aborted: bool = False) -> None:
        pass


def engine_for(model, args, max_seqs: int, batched_tokens: int, proposer=None):
    from engine import DEFAULT_MODEL, EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.tokenizer import Tokenizer

    config = EngineConfig(model=DEFAULT_MODEL, dtype=args.dtype, device=args.device, max_num_seqs=max_seqs,
                          max_num_batched_tokens=max(batched_tokens, max_seqs, args.prompt_len),
                          kv_cache_memory_gb=args.kv_cache_gb or (30.0 if args.device.startswith("cuda") else 1.0),
                          max_model_len=args.prompt_len + args.gen_len + max(args.verify_k or [0]) + 16)
    # The embedded model's tokenizer only turns ids into text; ids past its vocabulary have none.
    return LLMEngine(config, proposer=proposer, model=model, tokenizer=Tokenizer(DEFAULT_MODEL))


def timed_generate(engine, prompts: Sequence[list[int]], samples: int, max_tokens: int, device) -> tuple[float, int]:
    """Seconds to finish every request, and steps taken."""
    from engine import SamplingParams

    params = SamplingParams(n=samples, temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    steps0 = engine.stats().steps
    sync(device)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", list(prompt), params)
    while engine.has_unfinished():
        engine.step()
    sync(device)
    return time.perf_counter() - start, engine.stats().steps - steps0


def decode_run(engine, prompts, samples: int, gen_len: int, device) -> dict:
    """Decode-only time: a run of gen_len tokens minus a prefill-only run (1 token) of the same requests."""
    timed_generate(engine, prompts[:1], 1, 2, device)  # warm-up
    prefill_s, prefill_steps = timed_generate(engine, prompts, samples, 1, device)
    full_s, full_steps = timed_generate(engine, prompts, samples, gen_len, device)
    seqs = len(prompts) * samples
    decode_s = max(1e-9, full_s - prefill_s)
    steps = max(1, full_steps - prefill_steps)
    return {"sequences": seqs, "prefill_s": prefill_s, "total_s": full_s, "decode_s": decode_s,
            "decode_steps": steps, "step_ms": 1000 * decode_s / steps,
            "decode_tokens_per_s": seqs * (gen_len - 1) / decode_s, "total_tokens_per_s": seqs * gen_len / full_s}


def _workload(b: int, args, hf_config: dict) -> tuple[list[list[int]], int]:
    """b sequences: b // samples random prompts with `samples` sequences each."""
    samples = min(args.samples, b)
    return random_prompts(max(1, b // samples), args.prompt_len, hf_config["vocab_size"], seed=b), samples


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, min(vocab, 32000), (n, length), generator=gen).tolist()


def hf_run(hf_config: dict, args, batches: Sequence[int], device: torch.device) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = DTYPES[args.dtype]
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**hf_config, bos_token_id=1, eos_token_id=2)).to(dtype).eval()
    _randomize(model)
    model.generation_config.eos_token_id = None  # exactly gen_len tokens
    model.generation_config.pad_token_id = 0
    rows = []
    for b in batches:
        ids = torch.tensor(random_prompts(b, args.prompt_len, hf_config["vocab_size"], seed=b), device=device)
        kw = dict(do_sample=False, attention_mask=torch.ones_like(ids))
        with torch.no_grad():
            model.generate(ids[:1], max_new_tokens=2, **dict(kw, attention_mask=kw["attention_mask"][:1]))  # warm-up
            times = []
            for n in (1, args.gen_len):
                sync(device)
                start = time.perf_counter()
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
                sync(device)
                times.append(time.perf_counter() - start)
        decode_s = max(1e-9, times[1] - times[0])
        rows.append({"batch": b, "prefill_s": times[0], "total_s": times[1], "decode_s": decode_s,
                     "decode_tokens_per_s": b * (args.gen_len - 1) / decode_s,
                     "total_tokens_per_s": b * args.gen_len / times[1]})
        print(f"  HF generate batch {b}: {rows[-1]['decode_tokens_per_s']:.1f} decode tokens/s", file=sys.stderr)
    del model
    return rows


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu (with --shape tiny) for a smoke run")
    hf_config = SHAPES[args.shape]
    results = {"machine": measure.machine(), "date": measure.utc_now(), "shape": args.shape, "hf_config": hf_config,
               "args": vars(args), "engine": [], "verify": [], "hf_generate": []}
    bw = copy_bandwidth(device, args.copy_mb * 2**20)
    model = random_engine_model(hf_config, DTYPES[args.dtype], device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    results.update(copy_bandwidth_gbs=bw / 1e9, weight_gb=weight_bytes / 1e9, roofline_b1_tokens_per_s=bw / weight_bytes)
    print(f"copy bandwidth {bw / 1e9:.1f} GB/s, weights {weight_bytes / 1e9:.2f} GB: batch-1 roofline "
          f"{bw / weight_bytes:.1f} tokens/s", file=sys.stderr)

    max_b = max(args.batches)
    engine = engine_for(model, args, max_b, max_b * 4)
    with measure.PeakMemory() as mem:
        for b in args.batches:
            row = {"batch": b, "samples_per_prompt": min(args.samples, b),
                   **decode_run(engine, *_workload(b, args, hf_config), args.gen_len, device)}
            results["engine"].append(row)
            print(f"  engine batch {b}: {row['decode_tokens_per_s']:.1f} decode tokens/s, step {row['step_ms']:.2f} ms",
                  file=sys.stderr)
    results["engine_memory"] = mem.as_dict()
    b1 = next((r for r in results["engine"] if r["batch"] == 1), None)
    if b1:
        results["engine_b1_share_of_roofline"] = b1["decode_tokens_per_s"] / results["roofline_b1_tokens_per_s"]
    del engine  # one KV cache at a time
    _free(device)

    for b in args.verify_batches:
        plain = next((r for r in results["engine"] if r["batch"] == b), None)
        if plain is None:
            plain_engine = engine_for(model, args, b, b * 4)
            plain = decode_run(plain_engine, *_workload(b, args, hf_config), args.gen_len, device)
            del plain_engine
            _free(device)
        for k in args.verify_k:
            spec = engine_for(model, args, b, b * (1 + k), proposer=FixedDraftProposer(k))
            row = decode_run(spec, *_workload(b, args, hf_config), args.gen_len, device)
            del spec
            _free(device)
            results["verify"].append({"batch": b, "k": k, "tokens_in_step": b * (1 + k), "step_ms": row["step_ms"],
                                      "plain_step_ms": plain["step_ms"], "cost_ratio": row["step_ms"] / plain["step_ms"]})
            print(f"  verify batch {b} k {k}: step {row['step_ms']:.2f} ms = {results['verify'][-1]['cost_ratio']:.2f}x "
                  f"plain", file=sys.stderr)
    del model
    _free(device)
    if args.hf_batches:
        results["hf_generate"] = hf_run(hf_config, args, args.hf_batches, device)
    return results


def report(results: dict, out_dir: str) -> dict[str, str]:
    fmt = measure.fmt
    lines = [f"# GPU decode ({results['date']})", "", f"machine: {results['machine']}",
             f"model: {results['shape']}-shaped Llama, random weights, {results['args']['dtype']}; "
             f"prompts {results['args']['prompt_len']} tokens, {results['args']['gen_len']} tokens per sequence", "",
             f"copy bandwidth {results['copy_bandwidth_gbs']:.1f} GB/s; weights {results['weight_gb']:.2f} GB; "
             f"batch-1 roofline {results['roofline_b1_tokens_per_s']:.1f} tokens/s"
             + (f"; engine batch 1 reaches {results['engine_b1_share_of_roofline']:.0%} of it"
                if "engine_b1_share_of_roofline" in results else ""), ""]
    hf = {r["batch"]: r for r in results["hf_generate"]}
    rows = [[r["batch"], r["samples_per_prompt"], fmt(r["decode_tokens_per_s"]), fmt(r["step_ms"], 2),
             fmt(r["total_tokens_per_s"]), fmt(hf[r["batch"]]["decode_tokens_per_s"]) if r["batch"] in hf else "-",
             f"{r['decode_tokens_per_s'] / hf[r['batch']]['decode_tokens_per_s']:.2f}x" if r["batch"] in hf else "-"]
            for r in results["engine"]]
    lines += measure.markdown_table(["batch", "samples/prompt", "engine decode tok/s", "engine step ms",
                                     "engine tok/s incl. prefill", "HF generate decode tok/s", "engine / HF"], rows)
    if results["verify"]:
        lines += ["", "Verify forward (1+k tokens per sequence) against a plain decode step:", ""]
        lines += measure.markdown_table(["batch", "k", "tokens in step", "step ms", "plain step ms", "cost ratio"],
                                        [[v["batch"], v["k"], v["tokens_in_step"], fmt(v["step_ms"], 2),
                                          fmt(v["plain_step_ms"], 2), f"{v['cost_ratio']:.2f}x"] for v in results["verify"]])
    text = "\n".join(lines)
    print(text)
    return measure.write_results(out_dir, f"gpu_decode_{results['shape']}", results, text)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu (a smoke run with --shape tiny)")
    ap.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--batches", type=_ints, default=[1, 16, 64, 256], help="sequences decoding together")
    ap.add_argument("--samples", type=int, default=10, help="sequences per prompt (pass@10: 10)")
    ap.add_argument("--prompt-len", type=int, default=160)
    ap.add_argument("--gen-len", type=int, default=128, help="tokens per sequence (forced)")
    ap.add_argument("--verify-k", type=_ints, default=[1, 4, 8, 16], help="draft tokens per sequence in a verify step")
    ap.add_argument("--verify-batches", type=_ints, default=[1, 16, 64], help="batches for the verify-cost runs")
    ap.add_argument("--hf-batches", type=_ints, default=[1, 16, 64], help="HF generate() batches ('' for none)")
    ap.add_argument("--kv-cache-gb", type=float, default=None, help="KV cache size (default: 30 on CUDA, 1 on CPU)")
    ap.add_argument("--copy-mb", type=int, default=2048, help="size of the bandwidth test tensor")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    report(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
