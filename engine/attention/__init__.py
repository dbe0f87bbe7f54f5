"""Attention backends: `torch` (reference, any device), `cpu` (C kernel for short queries)."""
from __future__ import annotations

from engine.attention.base import AttentionBackend
from engine.attention.torch_ref import TorchRefBackend

BACKENDS = ("auto", "torch", "cpu")


def get_backend(name: str, device_type: str) -> AttentionBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "cpu" and device_type != "cpu":
        raise ValueError("the cpu attention backend runs on the CPU only")
    if name in ("cpu", "auto") and device_type == "cpu":
        from engine.kernels import cpu as kernels

        if kernels.available():
            from engine.attention.cpu import CpuBackend

            return CpuBackend()
        if name == "cpu":
            raise ValueError("the cpu attention backend needs a C compiler (see the log) ")
    return TorchRefBackend()
