"""Which fast paths a device gets: decided here, once per engine, and reported at start-up.

CPU: the C kernels (engine/kernels/cpu_kernels.c) when they build — paged attention (the "cpu"
backend), RMSNorm and the bf16 linear kernel where a checkpoint's weights are bf16-exact, the whole
decoder stack where every layer has them (plain Llama layers), and the sampler's filter-and-race.
CUDA: Triton paged flash attention, checked against the torch reference on the device before it is
used (a mismatch, or no Triton, leaves the reference), CUDA graphs for decode and verify steps, and
with 16-bit weights the Triton RMSNorm, rotary, SiLU-and-mul, residual-add-RMSNorm and
mixture-of-experts kernels (checked the same way; a mixture's reference cannot be captured, so
without them such a model runs without graphs), and the sampler's race noise from one Triton
kernel (checked to equal its reference bit for bit; whatever the attention and dtype), and its race
over each row's likeliest tokens from another (checked to give the reference's tokens). A capture that
fails leaves eager steps (engine/model_runner.py), and the reason in what is reported.
Anything else, and whatever is switched off, runs the PyTorch reference each fast path is tested
against.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import EngineConfig
from engine.kernels import cpu as cpu_kernels
from engine.sampler import CANDIDATES, RowKnobs, race_candidates, row_noise
from engine.sampling_params import SamplingParams

log = logging.getLogger("engine")
TRITON_MAX_HEAD_DIM = 1024  # the widest heads the Triton attention's tiles are sized and compiled for


@dataclass(frozen=True)
class FastPaths:
    attention: str  # the backend's name: "cpu", "triton" or "torch"
    cpu_kernels: bool  # C RMSNorm, bf16 linear and decoder stack, where the model's layers allow
    cpu_sampler: bool  # the C filter-and-race
    cuda_graphs: bool  # decode and verify steps replayed from captured graphs
    # Triton RMSNorm, rotary, SiLU-and-mul and add+RMSNorm kernels (16-bit weights on a GPU)
    triton_norm_rope: bool = False
    triton_noise: bool = False  # the sampler's race noise from the Triton kernel (a GPU)
    triton_race: bool = False  # the sampler's race over each row's likeliest tokens in one Triton kernel (a GPU)
    host_noise: bool = False  # the PyTorch sampling path's race noise in numpy's 32-bit arithmetic (a CPU)
    overlap: bool = False  # plain decode steps queued before the previous step's tokens reach the host
    notes: tuple[str, ...] = ()  # why a fast path is off

    def describe(self) -> str:
        parts = [f"attention {self.attention}",
                 f"C kernels {'on' if self.cpu_kernels else 'off'}",
                 f"C sampler {'on' if self.cpu_sampler else 'off'}",
                 f"CUDA graphs {'on' if self.cuda_graphs else 'off'}"]
        if self.triton_norm_rope:
            parts.append("Triton RMSNorm/RoPE/SiLU on")
        if self.triton_noise:
            parts.append("Triton sampling noise on")
        if self.triton_race:
            parts.append("Triton sampling race on")
        if self.host_noise:
            parts.append("numpy sampling noise on")
        if self.overlap:
            parts.append("overlapped steps on")
        return ", ".join(parts) + "".join(f"; {note}" for note in self.notes)


def choose(config: EngineConfig, device: torch.device, dtype: torch.dtype,
           sliding_window: int | None = None, routed: bool = False, head_dim: int = 128,
           heads: tuple[int, int] | None = None) -> FastPaths:
    """`routed`: the model has mixture-of-experts layers, whose reference reads the routing back
    to the host every layer (engine/models/moe.py): no CUDA graph can capture that, only the
    Triton experts' kernels (engine/kernels/triton_moe.py, on with the other Triton kernels).
    `head_dim`: what attention runs over (the cached latent's width for DeepSeek-V2); `heads`: the
    model's query and cached heads, which the Triton attention's check runs at too."""
    if device.type == "cpu":
        return _cpu(config)
    if device.type == "cuda":
        return _cuda(config, device, dtype, sliding_window, routed, head_dim, heads)
    return FastPaths(_named(config, "torch"), False, False, False, overlap=config.overlap_steps == "on",
                     notes=(f"no fast paths on {device.type}",))


def _cpu(config: EngineConfig) -> FastPaths:
    built = cpu_kernels.available()
    notes = () if built else ("C kernels unavailable (no compiler, or FASTCODELLAMA_NO_CPU_KERNELS)",)
    if config.attention_backend == "cpu" and not built:
        raise ValueError("the cpu attention backend needs the C kernels, which did not build (see the log)")
    attention = _named(config, "cpu" if built else "torch")
    if attention == "triton":
        raise ValueError("the triton attention backend runs on CUDA devices only")
    return FastPaths(attention, built, built, False, host_noise=True, overlap=config.overlap_steps == "on",
                     notes=notes)


def _cuda(config: EngineConfig, device: torch.device, dtype: torch.dtype, sliding_window: int | None,
          routed: bool, head_dim: int, heads: tuple[int, int] | None = None) -> FastPaths:
    notes: list[str] = []
    attention = _named(config, "triton")
    if attention == "triton":
        if head_dim > TRITON_MAX_HEAD_DIM:  # a head's tile no longer fits a block's registers and shared memory
            problem = f"heads of {head_dim} dims, past the kernel's {TRITON_MAX_HEAD_DIM}"
        else:
            problem = triton_problem(device, dtype, sliding_window, head_dim, heads, config.block_size)
        if problem is not None:
            if config.attention_backend == "triton":
                raise ValueError(f"the triton attention backend cannot run here: {problem}")
            notes.append(f"Triton attention off ({problem})")
            attention = "torch"
    fused = attention == "triton" and dtype in (torch.bfloat16, torch.float16)
    if fused:
        problem = norm_rope_problem(device, dtype, routed)
        if problem is not None:
            notes.append(f"Triton RMSNorm/RoPE/SiLU off ({problem})")
            fused = False
    # The reference's metadata is not static; nor is the reference mixture of experts' routing:
    # both are read back every step, so no graph can hold them, nor can a step queued ahead run
    # while its host builds the next.
    host_free = attention == "triton" and (fused or not routed)
    graphs = config.cuda_graphs and host_free
    if not config.cuda_graphs:
        notes.append("CUDA graphs switched off")
    elif attention != "triton":
        notes.append("CUDA graphs need Triton attention")
    elif not graphs:
        notes.append("CUDA graphs off (mixture-of-experts layers route on the host without the Triton kernels)")
    problem = noise_problem(device)
    if problem is not None:
        notes.append(f"Triton sampling noise off ({problem})")
    race = race_problem(device)
    if race is not None:
        notes.append(f"Triton sampling race off ({race})")
    overlap = config.overlap_steps == "on" or (config.overlap_steps == "auto" and host_free)
    if config.overlap_steps == "auto" and not host_free:
        notes.append("overlapped steps off (the reference attention or experts read back every step)")
    return FastPaths(attention, False, False, graphs, fused, triton_noise=problem is None, triton_race=race is None,
                     overlap=overlap, notes=tuple(notes))


def _named(config: EngineConfig, auto: str) -> str:
    return auto if config.attention_backend == "auto" else config.attention_backend


def triton_problem(device: torch.device, dtype: torch.dtype, sliding_window: int | None,
                   head_dim: int = 128, heads: tuple[int, int] | None = None, block_size: int = 16) -> str | None:
    """None when the Triton kernels compile here and agree with the torch reference on a small mixed
    step (prefill chunk, decode, a verify with shared prompt blocks), and on that step at the
    model's own heads (`heads`: query and cached heads), width and cache block size as well (the
    kernels compile for those: one that failed only there would fail at the first step); for heads
    wider than the default tiles take (DeepSeek-V2's latent rows) and no `heads`, at that width
    under multi-query attention; else what went wrong."""
    try:
        from engine.attention.self_check import compare_with_reference
        from engine.attention.triton_attention import WIDE_HEAD
    except ImportError as e:  # no triton
        return f"triton is not importable: {e}"
    shapes = [{}]
    if heads is not None:
        shapes.append({"heads": heads[0], "kv_heads": heads[1], "head_dim": head_dim, "block": block_size})
    elif head_dim > WIDE_HEAD:
        shapes.append({"heads": 16, "kv_heads": 1, "head_dim": head_dim})
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for shape in shapes:
        try:
            error = compare_with_reference(device, dtype, sliding_window, **shape)
        except Exception as e:  # noqa: BLE001 - a kernel that does not build here leaves the reference
            return f"{type(e).__name__}: {e}"
        if error > tolerance:
            return f"differs from the torch reference by {error:.3g}" + (f" at heads of {head_dim}" if shape else "")
    return None


def norm_rope_problem(device: torch.device, dtype: torch.dtype, routed: bool = False) -> str | None:
    """None when the Triton RMSNorm, rotary, SiLU-and-mul and add+RMSNorm kernels (and, for a model
    with mixture-of-experts layers, the experts' kernels) agree with their references on the device
    (within a rounding step of the dtype: they round where the references round); else what went
    wrong."""
    try:
        errors = _fused_kernel_errors(device, dtype)
        if routed:  # the experts' kernels compile only for a model that has a mixture
            errors["mixture of experts"] = _moe_error(device, dtype, torch.Generator(device="cpu").manual_seed(1))
    except Exception as e:  # noqa: BLE001 - a kernel that does not build here leaves the reference
        return f"{type(e).__name__}: {e}"
    for name, error in errors.items():
        # Two bf16 rounding steps of the largest value; the experts' reference rounds after each of
        # its six operations and sums in another order (about 4 steps off). A wrong kernel (a wrong
        # expert, weight or row) is off by far more.
        if error > (2 ** -4 if name == "mixture of experts" else 2 ** -6):
            return f"{name} differs from the reference by {error:.3g} of its largest value"
    return None


def noise_problem(device: torch.device) -> str | None:
    """None when the Triton noise kernel computes exactly the sampler's noise on the device, with
    and without given token ids, at the extreme seeds and ids and a width past one block; else what
    went wrong."""
    try:
        from engine.kernels import triton_noise
    except ImportError as e:  # no triton
        return f"triton is not importable: {e}"
    gen = torch.Generator(device="cpu").manual_seed(0)
    seeds = torch.cat([torch.tensor([0, 2**32 - 1, 2**31]), torch.randint(0, 2**32, (2,), generator=gen)])
    ids = torch.randint(0, 2**31, (len(seeds), 1500), generator=gen)
    ids[:, :2] = torch.tensor([0, 2**31 - 1])
    try:
        seeds, ids = seeds.to(device), ids.to(device)
        for form, token_ids in (("over the vocabulary", None), ("of given token ids", ids)):
            got = triton_noise.uniform_hash(seeds, token_ids, ids.shape[1])
            if not torch.equal(got, row_noise(seeds, token_ids, ids.shape[1])):
                return f"the noise {form} differs from the reference"
    except Exception as e:  # noqa: BLE001 - a kernel that does not build here leaves the reference
        return f"{type(e).__name__}: {e}"
    return None


def race_problem(device: torch.device) -> str | None:
    """None when the Triton race gives race_candidates' tokens and coverage on the device, over rows
    with and without top-k, top-p and min-p, ties, dropped tokens and rows the candidates cannot
    cover, at a vocabulary of many blocks, and in a batch without min-p (the kernel's other
    variant: both compile now, not at a job's first sampled step); else what went wrong."""
    try:
        from engine.kernels import triton_race
    except ImportError as e:  # no triton
        return f"triton is not importable: {e}"
    try:
        x, knobs = _race_check_rows(device)
    except Exception as e:  # noqa: BLE001 - a device that cannot take the rows leaves the reference
        return f"{type(e).__name__}: {e}"
    for batch in (knobs, knobs._replace(log_min_p=None, any_min_p=False)):
        try:
            want = race_candidates(x, batch)
            tokens, covered = race_candidates(x, batch, kernel=triton_race.race)
        except Exception as e:  # noqa: BLE001 - a kernel that does not build here leaves the reference
            return f"{type(e).__name__}: {e}"
        if not torch.equal(covered, want[1]):
            return "which rows the candidates cover differs from the reference"
        if not torch.equal(tokens[covered], want[0][covered]):
            return "a token differs from the reference"
    return None


def _race_check_rows(device: torch.device) -> tuple[torch.Tensor, RowKnobs]:
    """Rows for the race's check: 64 of a 5,000-token vocabulary, peaked, flat, tied (across the
    candidates' end, and across the top-p cut: rows 20-29), some tokens dropped (-inf), each with
    a temperature, top-k, top-p and min-p of its own."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((64, 5000), generator=gen) * torch.rand((64, 1), generator=gen) * 8
    x[1:8, :1200] = 1.5  # ties across the candidates' end
    x[8:12] = torch.randint(0, 3, (4, 5000), generator=gen).float()
    x[12:16, 40:] = float("-inf")
    x[16:20] *= 0.01  # flat: not covered
    x[20:30] = torch.randn((10, 5000), generator=gen) - 12.0
    x[20:30, :11] = torch.tensor([5.0] + [4.0] * 10)  # ten equal tokens, the top-p cut among them
    params = [SamplingParams(temperature=(0.3, 0.8, 1.0, 1.6)[i % 4], top_p=(1.0, 0.95, 0.5, 0.1, 0.999)[i % 5],
                             top_k=(0, 0, 3, 40, CANDIDATES, CANDIDATES + 1)[i % 6], min_p=(0.0, 0.0, 0.05)[i % 3])
              for i in range(64)]
    params[20:30] = [SamplingParams(temperature=1.0, top_p=0.5)] * 10
    seeds = torch.randint(0, 2**32, (64,), generator=gen).numpy().astype(np.uint64)
    return x.to(device), RowKnobs.of(params, seeds, device)


def _fused_kernel_errors(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Each Triton kernel's largest error against its PyTorch reference, relative to the largest
    value, at a 7B model's widths (an intermediate width that is not a power of two)."""
    import torch.nn.functional as F

    from engine.kernels import triton_fused
    from engine.models.norm import RMSNorm
    from engine.models.rotary import Rotary, apply_rotary

    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((37, 4096), generator=gen).to(device, dtype)
    norm = RMSNorm(4096, 1e-5).to(device, dtype)
    norm.weight.data = torch.rand(4096, generator=gen).to(device, dtype) + 0.5
    qk = torch.randn((37, 6, 128), generator=gen).to(device, dtype)
    cos_sin = Rotary(128, 4096, 10_000.0).to(device).tables(torch.arange(37, device=device) * 97, dtype)
    expected, _ = apply_rotary(cos_sin, qk, qk[:, :1])
    gate_up = (3 * torch.randn((5, 2 * 11008), generator=gen)).to(device, dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    attn = torch.randn((37, 4096), generator=gen).to(device, dtype)
    total, normed = triton_fused.add_rms_norm(x, attn, norm.weight, norm.eps)
    return {"rotary": _relative(triton_fused.rope_(qk.clone(), *cos_sin), expected),
            "RMSNorm": _relative(triton_fused.rms_norm(x, norm.weight, norm.eps), norm(x)),
            "SiLU-and-mul": _relative(triton_fused.silu_mul(gate_up), F.silu(gate) * up),
            "residual add": _relative(total, x + attn),
            "add+RMSNorm": _relative(normed, norm(x + attn))}


def _moe_error(device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> float:
    """The Triton experts against the reference SparseMoE: 8 experts of 2 per token, 37 tokens,
    widths of a tile and more (small: the tests run it under the interpreter)."""
    from engine.config import ModelConfig
    from engine.kernels import triton_moe
    from engine.models.moe import SparseMoE

    experts, hidden, width = 8, 160, 96
    cfg = ModelConfig(vocab_size=8, hidden_size=hidden, intermediate_size=width, num_layers=1, num_heads=1,
                      num_kv_heads=1, head_dim=hidden, max_position_embeddings=8, norm_eps=1e-6, rope_theta=1e4,
                      num_experts=experts, experts_per_token=2, moe_intermediate_size=width, norm_topk_prob=True)
    moe = SparseMoE(cfg)
    for p in moe.parameters():
        p.data = (torch.randn(p.shape, generator=gen) * 0.1).to(device, dtype)
    x = torch.randn((37, hidden), generator=gen).to(device, dtype)
    weights, chosen = moe.route(x)
    gate_up = moe.experts_gate_up.view(experts, 2 * width, hidden)
    down = moe.experts_down.view(experts, hidden, width)
    return _relative(triton_moe.moe(x, weights, chosen, gate_up, down), moe(x))


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def report(paths: FastPaths, packed_layers: int, stack: bool) -> None:
    extra = f", {packed_layers} linear layers on the C kernel, decoder stack {'C' if stack else 'modules'}" \
        if paths.cpu_kernels else ""
    log.info("fast paths: %s%s", paths.describe(), extra)
