"""Every Triton kernel of the engine, compiled for real GPU targets through Triton's own compiler,
on a machine without a GPU: what the interpreter lets pass (types, tl.dot shapes, libdevice
calls, which the interpreter never makes) fails here.

A launch that needs more shared memory than the target gives a block fails too (on the device
that is a launch error, not a compile error). The launches are the engine's own: the attention
backend and the fused kernels run on CPU tensors at model shapes, in bf16 and fp16, and the sampler
at model vocabularies and batch sizes; each kernel launch is recorded instead of run, and its
arguments give the signature to compile (a tensor's dtype, an int's width). The two arguments a
CUDA launch sets from the device are given as a GPU gives them: tensor-core tiles for 16-bit
attention (LOW_PRECISION) and libdevice's exp in SiLU-and-mul and the sampler's race (LIBDEVICE).

    python -m tests.engine.kernels.gpu_compile      # prints what it compiled; exits 1 on a failure

Run without TRITON_INTERPRET (the test does so in a subprocess).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from engine.attention import triton_attention as ta
from engine.attention.triton_meta import LaunchConfig
from engine.kernels import triton_fused as tf
from engine.kernels import triton_moe as tm
from engine.kernels import triton_noise as tn
from engine.kernels import triton_race as tr
from engine.sampler import Sampler, SamplingRow
from engine.sampling_params import SamplingParams
from engine.step_batch import SeqChunk, StepBatch

ATTENTION_KERNELS = ("_write_kv_kernel", "_own_kernel", "_prefix_kernel", "_merge_kernel")
FUSED_KERNELS = ("_rms_norm_kernel", "_rope_kernel", "_add_rms_norm_kernel", "_silu_mul_kernel")
MOE_KERNELS = ("_grouped_kernel",)
NOISE_KERNELS = ("_uniform_hash_kernel",)
RACE_KERNELS = ("_race_kernel",)
_POINTER = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
            torch.int64: "*i64", torch.int8: "*i8", torch.bool: "*i1"}
BLOCK = 16
# (query heads, kv heads, head dim, sliding window): CodeLlama-7B, GQA (Qwen2.5-Coder-7B-like), a
# window (Mistral-7B-v0.1, StarCoder2), 6 query heads per kv head (Codestral-22B), multi-query
# (StarCoder-15B), heads of 256 (CodeGemma-7B, and CodeGemma-2B's multi-query), DeepSeek-Coder-V2-Lite's
# latent rows (16 heads over one 576-wide row: the wide tiles).
SHAPES = ((32, 32, 128, None), (32, 8, 128, None), (32, 8, 128, 4096), (48, 8, 128, None), (48, 1, 128, None),
          (16, 16, 256, None), (8, 1, 256, None), (16, 1, 576, None),
          (4, 2, 8, None))  # heads narrower than tl.dot's 16 (tiles padded to it)
# Shared memory a block may use (bytes): past it a launch fails on the device, not the compile.
SHARED_LIMIT = {80: 166912, 90: 232448}


@dataclass
class Launches:
    """Recorded launches, one per distinct (kernel, argument types, constexprs, options)."""

    seen: dict[tuple, tuple[Any, dict, dict, dict]] = field(default_factory=dict)

    def recorder(self, kernel, gpu_values: dict[str, Any]):
        launches = self

        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.add(kernel, args, {**kwargs, **gpu_values})

        return _Grid()

    def add(self, kernel, args: tuple, kwargs: dict) -> None:
        names = kernel.arg_names
        signature = {name: _type_of(value) for name, value in zip(names, args)}
        constexprs = {name: value for name, value in kwargs.items() if name in names}
        signature.update({name: "constexpr" for name in constexprs})
        options = {name: value for name, value in kwargs.items() if name not in names}
        aligned = {name for name, value in zip(names, args) if isinstance(value, torch.Tensor)
                   or (isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0 and value)}
        # Alignment is left out of the key: it changes how loads vectorize, not what compiles.
        key = (kernel.fn.__name__, tuple(signature.items()), tuple(sorted(constexprs.items())),
               tuple(sorted(options.items())))
        self.seen.setdefault(key, (kernel, signature, constexprs, {"options": options, "aligned": aligned}))


def _type_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return _POINTER[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"an argument of type {type(value).__name__}")


def _attention_steps() -> list[list[SeqChunk]]:
    """Decode steps (a long context, short ones), a verify step, siblings sharing their prompt's
    blocks, and a prefill chunk."""
    prompt = tuple(range(1, 9))  # 8 blocks of 16: 128 positions shared by siblings
    decode = [SeqChunk((5,), 2000, tuple(range(10, 10 + 126)), 0), SeqChunk((6,), 40, (200, 201, 202), 0)]
    verify = [SeqChunk((5, 6, 7, 8, 9), 300, tuple(range(300, 320)), 0)]
    siblings = [SeqChunk((7,), 130 + i, prompt + (400 + i,), 0) for i in range(4)]
    prefill = [SeqChunk(tuple(range(3, 40)), 0, (500, 501, 502), 36)]
    return [decode, verify, siblings, prefill]


def _launches_of_attention(launches: Launches, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int,
                           window: int | None) -> None:
    blocks = 600
    cache = torch.zeros(blocks, kv_heads, BLOCK, head_dim, dtype=dtype)
    backend = ta.TritonBackend(sliding_window=window, head_dim=head_dim)
    for chunks in _attention_steps():
        batch = StepBatch.build(chunks, BLOCK, torch.device("cpu"))
        t = batch.num_tokens
        q = torch.zeros(t, heads, head_dim, dtype=dtype)
        kv = torch.zeros(t, kv_heads, head_dim, dtype=dtype)
        per_seq = max(batch.query_lens)
        tile = min(backend.query_tile, triton.next_power_of_2(per_seq))
        launches_of_step = {backend.launch_for(batch, None)}
        launches_of_step |= {LaunchConfig(tile, backend.prefix_tile, splits, cascade) for splits in (1, 4)
                             for cascade in (False, True)}
        for launch in launches_of_step:
            backend.forward(q, kv, kv, cache, cache, batch, backend.prepare(batch, launch))


def _launches_of_fused(dtype: torch.dtype) -> None:
    hidden, rows = 4096, 3
    x = torch.zeros(rows, hidden, dtype=dtype)
    w = torch.ones(hidden, dtype=dtype)
    tf.rms_norm(x, w, 1e-5)
    tf.add_rms_norm(x, x, w, 1e-5)
    tf.silu_mul(torch.zeros(rows, 2 * 11008, dtype=dtype))
    qkv = torch.zeros(rows, 3 * 32, 128, dtype=dtype)  # rotary over a strided view of a fused projection
    tf.rope_(qkv[:, :32], torch.ones(rows, 1, 128, dtype=dtype), torch.zeros(rows, 1, 128, dtype=dtype))
    # Qwen3-Coder-30B-A3B's mixture (128 experts, 8 per token) at small widths: the launch depends on
    # the expert count and the tiles, which its real widths (2048, 768) fill as these do.
    experts, top_k, hidden, width = 128, 8, 64, 64
    for tokens in (3, 37):
        x = torch.zeros(tokens, hidden, dtype=dtype)
        chosen = torch.randint(0, experts, (tokens, top_k), generator=torch.Generator().manual_seed(tokens))
        tm.moe(x, torch.ones(tokens, top_k, dtype=dtype), chosen, torch.zeros(experts, 2 * width, hidden, dtype=dtype),
               torch.zeros(experts, hidden, width, dtype=dtype))
    # Experts narrower than tl.dot's 16 (tiles padded to it).
    x = torch.zeros(5, 8, dtype=dtype)
    chosen = torch.randint(0, 4, (5, 2), generator=torch.Generator().manual_seed(1))
    tm.moe(x, torch.ones(5, 2, dtype=dtype), chosen, torch.zeros(4, 16, 8, dtype=dtype), torch.zeros(4, 8, 8, dtype=dtype))


def _launches_of_noise() -> None:
    """The sampler's race noise at CodeLlama's and Qwen2.5's vocabularies: fewer rows than
    CANDIDATE_ROWS race the whole vocabulary (the noise of 0..vocab-1); more race their likeliest
    tokens (the race kernel, with and without min-p rows), and a flat row, which they cannot cover,
    the whole vocabulary (the noise of given ids)."""
    sampler = Sampler((), triton_noise=True, triton_race=True)
    for params in (SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=0.8, min_p=0.05)):
        for vocab in (32016, 152064):
            for rows in (1, 9, 64, 256):
                x = torch.zeros(rows, vocab)
                x[1:, 7] = 30.0  # every row but the first peaked: covered by the candidates
                sampler._sample(x, [SamplingRow(i, params, i, 0) for i in range(rows)])


def record() -> Launches:
    """Every distinct launch the engine makes at the shapes above."""
    launches = Launches()
    modules = ((ta, ATTENTION_KERNELS), (tf, FUSED_KERNELS), (tm, MOE_KERNELS), (tn, NOISE_KERNELS),
               (tr, RACE_KERNELS))
    saved = {(m, n): getattr(m, n) for m, names in modules for n in names}
    try:
        for dtype in (torch.bfloat16, torch.float16):
            for (module, name), kernel in saved.items():
                gpu = {"LOW_PRECISION": True} if name in ("_own_kernel", "_prefix_kernel", "_grouped_kernel") else \
                    {"LIBDEVICE": True} if name in ("_silu_mul_kernel", "_race_kernel") else {}
                setattr(module, name, launches.recorder(kernel, gpu))
            shapes = SHAPES if dtype == torch.bfloat16 else SHAPES[1:2]  # fp16: one shape
            for shape in shapes:
                _launches_of_attention(launches, dtype, *shape)
            _launches_of_fused(dtype)
        _launches_of_noise()  # float32 logits whatever the model's dtype
    finally:
        for (module, name), kernel in saved.items():
            setattr(module, name, kernel)
    return launches


def plan(launches: Launches) -> list[tuple[tuple, int]]:
    """(launch, target) pairs: every launch for sm_90 (the GPUs this project is measured on), and
    one launch of each kernel and argument types for sm_80 (what differs by target is the
    instruction selection, which one launch per kernel exercises)."""
    pairs = [(key, 90) for key in launches.seen]
    firsts = {}
    for key in launches.seen:
        firsts.setdefault((key[0], key[1]), key)
    return pairs + [(key, 80) for key in firsts.values()]


_LAUNCHES: Launches | None = None  # the parent's, read by forked workers


def _compile(pair: tuple[tuple, int]) -> tuple[int, str | None]:
    """One launch compiled for one target: (its shared memory in bytes, the failure as a line or None)."""
    key, cc = pair
    kernel, signature, constexprs, extra = _LAUNCHES.seen[key]
    names = kernel.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in extra["aligned"]}
    src = ASTSource(kernel, signature, {(names.index(n),): v for n, v in constexprs.items()}, attrs)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=extra["options"])
        assert compiled.asm["cubin"]
    except Exception as e:  # noqa: BLE001 - every failure is reported, not just the first
        return 0, f"{kernel.fn.__name__} sm_{cc} {constexprs}: {type(e).__name__}: {e}"[:2000]
    shared = compiled.metadata.shared
    if shared > SHARED_LIMIT[cc]:
        return shared, (f"{kernel.fn.__name__} sm_{cc} {constexprs}: needs {shared} bytes of shared memory, the "
                        f"device gives a block {SHARED_LIMIT[cc]}")
    return shared, None


def compile_all(launches: Launches) -> tuple[int, int, list[str]]:
    """Compiles the plan on every core; (compilations, the most shared memory one needs, failures as
    lines; a launch that needs more shared memory than its target gives a block is one)."""
    global _LAUNCHES
    _LAUNCHES = launches
    pairs = plan(launches)
    with multiprocessing.get_context("fork").Pool(min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(_compile, pairs, chunksize=1)
    return len(pairs), max(shared for shared, _ in results), [line for _, line in results if line is not None]


def main() -> int:
    launches = record()
    kernels = sorted({key[0] for key in launches.seen})
    compiled, shared, failures = compile_all(launches)
    print(f"triton {triton.__version__}: {len(launches.seen)} launches of {len(kernels)} kernels "
          f"({', '.join(kernels)}), {compiled} compilations for sm_90 and sm_80, at most {shared} bytes of "
          f"shared memory: {len(failures)} failed")
    for line in failures:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
