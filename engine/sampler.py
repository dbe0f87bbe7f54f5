"""Turns logits rows into tokens: penalties, min_tokens, temperature, top-k, top-p, min-p.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1), i.e. the
Gumbel-max trick) with noise that is a hash of (sample key, output position,
token id), computed only for the tokens that survive top-k / top-p. The token at a position therefore depends only on the logits
and that pair: the same seed gives the same output whatever the batch, and a
draft token is accepted exactly when it equals the token sampled at its position.
That acceptance rule is the lossless speculative-sampling rule for a
deterministic draft: P(accept x) = p(x), and on rejection the token is a sample
of p with x removed and renormalized (see rejection_sampler.py and its tests).
On the CPU, temperature, top-k, top-p and the race run in one C kernel per row
(engine/kernels/cpu_kernels.c; a batch with a min-p row takes the PyTorch path); the PyTorch code
here is its reference. Elsewhere (a GPU) a
batch of many rows races each row's likeliest tokens only (race_candidates), where that gives
the reference's tokens; the other rows take the reference over the whole vocabulary; the race's
noise there comes from one Triton kernel (engine/kernels/triton_noise.py), and the race over the
likeliest tokens after their top-k from another (engine/kernels/triton_race.py), where each passed
its check.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, NamedTuple
from typing import Sequence as Seq

import numpy as np
import torch

from engine.json_choice import TokenMasks, first_allowed_greedy, first_allowed_sampled
from engine.json_object import JsonTokens
from engine.json_object import State as JsonState
from engine.kernels import cpu as kernels
from engine.sampling_params import SamplingParams
from engine.step_batch import on_device

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
_MASK63 = (1 << 63) - 1


class SamplingRow(NamedTuple):
    """One row to sample (a tuple: the engine makes one per row per step)."""

    logits_row: int  # row of the logits tensor
    params: SamplingParams
    noise_key: int
    position: int  # index of the output token chosen here (0 = first generated)
    # prompt + output + draft prefix, only filled when penalties apply (on the device where it
    # ends in tokens only the device knows: a step queued ahead of the one sampling them)
    history: "Seq[int] | DeviceHistory" = ()
    output_start: int = 0  # where the output begins in `history`
    forced: int | None = None  # replay mode: the recorded token
    json: "JsonState | LateState | None" = None  # json_object: the text's state before this row's token


TopLogprobs = tuple[tuple[int, float], ...]  # (token, log probability), likeliest first


class LateState(NamedTuple):
    """A JSON row's state where it follows tokens the host does not have yet (a step queued ahead
    of the step sampling them): read when the row is read back, once those are applied, with the
    row's output position (a draft in flight moved it by what it accepted); None where the
    sequence ended meanwhile (its row is dropped: no check)."""

    read: Callable[[], "tuple[JsonState, int] | None"]


class DeviceHistory(NamedTuple):
    """A penalized row's history, on the device: its tokens and whether each counts (1.0; 0.0 for
    a slot of a draft in flight past what that draft's step accepts, known there only)."""

    tokens: torch.Tensor  # int64
    weights: torch.Tensor  # float32


