"""Attention backends: `torch` (reference, any device); GPU kernels where available."""
from __future__ import annotations

from engine.attention.base import AttentionBackend
from engine.attention.torch_ref import TorchRefBackend

BACKENDS = ("auto", "torch")


def get_backend(name: str, device_type: str) -> AttentionBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {', '.join(BACKENDS)}")
    return TorchRefBackend()
