"""CUDA graphs of decode and verify steps: a thin layer over engine/static_step.py.

Each bucket's static step is run once (Triton compiles its kernels) and captured, then a step
writes its inputs into the static buffers and replays the bucket's graph. When: every bucket at
start-up (`first_use=False`: no step ever waits on a capture, what a server wants), or the largest
and the smallest at start-up and each other bucket at the first step that needs it (`first_use`:
a job that uses a few dozen of the buckets pays for those only, and starts at once). The graph
holds the step's attention metadata too (StaticStep.run_from_inputs): built on the device from
the static buffers, it costs the host nothing per step. Should that capture fail, or a replay of a
step the graph was not captured with differ from the same step run eagerly, the graphs are
captured again with the metadata built outside them (each step's copied into the bucket's static
metadata before the replay, StaticStep.run), and the start-up log says so.
Steps outside the buckets (prefill chunks, more sequences or rows than the largest bucket) run
eagerly. All graphs share one memory pool, captured from the largest bucket down so the smaller
ones reuse its memory (a bucket captured later allocates from that pool too), and write their
logits into one buffer; what they hold is reported. A bucket whose capture fails later runs
eagerly, and is not tried again. Without capture (`capture=False`, the CPU tests) the same step
functions run directly; CudaCapture is the one part that needs a CUDA device.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from engine.static_step import Bucket, StaticStep, launch_for_bucket, prepared
from engine.step_batch import Feed, SeqChunk, Shift, StepBatch

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
    deferred: int = 0  # buckets left for their first use

    def describe(self) -> str:
        later = f"; {self.deferred} more when first used" if self.deferred else ""
        return (f"{self.graphs} CUDA graphs captured in {self.seconds:.1f} s, {self.pool_bytes / 2**20:.0f} MiB, "
                f"attention metadata built {self.metadata}{later}")


class CudaCapture:
    """Warm-up and capture of step functions into one memory pool: what only a CUDA device runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def free_bytes(self) -> int:
        # Capture empties the allocator's cache first; empty it before the count, or what it
        # frees would be counted against the graphs.
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(self.device)[0]

    def __call__(self, step: Callable[[], torch.Tensor]) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: Triton compiles, the allocator settles
            step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            step()
        return graph

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


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
                 capture: bool, meta_in_graph: bool = True, first_use: bool = False,
                 capturer: Callable[[torch.device], CudaCapture] = CudaCapture) -> None:
        """`meta_in_graph`: each step's attention metadata is built by the step function (so a
        graph replays it) rather than before it, outside. `first_use`: buckets other than the
        largest and the smallest are captured when a step first needs them. `capturer` makes a
        CudaCapture (or what stands for one) for a device."""
        self.model, self.kv_caches, self.backend, self.static = model, kv_caches, backend, static
        self.capture = capture
        self.meta_in_graph = meta_in_graph
        self.first_use = first_use
        self._capturer_for = capturer
        self._capturer: CudaCapture | None = None
        self._triton = getattr(backend, "name", "") == "triton"
        self._graphs: dict[Bucket, torch.cuda.CUDAGraph] = {}
        self._failed: set[Bucket] = set()  # captured on first use without success: eager for good
        self.replays = 0
        self.report: CaptureReport | None = None
        self.late_captures = 0  # buckets captured on first use, and the seconds they took
        self.late_seconds = 0.0
        self.captured_now = False  # whether the last run() captured its bucket first

    def capture_all(self) -> CaptureReport:
        """Captures the graphs of start-up (every bucket's, or the largest's and the smallest's
        with `first_use`), largest first (one shared pool), metadata inside them unless that fails
        (see the module docstring)."""
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
        capturer = self._capturer = self._capturer_for(self.static.device)  # a fresh pool
        free_before = capturer.free_bytes()
        start = time.perf_counter()
        order = sorted(self.static.buckets, key=lambda b: (-b.rows, -b.seqs))
        # The largest first (the pool is sized by it), and the smallest (batch 1) with it: the
        # two whose replays are checked.
        now = list(dict.fromkeys((order[0], order[-1]))) if self.first_use else order
        for bucket in now:
            self._capture(bucket)
        if self.meta_in_graph:  # the largest bucket (shared prefixes) and the smallest (batch 1)
            for bucket in {order[0], order[-1]}:
                self._check_replay(bucket)
        capturer.synchronize()
        self.report = CaptureReport(len(self._graphs), time.perf_counter() - start,
                                    free_before - capturer.free_bytes(),
                                    META_INSIDE if self.meta_in_graph else META_OUTSIDE, len(order) - len(now))
        log.info("%s", self.report.describe())
        return self.report

    def _capture(self, bucket: Bucket) -> torch.cuda.CUDAGraph:
        step = self._step_function(bucket, [SeqChunk((0,), 0, (self.static.scratch_block,), 0)])
        graph = self._graphs[bucket] = self._capturer(step)
        return graph

    def _capture_late(self, bucket: Bucket) -> torch.cuda.CUDAGraph | None:
        """The bucket's graph, captured now (its first use); None where it is not to be, or its
        capture failed (the bucket then runs eagerly from now on, the rest of the graphs as they are)."""
        if not self.first_use or self._capturer is None or bucket in self._failed:
            return None
        start = time.perf_counter()
        try:
            graph = self._capture(bucket)
        except Exception as e:  # noqa: BLE001 - out of memory, an op that cannot be captured: eager
            self._failed.add(bucket)
            log.warning("CUDA graph of %d sequences, %d rows not captured (%s: %s); those steps run eagerly",
                        bucket.seqs, bucket.rows, type(e).__name__, e)
            return None
        seconds = time.perf_counter() - start
        self.captured_now = True
        self.late_captures += 1
        self.late_seconds += seconds
        log.debug("CUDA graph of %d sequences, %d rows captured on first use in %.2f s", bucket.seqs, bucket.rows,
                  seconds)
        return graph

    def summary(self) -> str:
        """The graphs captured so far, at start-up and on first use, and the seconds they took."""
        start = f"{self.report.graphs} at start-up in {self.report.seconds:.1f} s" if self.report else "none at start-up"
        later = f", {self.late_captures} on first use in {self.late_seconds:.1f} s" if self.first_use else ""
        failed = f", {len(self._failed)} failed (run eagerly)" if self._failed else ""
        return start + later + failed

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

    def _step_function(self, bucket: Bucket, chunks: Sequence[SeqChunk], feed: Feed | None = None,
                       shift: Shift | None = None) -> Callable[[], torch.Tensor]:
        """The bucket's step over the static buffers, with these chunks written into them (and,
        with the metadata outside, their metadata into the bucket's static copy)."""
        batch = self._fill(chunks, bucket, feed, shift)
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

    def run(self, chunks: Sequence[SeqChunk], feed: Feed | None = None,
            shift: Shift | None = None) -> torch.Tensor | None:
        """Logits of the step's rows through its bucket, or None when no bucket takes the step
        (nor a graph: one that failed to capture). `feed`: token ids on the device in place of
        some of the chunks', `shift`: sequences whose rows the device moves (a step queued before
        the tokens it feeds, and the accepted drafts before them, reached the host)."""
        self.captured_now = False
        bucket = self.static.bucket(chunks)
        if bucket is None:
            return None
        rows = sum(len(c.token_ids) for c in chunks)
        if not self.capture:
            self.replays += 1
            return self._step_function(bucket, chunks, feed, shift)()[:rows]
        graph = self._graphs.get(bucket)
        if graph is None and (graph := self._capture_late(bucket)) is None:
            return None
        self.replays += 1
        batch = self._fill(chunks, bucket, feed, shift)
        if not self.meta_in_graph:
            prepared(self.backend, batch, self.static.metas, bucket, self._launch_of(bucket))
        graph.replay()
        return self.static.logits[:rows]

    def _fill(self, chunks: Sequence[SeqChunk], bucket: Bucket, feed: Feed | None = None,
              shift: Shift | None = None) -> StepBatch:
        """The static buffers filled with the step, the fed ids and the moved rows; its view."""
        batch = self.static.fill(chunks, bucket)
        if feed is not None:
            feed.into(self.static.input_ids)
        if shift is not None:
            batch = shift.apply(batch, self.backend.host_lengths)
        return batch
