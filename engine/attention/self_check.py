"""A small mixed step through the Triton backend and the torch reference on the device itself:
what engine/fast_paths.py runs before it lets a device use Triton attention."""
from __future__ import annotations

import torch

from engine.attention.torch_ref import TorchRefBackend
from engine.attention.triton_attention import TritonBackend
from engine.step_batch import SeqChunk, StepBatch

BLOCK = 16
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 64


def compare_with_reference(device: torch.device, dtype: torch.dtype, sliding_window: int | None = None,
                           heads: int = HEADS, kv_heads: int = KV_HEADS, head_dim: int = HEAD_DIM,
                           block: int = BLOCK) -> float:
    """The largest absolute difference between the two backends' outputs on one step: a prefill
    chunk, two siblings sharing prompt blocks (a decode and a 1 + 4 verify), a long decode; at
    the given heads and cache block size (the model's own compile other kernels)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    # (tokens in the cache after the step, new tokens); the two siblings share a 48-token prompt.
    steps = [(57, 37), (53, 1), (55, 5), (301, 1)]
    shared = 48 // block
    prompt = tuple(range(shared))
    chunks, used = [], shared
    for i, (context, new) in enumerate(steps):
        own = prompt if i in (1, 2) else ()
        need = -(-context // block) - len(own)
        chunks.append(SeqChunk(tuple(range(new)), context - new, own + tuple(range(used, used + need)), 0))
        used += need
    batch = StepBatch.build(chunks, block, device)
    shape = (used, kv_heads, block, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(device, dtype)
    v_cache = torch.randn(shape, generator=gen).to(device, dtype)
    rows = batch.num_tokens
    q = torch.randn((rows, heads, head_dim), generator=gen).to(device, dtype)
    k = torch.randn((rows, kv_heads, head_dim), generator=gen).to(device, dtype)
    v = torch.randn((rows, kv_heads, head_dim), generator=gen).to(device, dtype)
    outs = []
    for backend in (TritonBackend(sliding_window=sliding_window, head_dim=head_dim), TorchRefBackend(sliding_window)):
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append(backend.forward(q, k, v, kc, vc, batch, backend.prepare(batch)).float())
    return (outs[0] - outs[1]).abs().max().item()
