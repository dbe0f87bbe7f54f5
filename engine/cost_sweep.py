"""A start-up sweep of step costs, for benchmarks (EngineConfig.cost_sweep): the engine otherwise
learns them from its own steps (engine/step_cost.py).

Times forward + logits + sampling (the fastest of a few runs: other load on the machine only
adds time) of
  decode  steps of T single-token sequences, each with `context` cached tokens in its own blocks;
  verify  one sequence feeding T new tokens after `context` cached ones (rows that share one
          sequence's KV read, as a long draft's tokens do);
  pairs   steps of T sequences feeding 2 tokens each (a one-token draft apiece).
`seed` hands them to a StepCost as observations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.sampler import Sampler, SamplingRow
from engine.sampling_params import SamplingParams
from engine.step_batch import SeqChunk, StepBatch
from engine.step_cost import StepCost

TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SLOW_STEP_S = 0.25  # stop measuring larger steps past this (the policy extrapolates linearly)
MIN_POINT_S = 0.1  # time spent per point at least (up to 30 tries)
Points = tuple[tuple[int, float], ...]  # ((tokens in the step, milliseconds), ...)


@dataclass(frozen=True)
class StepCostPoints:
    decode: Points
    verify: Points
    pairs: Points = ()  # keyed by sequences (2 rows each)


_MEASURED: dict[tuple, StepCostPoints] = {}


def measure_step_cost(runner, sampler: Sampler, max_tokens: int, context: int = 256,
                      repeats: int = 3) -> StepCostPoints:
    """The three curves at T in TOKEN_COUNTS up to max_tokens (rows, so pairs up to half)."""
    key = (runner.config.model, str(runner.device), runner.dtype, torch.get_num_threads(), runner.backend.name,
           max_tokens, context)
    if key not in _MEASURED:
        bs, blocks, dev = runner.config.block_size, runner.num_blocks, runner.device
        _MEASURED[key] = StepCostPoints(
            decode=_measure(runner, sampler, max_tokens, repeats, lambda t: _decode_batch(t, context, bs, blocks, dev)),
            verify=_measure(runner, sampler, max_tokens, repeats, lambda t: _verify_batch(t, context, bs, blocks, dev)),
            pairs=_measure(runner, sampler, max_tokens // 2, repeats,
                           lambda t: _decode_batch(t, context, bs, blocks, dev, feed=2)))
    return _MEASURED[key]


def _measure(runner, sampler: Sampler, max_tokens: int, repeats: int, make_batch) -> Points:
    params = SamplingParams(temperature=0.8, top_p=0.95)
    points = []
    for tokens in (t for t in TOKEN_COUNTS if t <= max_tokens):
        batch = make_batch(tokens)
        rows = [SamplingRow(i, params, noise_key=i, position=0) for i in range(batch.num_tokens)]
        _timed_step(runner, sampler, batch, rows)  # warm-up
        times = [_timed_step(runner, sampler, batch, rows) for _ in range(repeats)]
        while sum(times) < MIN_POINT_S and len(times) < 30:  # cheap steps: more tries, a truer minimum
            times.append(_timed_step(runner, sampler, batch, rows))
        best = min(times)
        points.append((tokens, 1000 * best))
        if best > SLOW_STEP_S:
            break
    return tuple(points)


def _decode_batch(tokens: int, context: int, block_size: int, num_blocks: int, device, feed: int = 1) -> StepBatch:
    per_seq = (context + feed - 1 + block_size - 1) // block_size
    chunks = []
    for i in range(tokens):  # distinct blocks per sequence while the cache has them
        table = tuple((i * per_seq + b) % num_blocks for b in range(per_seq))
        chunks.append(SeqChunk((0,) * feed, context - 1, table, 0))
    return StepBatch.build(chunks, block_size, device)


def _verify_batch(tokens: int, context: int, block_size: int, num_blocks: int, device) -> StepBatch:
    blocks = (context + tokens + block_size - 1) // block_size
    table = tuple(b % num_blocks for b in range(blocks))
    return StepBatch.build([SeqChunk((0,) * tokens, context, table, 0)], block_size, device)


@torch.inference_mode()
def _timed_step(runner, sampler: Sampler, batch: StepBatch, rows: list[SamplingRow]) -> float:
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    hidden = runner.model(batch, runner.kv_caches, runner.backend)
    sampler(runner.model.compute_logits(hidden), rows)
    sync()
    return time.perf_counter() - start


def seed(cost: StepCost, points: StepCostPoints) -> None:
    """The sweep's points as observations: decode(T) is T sequences without drafts, verify(T) one
    sequence with T - 1 draft rows, pairs(T) T sequences with one draft row each."""
    for tokens, ms in points.decode:
        cost.observe(tokens, 0, ms / 1000.0)
    for tokens, ms in points.verify:
        cost.observe(1, tokens - 1, ms / 1000.0)
    for seqs, ms in points.pairs:
        cost.observe(seqs, seqs, ms / 1000.0)
