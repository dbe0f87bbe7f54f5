"""Turns logits rows into tokens: penalties, min_tokens, temperature, top-k, top-p.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1), i.e. the
Gumbel-max trick) with noise that is a hash of (sample key, output position,
token id), computed only for the tokens that survive top-k / top-p. The token at a position therefore depends only on the logits
and that pair: the same seed gives the same output whatever the batch, and a
draft token is accepted exactly when it equals the token sampled at its position.
That acceptance rule is the lossless speculative-sampling rule for a
deterministic draft: P(accept x) = p(x), and on rejection the token is a sample
of p with x removed and renormalized (see rejection_sampler.py and its tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

import torch

from engine.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
NUCLEUS_CANDIDATES = 256  # top-p looks here first; rows whose nucleus is wider sort the full row


@dataclass(frozen=True)
class SamplingRow:
    logits_row: int  # row of the logits tensor
    params: SamplingParams
    noise_key: int
    position: int  # index of the output token chosen here (0 = first generated)
    history: Seq[int] = ()  # prompt + output + draft prefix, only filled when penalties apply
    output_start: int = 0  # where the output begins in `history`
    forced: int | None = None  # replay mode: the recorded token


@dataclass(frozen=True)
class SampleResult:
    tokens: list[int]
    logprobs: list[float] | None


def noise_seed(key: int, position: int) -> int:
    """splitmix64 of (key, position): independent streams per sample and position."""
    z = (key * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def sample_key(seed: int, sample_index: int) -> int:
    return noise_seed(seed & _MASK64, 1_000_003 + sample_index)


class Sampler:
    def __init__(self, eos_id: int | None) -> None:
        self.eos_id = eos_id

    def __call__(self, logits: torch.Tensor, rows: Seq[SamplingRow]) -> SampleResult:
        index = torch.tensor([r.logits_row for r in rows], dtype=torch.long, device=logits.device)
        x = logits.index_select(0, index).float()
        raw_logprobs = torch.log_softmax(x, dim=-1) if any(r.params.logprobs for r in rows) else None
        x = self.process(x, rows)
        tokens = torch.argmax(x, dim=-1)
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled:
            tokens[sampled] = self._race(x[sampled], [rows[i] for i in sampled])
        token_list = tokens.tolist()
        for i, r in enumerate(rows):
            if r.forced is not None:
                token_list[i] = r.forced
        logprobs = None
        if raw_logprobs is not None:
            chosen = torch.tensor(token_list, device=raw_logprobs.device)
            logprobs = raw_logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        return SampleResult(token_list, logprobs)

    def process(self, x: torch.Tensor, rows: Seq[SamplingRow]) -> torch.Tensor:
        """Penalties and min_tokens on every row; temperature, top-k, top-p on sampled rows."""
        for i, r in enumerate(rows):
            if r.params.needs_penalties:
                _apply_penalties(x[i], r)
            if r.position < r.params.min_tokens:
                banned = list(r.params.stop_token_ids)
                if self.eos_id is not None and not r.params.ignore_eos:
                    banned.append(self.eos_id)
                if banned:
                    x[i, banned] = float("-inf")
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled:
            x[sampled] = _filter(x[sampled], [rows[i].params for i in sampled])
        return x

    def probs(self, x: torch.Tensor, rows: Seq[SamplingRow]) -> torch.Tensor:
        """The distribution each sampled row draws from (for tests and the reference rule)."""
        return torch.softmax(self.process(x.float().clone(), rows), dim=-1)

    def _race(self, x: torch.Tensor, rows: Seq[SamplingRow]) -> torch.Tensor:
        """argmax over surviving tokens of log p - log E, E ~ Exp(1) hashed from (key, position, id)."""
        alive = torch.isfinite(x)
        row_idx, token_idx = alive.nonzero(as_tuple=True)
        seeds = torch.tensor([noise_seed(r.noise_key, r.position) & _MASK32 for r in rows], dtype=torch.long,
                             device=x.device)
        u = uniform_hash(seeds[row_idx], token_idx)
        score = torch.full_like(x, float("-inf"))
        gumbel = -torch.log(-torch.log(u))
        score[row_idx, token_idx] = torch.log_softmax(x, dim=-1)[row_idx, token_idx] + gumbel.to(x.dtype)
        return torch.argmax(score, dim=-1)


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for x < 2**32 without overflowing int64."""
    return (((((x >> 16) * m) & 0xFFFF) << 16) + (x & 0xFFFF) * m) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_hash(seeds: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) noise, a deterministic function of (row seed, token id)."""
    h = _mix32(_mix32(seeds ^ _mul32(token_ids, 0x9E3779B1)) ^ (seeds >> 7))
    return ((h >> 8).double() + 0.5) / float(1 << 24)


def _filter(x: torch.Tensor, params: Seq[SamplingParams]) -> torch.Tensor:
    temps = torch.tensor([p.temperature for p in params], dtype=x.dtype, device=x.device)
    x = x / temps[:, None]
    top_k = [p.top_k for p in params]
    if any(k > 0 for k in top_k):
        k_t = torch.tensor([min(k, x.shape[1]) if k > 0 else x.shape[1] for k in top_k], device=x.device)
        best = torch.topk(x, int(k_t.max()), dim=-1).values
        kth = best.gather(1, (k_t - 1)[:, None])
        x = x.masked_fill(x < kth, float("-inf"))
    top_p = [p.top_p for p in params]
    if any(p < 1.0 for p in top_p):
        x = _top_p(x, torch.tensor(top_p, dtype=x.dtype, device=x.device))
    return x


def _top_p(x: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """Keeps the smallest set of best tokens whose mass reaches top_p (a token is cut when the
    tokens strictly better than it already reach it). Looks at the best NUCLEUS_CANDIDATES tokens
    first, then 8x more, and sorts whole rows only for the rows whose nucleus is wider still."""
    probs = torch.softmax(x, dim=-1)
    out = x.clone()
    rows = (p_t < 1.0).nonzero()[:, 0]
    k = NUCLEUS_CANDIDATES
    while len(rows):
        k = min(k, x.shape[1])
        top_probs, top_ids = torch.topk(probs[rows], k, dim=-1)
        keep = (torch.cumsum(top_probs, dim=-1) - top_probs) < p_t[rows, None]
        done = ~keep[:, -1] | (k == x.shape[1])
        sub = torch.full((len(rows), x.shape[1]), float("-inf"), dtype=x.dtype, device=x.device)
        sub.scatter_(1, top_ids, torch.where(keep, x[rows].gather(1, top_ids), float("-inf")))
        out[rows[done]] = sub[done]
        rows = rows[~done]
        k *= 8
    return out


def _apply_penalties(row: torch.Tensor, r: SamplingRow) -> None:
    p = r.params
    history = torch.tensor(list(r.history), dtype=torch.long, device=row.device)
    if p.repetition_penalty != 1.0 and len(history):
        seen = torch.unique(history)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    output = history[r.output_start:]
    if (p.presence_penalty or p.frequency_penalty) and len(output):
        counts = torch.bincount(output, minlength=row.shape[0]).to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
