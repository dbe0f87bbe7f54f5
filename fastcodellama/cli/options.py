"""Options shared by the subcommands: the engine's and the speculation's, defined once here and
used by every command that runs the engine (generate, humaneval, serve), and Ray's.

Parsing them never imports the engine (torch takes seconds to load): the defaults and choices
shown by --help are read from EngineConfig and SpecConfig only when shown, and an option left at
its default is left out of the config, which then takes its own default.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from fastcodellama.cli.values import device, non_negative_int, positive_float, positive_int, probability
from fastcodellama.job.types import ReplicaSpec
from fastcodellama.ray_cluster import LOCAL, RayConfig

if TYPE_CHECKING:
    from engine import LLM, EngineConfig
    from fastcodellama.drafting import SpecConfig


def embedded_model() -> str:
    """engine.DEFAULT_MODEL, found without running engine/__init__ (which imports torch)."""
    package = importlib.util.find_spec("engine").submodule_search_locations[0]
    return os.path.join(package, "assets", "codemodel")


class ConfigDefault:
    """An option left at the default of its config class; shows that default in --help."""

    def __init__(self, read: Callable[[], object]) -> None:
        self._read = read

    def __str__(self) -> str:
        value = self._read()
        return ",".join(value) if isinstance(value, tuple) else str(value)


class LazyChoices:
    """Choices read from the engine only when an option is given or --help shown."""

    def __init__(self, read: Callable[[], tuple[str, ...]]) -> None:
        self._read = read

    def __contains__(self, value: object) -> bool:
        return value in self._read()

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())


def _engine_default(name: str) -> ConfigDefault:
    def read():
        from engine.config import EngineConfig

        return {f.name: f.default for f in dataclasses.fields(EngineConfig)}[name]
    return ConfigDefault(read)


def _spec_default(name: str) -> ConfigDefault:
    def read():
        from fastcodellama.drafting import SpecConfig

        return getattr(SpecConfig(), name)
    return ConfigDefault(read)


def _dtypes() -> tuple[str, ...]:
    from engine.config import DTYPES

    return ("auto", *DTYPES)


def _graph_captures() -> tuple[str, ...]:
    from engine.config import GRAPH_CAPTURE

    return GRAPH_CAPTURE


def _overlaps() -> tuple[str, ...]:
    from engine.config import OVERLAP

    return OVERLAP


def _backends() -> tuple[str, ...]:
    from engine.config import ATTENTION_BACKENDS

    return ATTENTION_BACKENDS


def _policies() -> tuple[str, ...]:
    from fastcodellama.drafting.config import POLICIES

    return POLICIES


def add_engine_args(parser: argparse.ArgumentParser, model_flags: tuple[str, ...] = ("--model",),
                    graph_capture: str | None = None) -> None:
    """`graph_capture`: the command's own default of --cuda-graph-capture (else EngineConfig's)."""
    d = _engine_default
    g = parser.add_argument_group("engine")
    g.add_argument(*model_flags, dest="model", default=embedded_model(), metavar="DIR",
                   help="Hugging Face checkpoint folder (default: the embedded demo model)")
    g.add_argument("--dtype", default=d("dtype"), choices=LazyChoices(_dtypes), metavar="DTYPE",
                   help="%(choices)s (default %(default)s: float32 on the CPU, bfloat16 on a GPU)")
    g.add_argument("--device", type=device, default=d("device"),
                   help="auto, cpu, cuda, cuda:1 ... (default %(default)s: cuda if available)")
    g.add_argument("--block-size", type=positive_int, default=d("block_size"),
                   help="tokens per KV-cache block (default %(default)s)")
    g.add_argument("--num-kv-blocks", type=positive_int, default=d("num_kv_blocks"),
                   help="KV-cache blocks (overrides --kv-cache-memory-gb)")
    g.add_argument("--kv-cache-memory-gb", type=positive_float, default=d("kv_cache_memory_gb"),
                   help="the KV cache's size (default: on a GPU, what --gpu-memory-utilization leaves after the "
                        "weights and a step's activations; 2 on the CPU)")
    g.add_argument("--gpu-memory-utilization", type=probability, default=d("gpu_memory_utilization"),
                   help="the share of the GPU's memory the engine may hold: weights, KV cache, activations "
                        "(default %(default)s)")
    g.add_argument("--max-num-seqs", type=positive_int, default=d("max_num_seqs"),
                   help="sequences running at once (default %(default)s)")
    g.add_argument("--max-num-batched-tokens", type=positive_int, default=d("max_num_batched_tokens"),
                   help="tokens in one step: decodes, drafts and prefill chunks (default %(default)s)")
    g.add_argument("--max-model-len", type=positive_int, default=d("max_model_len"),
                   help="longest prompt + output (default: the model's)")
    g.add_argument("--attention-backend", default=d("attention_backend"), choices=LazyChoices(_backends),
                   metavar="BACKEND", help="%(choices)s (default %(default)s)")
    g.add_argument("--threads", dest="num_threads", type=positive_int, default=d("num_threads"),
                   help="CPU threads (default: one per CPU this process may use, fewer under a container's CPU "
                        "quota; engine/threads.py)")
    g.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false",
                   default=d("enable_prefix_caching"),
                   help="compute every prompt in full, even where a cached one starts the same")
    g.add_argument("--cost-sweep", action="store_true", default=d("cost_sweep"),
                   help="time decode and verify steps at start-up (benchmarks; step costs are otherwise "
                        "learned from the steps run, and kept per machine)")
    g.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=d("cuda_graphs"),
                   help="on a GPU, run decode and verify steps eagerly instead of replaying CUDA graphs")
    g.add_argument("--cuda-graph-capture", default=graph_capture or d("cuda_graph_capture"),
                   choices=LazyChoices(_graph_captures), metavar="WHEN",
                   help="%(choices)s: capture every CUDA graph before the first step, or each when a step first "
                        "needs it (default %(default)s)")
    g.add_argument("--overlap-steps", default=d("overlap_steps"), choices=LazyChoices(_overlaps), metavar="WHEN",
                   help="%(choices)s: queue a plain decode step on the device before the previous step's tokens "
                        "reach the host, which applies them meanwhile (default %(default)s: on a GPU)")


def add_spec_args(parser: argparse.ArgumentParser, default_on: bool = True) -> None:
    s = _spec_default
    g = parser.add_argument_group("copy-draft speculation")
    g.add_argument("--speculate", dest="speculate", action="store_true", default=default_on)
    g.add_argument("--no-speculate", dest="speculate", action="store_false")
    g.add_argument("--n", dest="spec_n", type=positive_int, default=s("n"),
                   help="shortest suffix match (tokens, default %(default)s)")
    g.add_argument("--k", dest="spec_k", type=non_negative_int, default=s("k"),
                   help="longest draft (tokens, default %(default)s)")
    g.add_argument("--draft-sources", default=s("sources"),
                   help="comma-separated texts drafts are copied from (default %(default)s)")
    g.add_argument("--draft-policy", default=s("policy"), choices=LazyChoices(_policies), metavar="POLICY",
                   help="%(choices)s (default %(default)s)")


def _given(value: object) -> bool:
    return not isinstance(value, ConfigDefault)


def engine_config(args: argparse.Namespace) -> "EngineConfig":
    """The EngineConfig of the options given (ValueError for values it refuses)."""
    from engine.config import EngineConfig

    names = [f.name for f in dataclasses.fields(EngineConfig)]
    return EngineConfig(**{n: getattr(args, n) for n in names if hasattr(args, n) and _given(getattr(args, n))})


def spec_config(args: argparse.Namespace) -> "SpecConfig | None":
    """The SpecConfig of the options given, None for plain decoding (ValueError for values it refuses)."""
    if not args.speculate:
        return None
    from fastcodellama.drafting import SpecConfig

    given = {"n": args.spec_n, "k": args.spec_k, "policy": args.draft_policy}
    values = {name: value for name, value in given.items() if _given(value)}
    if "n" in values:
        values["max_match"] = max(SpecConfig().max_match, values["n"])
    if _given(args.draft_sources):
        values["sources"] = tuple(s.strip() for s in args.draft_sources.split(",") if s.strip())
    return SpecConfig(**values)


def build_llm(args: argparse.Namespace) -> "LLM":
    from engine import LLM
    from fastcodellama.drafting import build_proposer

    spec = spec_config(args)
    return LLM(engine_config(args), proposer=build_proposer(spec) if spec is not None else None)


def add_ray_args(parser: argparse.ArgumentParser, replicas: bool = True) -> None:
    g = parser.add_argument_group("ray (pip install 'fastcodellama[ray]')")
    g.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                   help="run on Ray; alone: a local Ray started by the job; or a cluster address "
                        "(auto, HOST:6379, ray://HOST:10001)")
    if replicas:
        g.add_argument("--replicas", type=positive_int, default=None,
                       help="engine replicas (default: one per GPU of the cluster, else 1)")
        g.add_argument("--cpus-per-replica", type=positive_float, default=1.0)


def ray_config(args: argparse.Namespace) -> RayConfig:
    return RayConfig(address=None if args.ray == LOCAL else args.ray, replicas=getattr(args, "replicas", None),
                     cpus_per_replica=getattr(args, "cpus_per_replica", 1.0))


def replica_spec(args: argparse.Namespace) -> ReplicaSpec:
    return ReplicaSpec(engine_config(args), spec_config(args))
