"""CUDA graphs of decode and verify steps: a thin layer over engine/static_step.py.

At start-up every bucket's static step is run once (Triton compiles its kernels) and captured;
a step then writes its inputs into the static buffers and replays the bucket's graph. The graph
holds the step's attention metadata too (StaticStep.run_from_inputs): built on the device from
the static buffers, it costs the host nothing per step. Should that capture fail, or a replay of a
step the graph was not captured with differ from the same step run eagerly, the graphs are
captured again with the metadata built outside them (each step's copied into the bucket's static
metadata before the replay, StaticStep.run), and the start-up log says so.
Steps outside the buckets (prefill chunks, more sequences or rows than the largest bucket) run
eagerly. All graphs share one memory pool, captured from the largest bucket down so the smaller
ones reuse its memory, and write their logits into one buffer; what they hold is reported.
Without capture (`capture=False`, the CPU tests) the same step functions run directly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from engine.static_step import Bucket, StaticStep, launch_for_bucket, prepared
from engine.step_batch import SeqChunk

log = logging.getLogger("engine")

META_INSIDE = "inside the graphs"
META_OUTSIDE = "outside the graphs"


class GraphMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class CaptureReport:
    graphs: int
    seconds: float
    pool_bytes: int
    metadata: str = META_INSIDE

    def describe(self) -> str:
        return (f"{self.graphs} CUDA graphs captured in {self.seconds:.1f} s, {self.pool_bytes / 2**20:.0f} MiB, "
                f"attention metadata built {self.metadata}")


def replays_match(replayed: torch.Tensor, eager: torch.Tensor, tolerance: float = 2e-2) -> bool:
    """Whether a replay's logits are the eager step's up to rounding: every difference within
    `tolerance` of the largest logit (a kernel chosen differently under capture rounds
    differently; metadata frozen at capture changes logits by their own scale), and every row's
    likeliest token the same where the eager row's is clear of its runner-up by more than that."""
    if replayed.shape != eager.shape or not bool(torch.isfinite(replayed).all()):
        return False
    scale = float(eager.abs().max()) or 1.0
    if float((replayed - eager).abs().max()) > tolerance * scale:
        return False
    top2 = eager.topk(min(2, eager.shape[1]), dim=-1).values
    clear = (top2[:, 0] - top2[:, -1]) > 2 * tolerance * scale
    return bool((replayed.argmax(-1) == eager.argmax(-1))[clear].all())


class StepGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: torch.Tensor, backend: object, static: StaticStep,
                 capture: bool, meta_in_graph: bool = True) -> None:
        """`meta_in_graph`: each step's attention metadata is built by the step function (so a
        graph replays it) rather than before it, outside."""
        self.model, self.kv_caches, self.backend, self.static = model, kv_caches, backend, static
        self.capture = capture
        self.meta_in_graph = meta_in_graph
        self._triton = getattr(backend, "name", "") == "triton"
        self._graphs: dict[Bucket, torch.cuda.CUDAGraph] = {}
        self.replays = 0
        self.report: CaptureReport | None = None

    def capture_all(self) -> CaptureReport:
        """Captures every bucket's graph, largest first (one shared pool), metadata inside them
        unless that fails (see the module docstring)."""
        if not self.capture:
            raise RuntimeError("graphs are captured on CUDA devices only")
        if self.meta_in_graph:
            try:
                return self._capture_all()
            except Exception as e:  # noqa: BLE001 - any failure of the inside capture falls back
                log.warning("CUDA graphs with the attention metadata inside failed (%s); capturing them with "
                            "the metadata built outside", e)
                self.meta_in_graph = False
                self._graphs.clear()
        return self._capture_all()

    def _capture_all(self) -> CaptureReport:
        pool = torch.cuda.graph_pool_handle()
        # Capture empties the allocator's cache first; empty it before the count, or what it
        # frees would be counted against the graphs.
        torch.cuda.empty_cache()
        free_before = torch.cuda.mem_get_info(self.static.device)[0]
        start = time.perf_counter()
        order = sorted(self.static.buckets, key=lambda b: (-b.rows, -b.seqs))
        for bucket in order:
            self._capture(bucket, pool)
        if self.meta_in_graph:  # the largest bucket (shared prefixes) and the smallest (batch 1)
            for bucket in {order[0], order[-1]}:
                self._check_replay(bucket)
        torch.cuda.synchronize(self.static.device)
        self.report = CaptureReport(len(self._graphs), time.perf_counter() - start,
                                    free_before - torch.cuda.mem_get_info(self.static.device)[0],
                                    META_INSIDE if self.meta_in_graph else META_OUTSIDE)
        log.info("%s", self.report.describe())
        return self.report

    def _capture(self, bucket: Bucket, pool) -> None:
        step = self._step_function(bucket, [SeqChunk((0,), 0, (self.static.scratch_block,), 0)])
        side = torch.cuda.Stream(self.static.device)
        side.wait_stream(torch.cuda.current_stream(self.static.device))
        with torch.cuda.stream(side):  # warm-up: Triton compiles, the allocator settles
            step()
        torch.cuda.current_stream(self.static.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            step()
        self._graphs[bucket] = graph

    def _check_replay(self, bucket: Bucket) -> None:
        """Replays a step the graph was not captured with (other positions and contexts, two
        sequences sharing their block where the bucket holds two) against the same step run
        eagerly: metadata frozen at capture would show here. Only the scratch block is written."""
        scratch = (self.static.scratch_block,) * 6  # positions up to 5 at any block size
        probe = [SeqChunk((1,), 5, scratch, 0), SeqChunk((2,), 3, scratch, 0)][:bucket.seqs]
        rows = len(probe)
        eager = self._step_function(bucket, probe)()[:rows].clone()
        self.static.fill(probe, bucket)
        self._graphs[bucket].replay()
        replayed = self.static.logits[:rows]
        if not replays_match(replayed, eager):
            diff = (replayed - eager).abs().max().item()
            raise GraphMismatch(f"bucket {bucket}: a replay differs from the eager step by up to {diff:.3g}")

    def _step_function(self, bucket: Bucket, chunks: Sequence[SeqChunk]) -> Callable[[], torch.Tensor]:
        """The bucket's step over the static buffers, with these chunks written into them (and,
        with the metadata outside, their metadata into the bucket's static copy)."""
        batch = self.static.fill(chunks, bucket)
        launch = self._launch_of(bucket)
        if self.meta_in_graph:
            return lambda: self.static.run_from_inputs(self.model, self.kv_caches, self.backend, batch, launch)
        meta = prepared(self.backend, batch, self.static.metas, bucket, launch)
        return lambda: self.static.run(self.model, self.kv_caches, self.backend, batch, meta)

    def _launch_of(self, bucket: Bucket) -> object | None:
        """The bucket's fixed launch (Triton), or None for a backend that picks its own."""
        if not self._triton:
            return None
        return launch_for_bucket(bucket, self.backend.query_tile, self.backend.prefix_tile)

    def run(self, chunks: Sequence[SeqChunk]) -> torch.Tensor | None:
        """Logits of the step's rows through its bucket, or None when no bucket takes the step."""
        bucket = self.static.bucket(chunks)
        if bucket is None or (self.capture and bucket not in self._graphs):
            return None
        rows = sum(len(c.token_ids) for c in chunks)
        self.replays += 1
        if not self.capture:
            return self._step_function(bucket, chunks)()[:rows]
        if self.meta_in_graph:
            self.static.fill(chunks, bucket)
        else:
            prepared(self.backend, self.static.fill(chunks, bucket), self.static.metas, bucket, self._launch_of(bucket))
        self._graphs[bucket].replay()
        return self.static.logits[:rows]
