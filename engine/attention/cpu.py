"""CPU backend: queries of up to KERNEL_QUERY new tokens (decode, verify, prefill chunks) go to
the C kernel, which reads each sequence's K/V blocks once through its block table; longer
chunks use the reference path's per-sequence SDPA. Tested against torch_ref on random caches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention import torch_ref
from engine.attention.base import write_kv
from engine.kernels import cpu as kernels
from engine.step_batch import StepBatch


# Longer chunks go to SDPA: the kernel's score buffer grows with new x cached tokens
# (benchmarks/step_cost.py compares the two).
KERNEL_QUERY = 512


@dataclass(frozen=True)
class CpuMeta:
    groups: kernels.SharedGroups | None  # the kernel's sequences, grouped by shared prefix
    reference: torch_ref.TorchMeta  # long chunks (and the fallback for non-float32 caches)


_NO_LONG = torch_ref.TorchMeta(None, ())


class CpuBackend:
    name = "cpu"
    host_lengths = True  # attends by the step's lengths on the host (AttentionBackend)

    def __init__(self) -> None:
        self._reference = torch_ref.TorchRefBackend()

    def prepare(self, batch: StepBatch) -> CpuMeta:
        long = [i for i, q in enumerate(batch.query_lens) if q > KERNEL_QUERY]
        if not long:  # the usual step: every sequence goes to the kernel
            return CpuMeta(kernels.SharedGroups.build(None, batch.block_tables, batch.context_lens_t,
                                                      batch.block_size), _NO_LONG)
        short = [i for i, q in enumerate(batch.query_lens) if q <= KERNEL_QUERY]
        reference = torch_ref.TorchMeta(None, tuple(torch_ref.long_chunk(batch, i) for i in long))
        groups = None
        if short:
            groups = kernels.SharedGroups.build(torch.tensor(short, dtype=torch.int64), batch.block_tables,
                                                batch.context_lens_t, batch.block_size)
        return CpuMeta(groups, reference)

    def forward(self, q, k, v, k_cache, v_cache, batch: StepBatch, meta: CpuMeta) -> torch.Tensor:
        if q.dtype != torch.float32:  # the kernel is float32 only
            return self._reference.forward(q, k, v, k_cache, v_cache, batch, self._reference.prepare(batch))
        write_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        out = torch.zeros_like(q)  # rows of no sequence (padding) stay finite: their K/V land in the cache
        if meta.groups is not None:
            kernels.paged_attention(q.contiguous(), k_cache, v_cache, batch.block_tables, meta.groups,
                                    batch.cu_seqlens_q, batch.context_lens_t, out)
        for chunk in meta.reference.long:
            torch_ref.attend_long(q, k_cache, v_cache, chunk, out)
        return out
