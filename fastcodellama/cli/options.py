"""Options shared by the subcommands: the engine's and the speculation's, defined once here and
used by every command that runs the engine (generate, humaneval, serve), and Ray's."""
from __future__ import annotations

import argparse
import dataclasses

from engine import LLM
from engine.attention import BACKENDS
from engine.config import DEFAULT_MODEL, DTYPES, EngineConfig
from fastcodellama.drafting import SpecConfig, build_proposer
from fastcodellama.drafting.config import POLICIES, SOURCES
from fastcodellama.job.types import ReplicaSpec
from fastcodellama.ray_cluster import LOCAL, RayConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}


def add_engine_args(parser: argparse.ArgumentParser, model_flags: tuple[str, ...] = ("--model",)) -> None:
    d = _DEFAULTS
    g = parser.add_argument_group("engine")
    g.add_argument(*model_flags, dest="model", default=DEFAULT_MODEL,
                   help="Hugging Face checkpoint folder (default: the embedded demo model)")
    g.add_argument("--dtype", default=d["dtype"], choices=("auto", *DTYPES),
                   help="auto: float32 on the CPU, bfloat16 on a GPU")
    g.add_argument("--device", default=d["device"], help="auto, cpu, cuda, cuda:1 ... (auto: cuda if available)")
    g.add_argument("--block-size", type=int, default=d["block_size"], help="tokens per KV-cache block")
    g.add_argument("--num-kv-blocks", type=int, default=d["num_kv_blocks"],
                   help="KV-cache blocks (overrides --kv-cache-memory-gb)")
    g.add_argument("--kv-cache-memory-gb", type=float, default=d["kv_cache_memory_gb"])
    g.add_argument("--max-num-seqs", type=int, default=d["max_num_seqs"], help="sequences running at once")
    g.add_argument("--max-num-batched-tokens", type=int, default=d["max_num_batched_tokens"],
                   help="tokens in one step: decodes, drafts and prefill chunks")
    g.add_argument("--max-model-len", type=int, default=d["max_model_len"],
                   help="longest prompt + output (default: the model's)")
    g.add_argument("--attention-backend", default=d["attention_backend"], choices=BACKENDS)
    g.add_argument("--threads", dest="num_threads", type=int, default=d["num_threads"],
                   help="CPU threads (default: torch's)")
    g.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false",
                   help="compute every prompt in full, even where a cached one starts the same")
    g.add_argument("--cost-sweep", action="store_true",
                   help="time decode and verify steps at start-up (for benchmarks; step costs are "
                        "otherwise learned while running)")


def add_spec_args(parser: argparse.ArgumentParser, default_on: bool = True) -> None:
    s = SpecConfig()
    g = parser.add_argument_group("copy-draft speculation")
    g.add_argument("--speculate", dest="speculate", action="store_true", default=default_on)
    g.add_argument("--no-speculate", dest="speculate", action="store_false")
    g.add_argument("--n", dest="spec_n", type=int, default=s.n, help="shortest suffix match (tokens)")
    g.add_argument("--k", dest="spec_k", type=int, default=s.k, help="longest draft (tokens)")
    g.add_argument("--draft-sources", default=",".join(s.sources), help=f"any of {','.join(SOURCES)}")
    g.add_argument("--draft-policy", default=s.policy, choices=POLICIES,
                   help="adaptive: draft where it pays, on the step costs learned while running; "
                        "fixed: every copy as long as it goes, every step")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(**{name: getattr(args, name) for name in _DEFAULTS if hasattr(args, name)})


def spec_config(args: argparse.Namespace) -> SpecConfig | None:
    if not args.speculate:
        return None
    sources = tuple(s.strip() for s in args.draft_sources.split(",") if s.strip())
    return SpecConfig(n=args.spec_n, k=args.spec_k, max_match=max(4, args.spec_n), sources=sources,
                      policy=args.draft_policy)


def build_llm(args: argparse.Namespace) -> LLM:
    spec = spec_config(args)
    return LLM(engine_config(args), proposer=build_proposer(spec) if spec is not None else None)


def add_ray_args(parser: argparse.ArgumentParser, replicas: bool = True) -> None:
    g = parser.add_argument_group("ray (pip install 'fastcodellama[ray]')")
    g.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                   help="run on Ray; alone: a local Ray started by the job; or a cluster address "
                        "(auto, HOST:6379, ray://HOST:10001)")
    if replicas:
        g.add_argument("--replicas", type=int, default=None,
                       help="engine replicas (default: one per GPU of the cluster, else 1)")
        g.add_argument("--cpus-per-replica", type=float, default=1.0)


def ray_config(args: argparse.Namespace) -> RayConfig:
    return RayConfig(address=None if args.ray == LOCAL else args.ray, replicas=getattr(args, "replicas", None),
                     cpus_per_replica=getattr(args, "cpus_per_replica", 1.0))


def replica_spec(args: argparse.Namespace) -> ReplicaSpec:
    return ReplicaSpec(engine_config(args), spec_config(args))
