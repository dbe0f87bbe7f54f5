"""CUDA graphs of decode and verify steps: a thin layer over engine/static_step.py.

At start-up every bucket's static step is run once (Triton compiles its kernels) and captured;
a step then writes its inputs into the static buffers, its attention metadata into the bucket's
static metadata, and replays the bucket's graph. Steps outside the buckets (prefill chunks, more
sequences or rows than the largest bucket) run eagerly. All graphs share one memory pool, captured
from the largest bucket down so the smaller ones reuse its memory, and write their logits into one
buffer; what they hold is reported.
Without capture (`capture=False`, the CPU tests) the same step function runs directly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from engine.static_step import Bucket, StaticStep, launch_for_bucket, prepared
from engine.step_batch import SeqChunk

log = logging.getLogger("engine")


@dataclass(frozen=True)
class CaptureReport:
    graphs: int
    seconds: float
    pool_bytes: int

    def describe(self) -> str:
        return f"{self.graphs} CUDA graphs captured in {self.seconds:.1f} s, {self.pool_bytes / 2**20:.0f} MiB"


class StepGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: torch.Tensor, backend: object, static: StaticStep,
                 capture: bool) -> None:
        self.model, self.kv_caches, self.backend, self.static = model, kv_caches, backend, static
        self.capture = capture
        self._launch = launch_for_bucket if getattr(backend, "name", "") == "triton" else None
        self._graphs: dict[Bucket, torch.cuda.CUDAGraph] = {}
        self.replays = 0
        self.report: CaptureReport | None = None

    def capture_all(self) -> CaptureReport:
        """Captures every bucket's graph, largest first (one shared pool)."""
        if not self.capture:
            raise RuntimeError("graphs are captured on CUDA devices only")
        pool = torch.cuda.graph_pool_handle()
        # Capture empties the allocator's cache first; empty it before the count, or what it
        # frees would be counted against the graphs.
        torch.cuda.empty_cache()
        free_before = torch.cuda.mem_get_info(self.static.device)[0]
        start = time.perf_counter()
        for bucket in sorted(self.static.buckets, key=lambda b: (-b.rows, -b.seqs)):
            self._capture(bucket, pool)
        torch.cuda.synchronize(self.static.device)
        self.report = CaptureReport(len(self._graphs), time.perf_counter() - start,
                                    free_before - torch.cuda.mem_get_info(self.static.device)[0])
        log.info("%s", self.report.describe())
        return self.report

    def _capture(self, bucket: Bucket, pool) -> None:
        batch = self.static.fill([SeqChunk((0,), 0, (self.static.scratch_block,), 0)], bucket)
        meta = prepared(self.backend, batch, self.static.metas, bucket, self._launch)
        side = torch.cuda.Stream(self.static.device)
        side.wait_stream(torch.cuda.current_stream(self.static.device))
        with torch.cuda.stream(side):  # warm-up: Triton compiles, the allocator settles
            self.static.run(self.model, self.kv_caches, self.backend, batch, meta)
        torch.cuda.current_stream(self.static.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.static.run(self.model, self.kv_caches, self.backend, batch, meta)
        self._graphs[bucket] = graph

    def run(self, chunks: Sequence[SeqChunk]) -> torch.Tensor | None:
        """Logits of the step's rows through its bucket, or None when no bucket takes the step."""
        bucket = self.static.bucket(chunks)
        if bucket is None or (self.capture and bucket not in self._graphs):
            return None
        batch = self.static.fill(chunks, bucket)
        meta = prepared(self.backend, batch, self.static.metas, bucket, self._launch)
        rows = sum(len(c.token_ids) for c in chunks)
        self.replays += 1
        if self.capture:
            self._graphs[bucket].replay()
            return self.static.logits[:rows]
        return self.static.run(self.model, self.kv_caches, self.backend, batch, meta)[:rows]
