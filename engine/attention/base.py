"""The attention backend interface: prepare once per step, then run per layer."""
from __future__ import annotations

from typing import Any, Protocol

import torch

from engine.step_batch import StepBatch


class AttentionBackend(Protocol):
    name: str
    # Whether the step's context lengths are read on the host to attend (not only to size a
    # launch): a step whose rows the device moves (step_batch.Shift) then reads them back.
    host_lengths: bool

    def prepare(self, batch: StepBatch) -> Any:
        """Backend metadata for this step (index tensors, masks), built once."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, batch: StepBatch, meta: Any) -> torch.Tensor:
        """Writes k, v ([T, kv_heads, d]) into their slots, then attends q ([T, heads, d])
        over each sequence's cached keys, causal within its new tokens. Returns [T, heads, d].
        The caches are [num_blocks, kv_heads, block_size, d]: one block of one head is contiguous."""


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    block_size = k_cache.shape[2]
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    k_cache[blocks, :, offsets] = k
    v_cache[blocks, :, offsets] = v
