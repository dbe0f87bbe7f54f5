"""A model whose forward costs nothing: every row gets the same fixed logits.

What a step costs on the host (scheduling, the step's batch, sampling rows, verification, the
proposer, detokenization, outputs) is measured with it (benchmarks/host_overhead.py), and a
device the project does not have is simulated with it: the tokens come from recorded traces
(SamplingParams.replay_token_ids) and each step's time from a recorded cost table.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from engine.config import ModelConfig
from engine.step_batch import StepBatch


class StubModel(nn.Module):
    def __init__(self, config: ModelConfig, favourite: int = 0, columns: int | None = None) -> None:
        """`config`: the vocabulary to produce logits over (the layers are shrunk to one tiny one,
        so the KV cache costs next to nothing). Every row's argmax is `favourite`. `columns`:
        logits per row, the vocabulary's size by default; 1 stands for a device that keeps its
        logits to itself (only replayed tokens can come out: the sampler forces them)."""
        super().__init__()
        self.config = dataclasses.replace(config, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2,
                                          rotary_dim=2, sliding_window=None)
        logits = torch.zeros(columns or config.vocab_size)
        logits[favourite] = 30.0  # one token dominates: top-p keeps it alone, so sampling stays cheap
        self.register_buffer("logits", logits, persistent=False)
        self.cpu_stack = None

    @torch.inference_mode()
    def forward(self, batch: StepBatch, kv_caches: torch.Tensor, backend: object, meta: object = None) -> torch.Tensor:
        return self.logits.new_zeros((batch.logits_indices.shape[0], 1))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits.float().expand(hidden.shape[0], -1).contiguous()  # a real head's rows are fresh memory

    def pack_for_cpu(self) -> int:
        return 0

    def use_triton_kernels(self) -> int:
        return 0
