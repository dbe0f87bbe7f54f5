"""Which fast paths a device gets: decided here, once per engine, and reported at start-up.

CPU: the C kernels (engine/kernels/cpu_kernels.c) when they build — paged attention (the "cpu"
backend), RMSNorm and the bf16 linear kernel where a checkpoint's weights are bf16-exact, the whole
decoder stack where every layer has them (plain Llama layers), and the sampler's filter-and-race.
CUDA: Triton paged flash attention, checked against the torch reference on the device before it is
used (a mismatch, or no Triton, leaves the reference), and CUDA graphs for decode and verify steps.
Anything else, and whatever is switched off, runs the PyTorch reference each fast path is tested
against.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.config import EngineConfig
from engine.kernels import cpu as cpu_kernels

log = logging.getLogger("engine")


@dataclass(frozen=True)
class FastPaths:
    attention: str  # the backend's name: "cpu", "triton" or "torch"
    cpu_kernels: bool  # C RMSNorm, bf16 linear and decoder stack, where the model's layers allow
    cpu_sampler: bool  # the C filter-and-race
    cuda_graphs: bool  # decode and verify steps replayed from captured graphs
    notes: tuple[str, ...] = ()  # why a fast path is off

    def describe(self) -> str:
        parts = [f"attention {self.attention}",
                 f"C kernels {'on' if self.cpu_kernels else 'off'}",
                 f"C sampler {'on' if self.cpu_sampler else 'off'}",
                 f"CUDA graphs {'on' if self.cuda_graphs else 'off'}"]
        return ", ".join(parts) + "".join(f"; {note}" for note in self.notes)


def choose(config: EngineConfig, device: torch.device, dtype: torch.dtype,
           sliding_window: int | None = None) -> FastPaths:
    if device.type == "cpu":
        return _cpu(config)
    if device.type == "cuda":
        return _cuda(config, device, dtype, sliding_window)
    return FastPaths(_named(config, "torch"), False, False, False, (f"no fast paths on {device.type}",))


def _cpu(config: EngineConfig) -> FastPaths:
    built = cpu_kernels.available()
    notes = () if built else ("C kernels unavailable (no compiler, or FASTCODELLAMA_NO_CPU_KERNELS)",)
    if config.attention_backend == "cpu" and not built:
        raise ValueError("the cpu attention backend needs the C kernels, which did not build (see the log)")
    attention = _named(config, "cpu" if built else "torch")
    if attention == "triton":
        raise ValueError("the triton attention backend runs on CUDA devices only")
    return FastPaths(attention, built, built, False, notes)


def _cuda(config: EngineConfig, device: torch.device, dtype: torch.dtype, sliding_window: int | None) -> FastPaths:
    notes: list[str] = []
    attention = _named(config, "triton")
    if attention == "triton":
        problem = triton_problem(device, dtype, sliding_window)
        if problem is not None:
            if config.attention_backend == "triton":
                raise ValueError(f"the triton attention backend cannot run here: {problem}")
            notes.append(f"Triton attention off ({problem})")
            attention = "torch"
    graphs = config.cuda_graphs and attention == "triton"  # the reference's metadata is not static
    if not config.cuda_graphs:
        notes.append("CUDA graphs switched off")
    elif not graphs:
        notes.append("CUDA graphs need Triton attention")
    return FastPaths(attention, False, False, graphs, tuple(notes))


def _named(config: EngineConfig, auto: str) -> str:
    return auto if config.attention_backend == "auto" else config.attention_backend


def triton_problem(device: torch.device, dtype: torch.dtype, sliding_window: int | None) -> str | None:
    """None when the Triton kernels compile here and agree with the torch reference on a small mixed
    step (prefill chunk, decode, a verify with shared prompt blocks); else what went wrong."""
    try:
        from engine.attention.self_check import compare_with_reference
    except ImportError as e:  # no triton
        return f"triton is not importable: {e}"
    try:
        error = compare_with_reference(device, dtype, sliding_window)
    except Exception as e:  # noqa: BLE001 - a kernel that does not build here leaves the reference
        return f"{type(e).__name__}: {e}"
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    return None if error <= tolerance else f"differs from the torch reference by {error:.3g}"


def report(paths: FastPaths, packed_layers: int, stack: bool) -> None:
    extra = f", {packed_layers} linear layers on the C kernel, decoder stack {'C' if stack else 'modules'}" \
        if paths.cpu_kernels else ""
    log.info("fast paths: %s%s", paths.describe(), extra)