class RowShift(NamedTuple):
    """Rows whose output position is `by` more than the row says (a step planned before the
    accepted draft tokens of the step in flight were known: step_batch.Shift), `by` known on the
    device only: their noise seeds and recorded tokens are chosen there, among those of every
    position they may have."""

    rows: list[int]  # indices among the step's rows
    limits: list[int]  # the most each row's `by` may be
    by: torch.Tensor  # [len(rows)] long, on the device
    # trace replay: each row's recorded token at position + 0..limit (None: a row that replays nothing)
    forced: list[tuple[int, ...] | None] | None = None

    def resolved(self, rows: Seq[SamplingRow]) -> list[SamplingRow]:
        """The rows at their true positions, `by` read back (for a host that samples them itself)."""
        out = list(rows)
        for j, (i, by) in enumerate(zip(self.rows, self.by.tolist())):
            recorded = self.forced[j] if self.forced is not None else None
            forced = recorded[by] if recorded is not None else out[i].forced
            out[i] = out[i]._replace(position=out[i].position + by, forced=forced)
        return out

    def seeds(self, knobs: "RowKnobs", rows: Seq[SamplingRow], at: Seq[int] | None) -> "RowKnobs":
        """`knobs` of `rows` (each at step row at[i], or i) with the shifted rows' seeds chosen on
        the device among those of the positions they may have."""
        local = {r: i for i, r in enumerate(at if at is not None else range(len(rows)))}
        mine = [(local[r], j) for j, r in enumerate(self.rows) if r in local]
        if not mine:
            return knobs
        width = max(self.limits) + 1
        keys = np.repeat([rows[i].noise_key for i, _ in mine], width)
        positions = (np.array([rows[i].position for i, _ in mine])[:, None] + np.arange(width)).ravel()
        every = (noise_seeds(keys, positions) & np.uint64(_MASK32)).astype(np.int64).reshape(len(mine), width)
        device = knobs.seeds.device
        by = self.by.index_select(0, on_device(torch.tensor([j for _, j in mine]), device))
        chosen = on_device(torch.from_numpy(every), device).gather(1, by[:, None])[:, 0]
        seeds = knobs.seeds.clone()
        seeds[on_device(torch.tensor([i for i, _ in mine]), device)] = chosen
        return knobs._replace(seeds=seeds)

    def force(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` with each shifted row's recorded token at its true position (trace replay)."""
        mine = [j for j, f in enumerate(self.forced) if f is not None]
        width = max(self.limits) + 1
        every = [(*f, *(f[-1:] * (width - len(f)))) for f in (self.forced[j] for j in mine)]
        device = tokens.device
        by = self.by.index_select(0, on_device(torch.tensor(mine, dtype=torch.long), device))
        chosen = on_device(torch.tensor(every, dtype=torch.long), device).gather(1, by[:, None])[:, 0]
        tokens[on_device(torch.tensor([self.rows[j] for j in mine]), device)] = chosen
        return tokens


@dataclass(frozen=True)
class SampleResult:
    tokens: list[int]
    logprobs: list[float] | None
    top: list[TopLogprobs] | None = None  # per row, as many as its params ask (else empty)


def noise_seed(key: int, position: int) -> int:
    """splitmix64 of (key, position): independent streams per sample and position."""
    z = (key * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


_SPLITMIX = tuple(np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def noise_seeds(keys: Seq[int], positions: Seq[int]) -> np.ndarray:
    """noise_seed of each (key, position) pair at once, as uint64 (whose arithmetic wraps modulo
    2**64, as noise_seed's masks do); keys below 2**64."""
    k = np.array(keys, dtype=np.uint64)
    p = np.array(positions, dtype=np.uint64)
    a, b, c = _SPLITMIX
    z = k * a + p * b + c
    z = (z ^ (z >> np.uint64(30))) * b
    z = (z ^ (z >> np.uint64(27))) * c
    return (z ^ (z >> np.uint64(31))) & np.uint64(_MASK63)


def sample_key(seed: int, sample_index: int) -> int:
    return noise_seed(seed & _MASK64, 1_000_003 + sample_index)


class Sampler:
    def __init__(self, eos_ids: tuple[int, ...], use_kernels: bool = False, triton_noise: bool = False,
                 json_tokens: JsonTokens | None = None, host_noise: bool = False, triton_race: bool = False,
                 redraw_at_launch: bool = False) -> None:
        """`use_kernels`: the C filter-and-race (CPU); `triton_noise`: the PyTorch path's noise from
        the Triton kernel (GPU); `host_noise`: from numpy (CPU); `triton_race`: race_candidates' work
        after its top-k in one Triton kernel (GPU); `redraw_at_launch`: a few rows the candidates
        missed raced again at launch (_redraw_some), where steps are queued ahead of the read-back.
        engine/fast_paths.py decides them.
        `json_tokens`: what each token does to a JSON object's text (rows with a `json` state take
        only tokens it allows)."""
        self.eos_ids = eos_ids
        self.json_tokens = json_tokens
        self.json_masks = TokenMasks(json_tokens) if json_tokens is not None else None
        self.use_kernels = use_kernels
        self.redraw_at_launch = redraw_at_launch
        self.noise: Noise = host_row_noise if host_noise else row_noise
        if triton_noise:  # imported only here: triton may be absent where the flag is off
            from engine.kernels import triton_noise as noise_kernel
            self.noise = noise_kernel.uniform_hash
        self.race_kernel: RaceKernel | None = None
        if triton_race:
            from engine.kernels import triton_race as race_kernel
            self.race_kernel = race_kernel.race

    def __call__(self, logits: torch.Tensor, rows: Seq[SamplingRow]) -> SampleResult:
        return self.launch(logits, rows).result()

    @torch.inference_mode()
    def launch(self, logits: torch.Tensor, rows: Seq[SamplingRow], shift: RowShift | None = None) -> "Sampled":
        """The rows' tokens chosen on the logits' device, not yet read back: on a GPU nothing here
        waits for the forward, so a next step can be queued behind this one (Sampled.result reads
        them back). `shift`: rows whose positions are known on the device only (the C kernel,
        which takes the host's seeds, reads them back: a CPU, where that costs nothing)."""
        if shift is not None and self.use_kernels:
            rows, shift = shift.resolved(rows), None
        order = [r.logits_row for r in rows]
        if order == list(range(logits.shape[0])):  # one row per logits row: no gather
            x = logits.float()
        else:
            x = logits.index_select(0, on_device(torch.tensor(order, dtype=torch.long), logits.device)).float()
        kinds = _distinct(rows)
        raw_logprobs = torch.log_softmax(x, dim=-1) if any(p.logprobs for p in kinds) else None
        if any(p.needs_penalties or p.min_tokens or p.logit_bias for p in kinds):
            x = self.constrain(x, rows)
        tokens, redraw = self._choose(x, rows, kinds, shift)
        return Sampled(tokens, rows, kinds, raw_logprobs, redraw, self.noise, self._held(x, rows, kinds))

    def _held(self, x: torch.Tensor, rows: Seq[SamplingRow], kinds: list[SamplingParams]) -> "HeldRows | None":
        """The rows held to JSON (none recorded), their logits copied (a CUDA graph's next replay
        writes the buffer `x` may view): their choice is checked against the constraint once read
        back (Sampled.result), so that nothing here waits for the device, and a row that follows
        tokens not read back yet is checked with them known (LateState)."""
        if self.json_tokens is None or not any(p.json_object for p in kinds):
            return None
        at = [i for i, r in enumerate(rows) if r.json is not None and r.forced is None]
        if not at:
            return None
        return HeldRows(at, x.index_select(0, on_device(torch.tensor(at), x.device)), self._json_objects)

    def _choose(self, x: torch.Tensor, rows: Seq[SamplingRow], kinds: list[SamplingParams],
                shift: RowShift | None = None) -> tuple[torch.Tensor, "Redraw | None"]:
        """Every row's token, on x's device: argmax for greedy rows, the race for sampled ones,
        the recorded token where one is forced (trace replay). `kinds`: the rows' distinct params.
        The rows its candidates may have missed are drawn again only once read back (the Redraw;
        never a row whose token is recorded); a row held to JSON is checked against it then too
        (_held): its token here is its own choice, unconstrained."""
        forced = [r.forced for r in rows]
        defer = None if None not in forced else True  # (None: every token is replaced below)
        redraw = None
        if all(p.greedy for p in kinds):
            tokens = torch.argmax(x, dim=-1)
        elif not any(p.greedy for p in kinds):
            tokens, redraw = self._draw(x, rows, defer, shift=shift)
            tokens = tokens.to(x.device)
        else:
            greedy = [i for i, r in enumerate(rows) if r.params.greedy]
            sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
            at = on_device(torch.tensor(sampled), x.device)  # (a list index would copy it blocking)
            drawn, redraw = self._draw(x.index_select(0, at), [rows[i] for i in sampled], defer, sampled, shift)
            tokens = torch.empty(len(rows), dtype=torch.long, device=x.device)
            index = on_device(torch.tensor(greedy), x.device)
            tokens[index] = torch.argmax(x.index_select(0, index), dim=-1)
            tokens[at] = drawn.to(x.device)
        if None not in forced:  # every row replays (trace replay): the recorded tokens, in one copy
            tokens, redraw = on_device(torch.tensor(forced, dtype=torch.long), x.device), None
        else:
            where = [i for i, f in enumerate(forced) if f is not None]
            if where:
                tokens[on_device(torch.tensor(where), x.device)] = on_device(torch.tensor([forced[i] for i in where]),
                                                                             x.device)
                if redraw is not None:
                    redraw = redraw.covering(where)
        if shift is not None and shift.forced is not None:
            tokens = shift.force(tokens)
        return tokens, redraw

    def _json_objects(self, x: torch.Tensor, rows: Seq[SamplingRow], chosen: list[int]) -> list[int]:
        """Rows held to JSON (x: their logits, constrained; `chosen`: their own choices, read back):
        the token chosen where the state allows it, else the first it allows in the row's own order
        of preference (preferred's, found as engine/json_choice.py does); where it allows none (a
        constraint this vocabulary cannot finish), the end of the text: what went out stays a
        prefix of what the constraint accepts, never text it refuses."""
        chosen = list(chosen)
        allows = self.json_tokens.allows
        refused = [i for i, r in enumerate(rows) if not allows(r.json, chosen[i])]
        if not refused:
            return chosen
        for greedy in (True, False):
            where = [i for i in refused if rows[i].params.greedy == greedy]
            if not where:
                continue
            picked, states = [chosen[i] for i in where], [rows[i].json for i in where]
            if greedy:
                first_allowed_greedy(x[where], states, picked, allows, self.json_masks)
            else:
                sub = [rows[i] for i in where]
                seeds = noise_seeds([r.noise_key for r in sub], [r.position for r in sub]) & np.uint64(_MASK32)
                knobs = RowKnobs.of([r.params for r in sub], seeds, x.device)
                kept = _filter(x[where], knobs)
                racing = torch.isfinite(kept)
                first_allowed_sampled(x[where], racing, kept_scores(kept, racing, knobs.seeds, self.noise), states,
                                      picked, allows, self.json_masks)
            for i, token in zip(where, picked):
                chosen[i] = token
        end = self.json_tokens.end_id
        for i in refused:  # a state no token of the vocabulary can go on from: the row ends there
            if end is not None and not allows(rows[i].json, chosen[i]):
                chosen[i] = end
        return chosen

    def preferred(self, x: torch.Tensor, row: SamplingRow) -> Iterator[int]:
        """Every token of a row, the one the sampler picks first: greedy by logit; sampled by the
        race's score among what the filters keep, then the rest by logit (worked out only if
        the caller reads that far). The reference of _json_objects' choice."""
        if row.params.greedy:
            yield from _on_the_host(torch.sort(x, descending=True, stable=True).indices)
            return
        seeds = noise_seeds([row.noise_key], [row.position]) & np.uint64(_MASK32)
        knobs = RowKnobs.of([row.params], seeds, x.device)
        kept = _filter(x[None].clone(), knobs)
        score = race_scores(kept, knobs.seeds, self.noise)[0]
        racing = torch.isfinite(kept[0])
        index = racing.nonzero()[:, 0]
        yield from _on_the_host(index[torch.sort(score[index], descending=True, stable=True).indices])
        by_logit = torch.sort(x, descending=True, stable=True).indices
        yield from _on_the_host(by_logit[~racing[by_logit]])

    def constrain(self, x: torch.Tensor, rows: Seq[SamplingRow]) -> torch.Tensor:
        """Logit biases, penalties and min_tokens, on every row (in place). Each kind is one op
        over the flat logits, its indices brought to the device without waiting for it (a list
        index would copy them blocking): a step queued ahead of the one in flight runs this too."""
        vocab, flat = x.shape[1], x.view(-1)
        biased, biases = [], []
        for i, r in enumerate(rows):
            for token, bias in r.params.logit_bias or ():
                biased.append(i * vocab + token)
                biases.append(bias)
        if biased:
            flat.index_add_(0, on_device(torch.tensor(biased), x.device),
                            on_device(torch.tensor(biases, dtype=x.dtype), x.device))
        banned = []
        for i, r in enumerate(rows):
            if r.params.needs_penalties:
                _apply_penalties(x[i], r)
            if r.position < r.params.min_tokens:
                ids = [*r.params.stop_token_ids, *(() if r.params.ignore_eos else self.eos_ids)]
                banned += [i * vocab + token for token in ids]
        if banned:
            flat.index_fill_(0, on_device(torch.tensor(banned), x.device), float("-inf"))
        return x

    def process(self, x: torch.Tensor, rows: Seq[SamplingRow]) -> torch.Tensor:
        """constrain(), then temperature, top-k, top-p on sampled rows (reference path)."""
        x = self.constrain(x, rows)
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled:
            params = [rows[i].params for i in sampled]
            x[sampled] = _filter(x[sampled], RowKnobs.of(params, np.zeros(len(params), dtype=np.uint64), x.device))
        return x

    def probs(self, x: torch.Tensor, rows: Seq[SamplingRow]) -> torch.Tensor:
        """The distribution each sampled row draws from (for tests and the reference rule)."""
        return torch.softmax(self.process(x.float().clone(), rows), dim=-1)

    def _sample(self, x: torch.Tensor, rows: Seq[SamplingRow]) -> torch.Tensor:
        """Filter and race: the C kernel on the CPU, else the PyTorch reference (same tokens)."""
        return self._draw(x, rows, defer=False)[0]

    def _draw(self, x: torch.Tensor, rows: Seq[SamplingRow], defer: bool | None, at: list[int] | None = None,
              shift: RowShift | None = None) -> tuple[torch.Tensor, "Redraw | None"]:
        """_sample; with `defer`, the rows the candidates' race may have missed come back as a
        Redraw (`at`: each row's index among the step's rows) instead of being raced again now,
        after a read-back; with None, they are left as raced (the caller replaces every token)."""
        seeds = noise_seeds([r.noise_key for r in rows], [r.position for r in rows]) & np.uint64(_MASK32)
        params = [r.params for r in rows]
        if self.use_kernels and not any(p.min_p for p in params):  # engine/fast_paths.py: the C kernel
            return kernels.sample_rows(
                x, torch.tensor([p.temperature for p in params], dtype=torch.float32),
                torch.tensor([p.top_k for p in params], dtype=torch.int64),
                torch.tensor([p.top_p for p in params], dtype=torch.float64),
                torch.from_numpy(seeds.astype(np.int64))), None
        knobs = RowKnobs.of(params, seeds, x.device)
        if shift is not None:
            knobs = shift.seeds(knobs, rows, at)
        found = race_candidates(x, knobs, noise=self.noise, kernel=self.race_kernel) \
            if len(rows) >= CANDIDATE_ROWS else None
        if found is None:
            return race(_filter(x, knobs), knobs.seeds, self.noise), None
        tokens, covered = found
        if defer is None:
            return tokens, None
        if defer:  # its own logits: a CUDA graph's next replay writes the buffer `x` may view
            if self.redraw_at_launch:
                tokens, covered = self._redraw_some(x, knobs, params, tokens, covered)
            return tokens, Redraw(x.clone(), knobs, params, covered, at)
        redraw = Redraw(x, knobs, params, covered, at)
        rest_index = (~covered).nonzero()[:, 0]
        rest = rest_index.tolist()  # a read-back
        if rest:
            tokens[rest_index] = torch.tensor(redraw.tokens(rest, self.noise), device=tokens.device)
        return tokens, None

    def _redraw_some(self, x: torch.Tensor, knobs: "RowKnobs", params: list[SamplingParams], tokens: torch.Tensor,
                     covered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to REDRAWN_AT_ONCE rows the candidates did not cover raced again over the whole
        vocabulary now, which rows they are found on the device (no read-back): a step queued
        ahead is fed their right tokens, and only a step that missed more leaves a Redraw to
        read back (behind the queued step). Returns the tokens and the rows now covered."""
        pick = torch.argsort(covered.to(torch.uint8), stable=True)[:REDRAWN_AT_ONCE]  # the missed first
        sub = knobs.take(pick, params)  # (the flags of all the rows: those of any of them)
        drawn = race(_filter(x.index_select(0, pick), sub), sub.seeds, self.noise)
        missed = ~covered.index_select(0, pick)
        tokens = tokens.index_copy(0, pick, torch.where(missed, drawn, tokens.index_select(0, pick)))
        return tokens, covered.index_fill(0, pick, True)


REDRAWN_AT_ONCE = 8  # rows the race's candidates missed that are raced again at launch, on the device


class Redraw(NamedTuple):
    """Sampled rows whose candidates' race may not have covered them (race_candidates), to be
    raced again over the whole vocabulary once the host knows which."""

    x: torch.Tensor  # the sampled rows' logits (constrained)
    knobs: "RowKnobs"
    params: list[SamplingParams]
    covered: torch.Tensor  # [m] bool, on the device
    at: list[int] | None  # each sampled row's index among the step's rows (None: the same)

    def tokens(self, rest: list[int], noise: "Noise") -> list[int]:
        """The tokens of sampled rows `rest` (not covered), raced over the whole vocabulary."""
        index = torch.tensor(rest, device=self.x.device)
        sub = self.knobs.take(index, [self.params[i] for i in rest])
        return race(_filter(self.x[index], sub), sub.seeds, noise).tolist()

    def step_rows(self, rest: list[int]) -> list[int]:
        return rest if self.at is None else [self.at[i] for i in rest]

    def covering(self, step_rows: list[int]) -> "Redraw":
        """The same, these step rows counted as covered (their tokens are recorded)."""
        local = {r: j for j, r in enumerate(self.at if self.at is not None else range(len(self.params)))}
        mine = [local[r] for r in step_rows if r in local]
        if not mine:
            return self
        covered = self.covered.clone()
        covered[on_device(torch.tensor(mine), covered.device)] = True
        return self._replace(covered=covered)


class HostCopy:
    """A device tensor's copy to the host, queued now and waited for when read. A read-back
    (`tolist`) queued later waits for all the work queued before it on the device: that of a
    step queued ahead of these tokens' reaching the host too, which then cannot overlap the
    host's work on them. On a CPU the values are computed already: kept as they are now."""

    def __init__(self, values: torch.Tensor) -> None:
        self._event = None
        if values.device.type != "cuda":
            self._host = values.clone()
            return
        self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        self._host.copy_(values, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record(torch.cuda.current_stream(values.device))

    def values(self) -> list:
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


class HeldRows(NamedTuple):
    """Rows held to JSON, checked against their constraint once their tokens are read back."""

    at: list[int]  # their indices among the step's rows
    x: torch.Tensor  # their logits (constrained), a copy of their own
    choose: Callable[[torch.Tensor, list[SamplingRow], list[int]], list[int]]  # Sampler._json_objects


class Sampled:
    """A step's tokens chosen on the device (`tokens`), before they come back to the host.
    Their copy back is queued as they are chosen, one copy with their logprobs and which rows the
    candidates' race covered (HostCopy), and result() waits for it; a row it did not cover is
    raced again over the whole vocabulary, and where that changes its token the row is listed in
    `changed`: a step already fed `tokens` fed that row's sequence a token that is not its own.
    A row held to JSON is then checked against its constraint (HeldRows: `tokens` holds its own
    choice; only where the constraint refuses it does that check make device work, behind
    whatever is queued by then), and where that changes its token it is listed in `changed` too."""

    def __init__(self, tokens: torch.Tensor, rows: Seq[SamplingRow], kinds: list[SamplingParams],
                 raw_logprobs: torch.Tensor | None, redraw: Redraw | None, noise: "Noise",
                 held: HeldRows | None = None) -> None:
        self.tokens, self.rows, self.kinds = tokens, rows, kinds
        self._raw_logprobs, self._redraw, self._noise, self._held = raw_logprobs, redraw, noise, held
        self.changed: list[int] = []
        self._result: SampleResult | None = None
        self._top = 0 if raw_logprobs is None else min(max(p.top_logprobs for p in kinds), raw_logprobs.shape[1])
        self._copy = HostCopy(self._parts())

    def _parts(self) -> torch.Tensor:
        """What comes back to the host, in one tensor: the tokens, which rows the race covered,
        the logprobs and the likeliest alternatives (token ids are exact in float64)."""
        tokens, redraw, raw_logprobs = self.tokens, self._redraw, self._raw_logprobs
        if redraw is None and raw_logprobs is None:
            return tokens
        parts = [tokens.double()]
        if redraw is not None:
            parts.append(redraw.covered.double())
        if raw_logprobs is not None:
            parts.append(raw_logprobs.gather(1, tokens[:, None])[:, 0].double())
            if self._top:
                values, ids = raw_logprobs.topk(self._top, dim=-1)
                parts += [ids.double().flatten(), values.double().flatten()]
        return torch.cat(parts)

    @torch.inference_mode()
    def result(self) -> SampleResult:
        if self._result is None:
            self._result = self._read_back()
        return self._result

    def _read_back(self) -> SampleResult:
        rows, raw_logprobs, redraw, k = self.rows, self._raw_logprobs, self._redraw, self._top
        n = len(rows)
        host = self._copy.values()
        result_tokens = host if redraw is None and raw_logprobs is None else [int(t) for t in host[:n]]
        at = n
        if redraw is not None:
            m = len(redraw.params)
            rest = [j for j, c in enumerate(host[at:at + m]) if not c]
            at += m
            if rest:
                self._changed_to(result_tokens, redraw.step_rows(rest), redraw.tokens(rest, self._noise))
        if self._held is not None:
            self._constrained(result_tokens)
        if raw_logprobs is None:
            return SampleResult(result_tokens, None)
        logprobs = host[at:at + n]
        if self.changed:
            index = torch.tensor(self.changed, device=raw_logprobs.device)
            chosen = torch.tensor([result_tokens[i] for i in self.changed], device=raw_logprobs.device)
            for i, value in zip(self.changed, raw_logprobs[index, chosen].tolist()):
                logprobs[i] = value
        if not k:
            return SampleResult(result_tokens, logprobs)
        ids_at, values_at = at + n, at + n + n * k
        top = [tuple((int(host[ids_at + i * k + j]), host[values_at + i * k + j])
                     for j in range(min(r.params.top_logprobs, k))) for i, r in enumerate(rows)]
        return SampleResult(result_tokens, logprobs, top)

    def _constrained(self, tokens: list[int]) -> None:
        """The rows held to JSON given the tokens their constraint allows (in place)."""
        at, x, choose = self._held
        rows, kept = [], []
        for j, i in enumerate(at):
            row = self.rows[i]
            if type(row.json) is LateState:
                late = row.json.read()
                if late is None:
                    continue
                row = row._replace(json=late[0], position=late[1])
            rows.append(row)
            kept.append(j)
        if len(kept) < len(at):
            at, x = [at[j] for j in kept], x[kept] if kept else x[:0]
        if at:
            self._changed_to(tokens, at, choose(x, rows, [tokens[i] for i in at]))

    def _changed_to(self, tokens: list[int], rows: list[int], drawn: list[int]) -> None:
        for i, token in zip(rows, drawn):
            if tokens[i] != token:
                tokens[i] = token
                self.changed.append(i)


class RowKnobs(NamedTuple):
    """Each sampled row's temperature, top-k (0: none), top-p, min-p and noise seed on the logits'
    device, brought there in one copy: a copy from pageable host memory would wait for the
    forward before it, once per field."""

    temperature: torch.Tensor  # [n] float32
    top_k: torch.Tensor  # [n] int64
    top_p: torch.Tensor  # [n] float32
    seeds: torch.Tensor  # [n] int64, below 2**32
    # [n] float32: a kept token's logit (after temperature) is at least the best's plus this; None
    # where no row has a min-p (two launches fewer on a GPU)
    log_min_p: torch.Tensor | None
    largest_k: int  # the largest top-k a row asks for, clamped to the vocabulary later (0: none)
    any_top_p: bool
    any_min_p: bool

    @classmethod
    def of(cls, params: Seq[SamplingParams], seeds: np.ndarray, device: torch.device) -> "RowKnobs":
        # float64 holds each field exactly: float32 temperatures, top-k and seeds below 2**53, top-p
        # rounded to float32 as the reference filter reads it.
        flags = _host_flags(params)
        host = np.empty((5 if flags[2] else 4, len(params)), dtype=np.float64)
        host[0] = np.array([p.temperature for p in params], dtype=np.float32)
        host[1] = [p.top_k for p in params]
        host[2] = np.array([p.top_p for p in params], dtype=np.float32)
        host[3] = seeds
        if flags[2]:
            with np.errstate(divide="ignore"):  # min_p 0: log 0 = -inf, every token stays
                host[4] = np.log(np.array([p.min_p for p in params], dtype=np.float64)).astype(np.float32)
        packed = on_device(torch.from_numpy(host), device)
        return cls(packed[0].float(), packed[1].long(), packed[2].float(), packed[3].long(),
                   packed[4].float() if flags[2] else None, *flags)

    def take(self, index: torch.Tensor, params: Seq[SamplingParams]) -> "RowKnobs":
        """The knobs of the rows at `index` (whose params are `params`), from those already on the
        device: no second copy from the host."""
        flags = _host_flags(params)
        log_min_p = self.log_min_p[index] if flags[2] else None
        return RowKnobs(self.temperature[index], self.top_k[index], self.top_p[index], self.seeds[index], log_min_p,
                        *flags)


def _on_the_host(order: torch.Tensor) -> Iterator[int]:
    """A row's tokens in order, brought to the host PREFERRED_FIRST at first (one of them is
    usually the one looked for), the rest only if needed."""
    yield from order[:PREFERRED_FIRST].tolist()
    yield from order[PREFERRED_FIRST:].tolist()


def _host_flags(params: Seq[SamplingParams]) -> tuple[int, bool, bool]:
    """What the filter reads on the host: the largest top-k the rows ask for, whether any row's
    top-p, rounded to float32 as the filter reads it, is below 1, and whether any row has a min-p."""
    top_p = np.array([p.top_p for p in params], dtype=np.float32)
    return max(p.top_k for p in params), bool((top_p < 1.0).any()), any(p.min_p > 0.0 for p in params)


def _distinct(rows: Seq[SamplingRow]) -> list[SamplingParams]:
    """The rows' params, each object once (a request's rows share one): what holds for all of
    them is checked once per object instead of once per row."""
    return list({id(r.params): r.params for r in rows}.values())


# The race's noise: (seeds [n], token ids [n, m] or None for 0..width-1 in every row, width) -> [n, m]
# (or [n, width]) float32. row_noise is the reference; engine/kernels/triton_noise.py the GPU kernel.
Noise = Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor]


def row_noise(seeds: torch.Tensor, token_ids: torch.Tensor | None, width: int) -> torch.Tensor:
    """uniform_hash of each row's seed with that row's token ids (None: 0..width-1 in every row)."""
    if token_ids is None:
        token_ids = torch.arange(width, device=seeds.device)[None, :]
    return uniform_hash(seeds[:, None], token_ids)


def host_row_noise(seeds: torch.Tensor, token_ids: torch.Tensor | None, width: int) -> torch.Tensor:
    """row_noise for CPU tensors in numpy's uint32 arithmetic, which wraps as the hash's 32-bit
    products do (torch's int64 has to emulate them): the same values, several times faster."""
    s = seeds.numpy().astype(np.uint32)[:, None]
    ids = np.arange(width, dtype=np.uint32)[None, :] if token_ids is None else token_ids.numpy().astype(np.uint32)
    with np.errstate(over="ignore"):
        h = _mix32_np(_mix32_np(s ^ (ids * np.uint32(0x9E3779B1))) ^ (s >> np.uint32(7)))
    return torch.from_numpy(((h >> np.uint32(9)).astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / (1 << 23)))


def _mix32_np(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def race(x: torch.Tensor, seeds: torch.Tensor, noise: Noise = row_noise) -> torch.Tensor:
    """The exponential race: argmax over surviving tokens of w / E, w = exp(x - max) and
    E = -log(u) ~ Exp(1) with u hashed from (row seed, token id); a sample of softmax(x)."""
    return torch.argmax(race_scores(x, seeds, noise), dim=-1)


def race_scores(x: torch.Tensor, seeds: torch.Tensor, noise: Noise = row_noise) -> torch.Tensor:
    """Each token's score in the race (0 for tokens the filters dropped)."""
    w = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    u = noise(seeds, None, x.shape[1])
    return torch.where(torch.isfinite(x), w / -torch.log(u), 0.0)


def kept_scores(x: torch.Tensor, kept: torch.Tensor, seeds: torch.Tensor, noise: Noise = row_noise) -> torch.Tensor:
    """race_scores, its noise drawn for the kept tokens only (`kept`: where x is finite): a
    filtered row keeps few (where rows keep most of theirs, the whole rows' noise costs less)."""
    w = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    if 4 * int(kept.sum()) > x.numel():
        return torch.where(kept, w / -torch.log(noise(seeds, None, x.shape[1])), 0.0)
    rows, cols = kept.nonzero(as_tuple=True)
    score = torch.zeros_like(x)
    score[rows, cols] = w[rows, cols] / -torch.log(noise(seeds[rows], cols[:, None], 1)[:, 0])
    return score


PREFERRED_FIRST = 256  # json_object: the tokens of a row's order brought to the host before the rest
CANDIDATES = 1024  # the likeliest tokens of a row that race_candidates filters and races over
# From this many sampled rows race_candidates goes first: which rows it covered is read back from the
# device (a wait for the forward); for fewer rows the whole vocabulary costs less than that wait.
CANDIDATE_ROWS = 16


# What race_candidates does after its top-k, in one kernel (engine/kernels/triton_race.py race):
# (scaled logits, candidates' values, their ids, top_k, top_p, log_min_p or None, seeds) -> (tokens, covered)
RaceKernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def race_candidates(x: torch.Tensor, knobs: RowKnobs, count: int = CANDIDATES, noise: Noise = row_noise,
                    kernel: RaceKernel | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """race(_filter(x, knobs), knobs.seeds) over each row's `count` likeliest tokens instead of the
    vocabulary (no sort, no noise for tokens that cannot win): (tokens, covered), the tokens right
    where `covered`, i.e. where the row's filter keeps only tokens among the candidates, because its
    top-k ends strictly above the last of them, or (without top-k) the weight strictly above the
    last reaches its top-p of the total, or its min-p floor is above the last. A flat row, or a
    top-k past `count`, is not covered. None when no row filters at all (every token may win) or
    the vocabulary is no larger than `count`. `kernel`: what follows the top-k, in one kernel
    (`count` a power of two; its noise is uniform_hash's)."""
    vocab = x.shape[1]
    if count >= vocab or not (knobs.largest_k > 0 or knobs.any_top_p or knobs.any_min_p):
        return None
    x = x / knobs.temperature[:, None]
    vals, idx = torch.topk(x, count, dim=-1)  # descending
    if kernel is not None:
        return kernel(x, vals, idx, knobs.top_k, knobs.top_p, knobs.log_min_p, knobs.seeds)
    floor = vals[:, 0] + knobs.log_min_p if knobs.any_min_p else None  # min-p: nothing below it stays
    by_k = knobs.top_k > 0
    kth = vals.gather(1, (knobs.top_k.clamp(1, count) - 1)[:, None])[:, 0]
    vals = torch.where(by_k[:, None] & (vals < kth[:, None]), float("-inf"), vals)
    # Top-p as _top_p computes it, over the candidates: the total is theirs where top-k cut the row
    # to them, else the whole row's.
    w = torch.exp(vals - vals[:, :1]).double()
    total = torch.where(by_k, w.sum(dim=-1), torch.exp(x - vals[:, :1]).double().sum(dim=-1))
    before = torch.cumsum(w, dim=-1) - w
    strictly_better = before.gather(1, torch.searchsorted(-vals, -vals))
    by_p = knobs.top_p < 1.0
    target = knobs.top_p.double() * total
    keep = (strictly_better < target[:, None]) | ~by_p[:, None]
    covered = ((by_k & (knobs.top_k <= count) & (vals[:, -1] < kth))
               | (~by_k & by_p & (strictly_better[:, -1] >= target)))
    if floor is not None:  # the last candidate below the floor: so is every token past it
        keep &= vals >= floor[:, None]
        covered |= vals[:, -1] < floor
    kept = torch.where(keep, vals, float("-inf"))
    u = noise(knobs.seeds, idx, count)
    score = torch.where(torch.isfinite(kept), torch.exp(kept - kept[:, :1]) / -torch.log(u), 0.0)
    best = score.max(dim=-1, keepdim=True).values
    tokens = torch.where(score == best, idx, vocab).min(dim=-1).values  # a tie: the smallest id, as argmax
    return tokens, covered


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
    """Uniform (0, 1) float32 noise, a deterministic function of (row seed, token id); 23 bits,
    so that k + 0.5 is exact in float32 (the C kernel computes the same values)."""
    h = _mix32(_mix32(seeds ^ _mul32(token_ids, 0x9E3779B1)) ^ (seeds >> 7))
    return ((h >> 9).float() + 0.5) * (1.0 / (1 << 23))


def _filter(x: torch.Tensor, knobs: RowKnobs) -> torch.Tensor:
    """Temperature, then top-k, then top-p, then min-p: what a row may still draw is finite."""
    x = x / knobs.temperature[:, None]
    if knobs.largest_k > 0:  # rows without a top-k (0) keep every token
        best = torch.topk(x, min(knobs.largest_k, x.shape[1]), dim=-1).values
        kth = best.gather(1, (knobs.top_k.clamp(1, best.shape[1]) - 1)[:, None])
        x = x.masked_fill((x < kth) & (knobs.top_k > 0)[:, None], float("-inf"))
    if knobs.any_top_p:
        x = _top_p(x, knobs.top_p)
    if knobs.any_min_p:
        floor = x.max(dim=-1, keepdim=True).values + knobs.log_min_p[:, None]
        x = x.masked_fill(x < floor, float("-inf"))
    return x


def _top_p(x: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """Keeps token i when the weight of the tokens strictly better than it is below top_p of
    the total (equal logits stay or go together); weights exp(x - max) in float32, summed in
    float64, like the C kernel."""
    sorted_x, order = torch.sort(x, dim=-1, descending=True)
    weights = torch.exp(sorted_x - sorted_x[:, :1]).double()
    before = torch.cumsum(weights, dim=-1) - weights  # weight of the tokens sorted before each one
    first_of_tie = torch.searchsorted(-sorted_x.contiguous(), -sorted_x.contiguous())
    strictly_better = before.gather(1, first_of_tie)
    keep = strictly_better < p_t[:, None].double() * weights.sum(dim=-1, keepdim=True)
    keep |= p_t[:, None] >= 1.0
    out = torch.full_like(x, float("-inf"))
    out.scatter_(1, order, torch.where(keep, sorted_x, float("-inf")))
    return out


def _apply_penalties(row: torch.Tensor, r: SamplingRow) -> None:
    p = r.params
    if isinstance(r.history, DeviceHistory):
        history, weights = r.history
    else:
        history, weights = on_device(torch.tensor(list(r.history), dtype=torch.long), row.device), None
    if p.repetition_penalty != 1.0 and len(history):
        if weights is None:
            seen = torch.zeros(row.shape[0], dtype=torch.bool, device=row.device).index_fill_(0, history, True)
        else:
            seen = torch.zeros(row.shape[0], dtype=weights.dtype, device=row.device).index_add_(0, history, weights) > 0
        row.copy_(torch.where(seen, torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty), row))
    output = history[r.output_start:]
    if (p.presence_penalty or p.frequency_penalty) and len(output):
        counted = torch.ones(len(output), dtype=row.dtype, device=row.device) if weights is None else \
            weights[r.output_start:].to(row.dtype)
        counts = torch.zeros_like(row).index_add_(0, output, counted)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
