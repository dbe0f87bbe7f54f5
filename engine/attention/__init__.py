"""Attention backends: `torch` (reference, any device), `cpu` (C kernel for short queries),
`triton` (paged flash attention on a GPU). engine/fast_paths.py decides which one a device gets."""
from __future__ import annotations

from engine.attention.base import AttentionBackend
from engine.attention.torch_ref import TorchRefBackend
from engine.config import ATTENTION_BACKENDS as BACKENDS


def get_backend(name: str, device_type: str, sliding_window: int | None = None,
                head_dim: int | None = None) -> AttentionBackend:
    """The named backend (not "auto": engine/fast_paths.py resolves that); `head_dim`, the model's,
    sizes the Triton kernels' tiles."""
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"unknown attention backend {name!r}; choose from {', '.join(BACKENDS[1:])}")
    if name == "cpu":
        if device_type != "cpu":
            raise ValueError("the cpu attention backend runs on the CPU only")
        from engine.attention.cpu import CpuBackend

        return CpuBackend()
    if name == "triton":
        if device_type != "cuda":
            raise ValueError("the triton attention backend runs on CUDA devices only")
        from engine.attention.triton_attention import TritonBackend

        return TritonBackend(sliding_window=sliding_window, head_dim=head_dim)
    return TorchRefBackend(sliding_window)
