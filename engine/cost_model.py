"""Measures what a step costs by the tokens in it, on this machine and model.

The speculative policy spends draft tokens only where their expected accepted tokens pay for
their cost; that cost comes from two curves, measured once at start-up (forward + logits +
sampling, the fastest of a few runs: other load on the machine only adds time):
  decode  steps of T single-token sequences, each with `context` cached tokens in its own
          blocks: what a step of T running sequences costs without drafts;
  verify  one sequence feeding T new tokens after `context` cached ones: how the cost grows
          with rows that share one sequence's KV read, as a long draft's tokens do;
  pairs   steps of T sequences feeding 2 tokens each (a one-token draft apiece): what draft
          rows cost beside a whole batch of sequences. Where attention is computed per query
          (the CPU) a draft row there costs nearly a sequence's row, far more than the verify
          curve's slope says; where a sequence's queries share its KV read (a GPU kernel), less.
fastcodellama.policy.StepCost combines them. Measured once per process for a given model,
device and thread count.
"""
from __future__ import annotations

import time

import torch

from dataclasses import dataclass

from engine.sampler import Sampler, SamplingRow
from engine.sampling_params import SamplingParams
from engine.step_batch import SeqChunk, StepBatch

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
