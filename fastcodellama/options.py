"""Command-line options shared by the subcommands that run the engine."""
from __future__ import annotations

import argparse
import dataclasses

from engine.attention import BACKENDS
from engine.config import DEFAULT_MODEL, EngineConfig
from fastcodellama.spec_config import SpecConfig


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}


def add_engine_args(parser: argparse.ArgumentParser, model_flags: tuple[str, ...] = ("--model",)) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument(*model_flags, dest="model", default=DEFAULT_MODEL,
                   help="Hugging Face Llama checkpoint folder (default: the embedded demo model)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--block-size", type=int, default=_DEFAULTS["block_size"])
    g.add_argument("--num-kv-blocks", type=int, default=_DEFAULTS["num_kv_blocks"])
    g.add_argument("--kv-cache-memory-gb", type=float, default=_DEFAULTS["kv_cache_memory_gb"])
    g.add_argument("--max-num-seqs", type=int, default=_DEFAULTS["max_num_seqs"])
    g.add_argument("--max-num-batched-tokens", type=int, default=_DEFAULTS["max_num_batched_tokens"])
    g.add_argument("--max-model-len", type=int, default=_DEFAULTS["max_model_len"])
    g.add_argument("--attention-backend", default=_DEFAULTS["attention_backend"], choices=BACKENDS)
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--stagger-samples", type=int, default=_DEFAULTS["stagger_samples"],
                   help="at most this many samples of one request side by side while other requests "
                        "wait, so that later samples copy drafts from finished ones (0: no limit)")


def add_spec_args(parser: argparse.ArgumentParser, default_on: bool = True) -> None:
    g = parser.add_argument_group("copy-draft speculation")
    g.add_argument("--speculate", dest="speculate", action="store_true", default=default_on)
    g.add_argument("--no-speculate", dest="speculate", action="store_false")
    g.add_argument("--n", dest="spec_n", type=int, default=1, help="shortest suffix match (tokens)")
    g.add_argument("--k", dest="spec_k", type=int, default=20, help="longest draft (tokens)")
    g.add_argument("--draft-sources", default="self,sibling,other")
    g.add_argument("--draft-policy", default="adaptive", choices=["adaptive", "fixed"])
    g.add_argument("--cost-curve", default="measured",
                   help="measured (at start-up, default), cpu, h100 or flat")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return EngineConfig(
        model=args.model, dtype=args.dtype, device=args.device, block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks, kv_cache_memory_gb=args.kv_cache_memory_gb,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, attention_backend=args.attention_backend,
        stagger_samples=args.stagger_samples)


def spec_config(args: argparse.Namespace) -> SpecConfig | None:
    if not args.speculate:
        return None
    sources = tuple(s.strip() for s in args.draft_sources.split(",") if s.strip())
    return SpecConfig(n=args.spec_n, k=args.spec_k, max_match=max(4, args.spec_n), sources=sources,
                      policy=args.draft_policy, cost_curve=args.cost_curve)


def build_llm(args: argparse.Namespace):
    from engine import LLM
    from fastcodellama.spec_config import build_proposer

    spec = spec_config(args)
    proposer = build_proposer(spec) if spec is not None else None
    cfg = engine_config(args)
    return LLM(cfg.model, proposer=proposer, **{k: v for k, v in cfg.__dict__.items() if k not in ("model", "extra")})
