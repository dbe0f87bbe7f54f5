"""The engine loop: add requests, step, collect outputs.

One step: the scheduler plans it -> the model runner runs the forward -> the sampler picks the
tokens -> the scheduler applies them (verification, stops, KV commit or rollback) -> the proposer
learns what was accepted and drafts for the next step -> outputs.
"""
from __future__ import annotations

import functools
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.block_manager import BlockManager
from engine.cost_sweep import StepCostPoints, measure_step_cost, seed
from engine.config import EngineConfig
from engine.gc_tuning import raise_young_threshold
from engine.json_object import START as JSON_START
from engine.json_object import JsonTokens, ThinkFirst
from engine.model_runner import ModelRunner
from engine.models.registry import read_model_config
from engine.outputs import CompletionOutput, Prefix, RequestOutput, SpecStats
from engine.overlap_choice import OverlapChoice
from engine.paths import step_cost_dir
from engine.proposer import Draft, DraftQueries, Proposer
from engine.sampler import DeviceHistory, LateState, RowShift, Sampled, Sampler, SamplingRow, sample_key
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSeq, Scheduler, SchedulerLimits, SchedulerOutput, SeqUpdate
from engine.sequence import Sequence
from engine.step_batch import Feed, Shift, on_device
from engine.step_cost import StepCost, StepTimer, measured
from engine.stop_checker import StopChecker, compiled_stops, undecided_line_start
from engine.tokenizer import IncrementalDetokenizer, Tokenizer

if TYPE_CHECKING:
    from engine.models.llama import LlamaForCausalLM


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    arrival_time: float
    finish_time: float | None = None
    client: str | None = None  # who asked (an API key, a peer address): the scheduler shares slots fairly by it
    # By sample index, the last output built for that sample (None: never built), and the samples
    # that changed since: an output rebuilds only those, whatever the number of samples.
    completions: list[CompletionOutput | None] = field(init=False)
    changed: set[int] = field(init=False)
    first_token_time: float | None = None  # the earliest of its samples' (kept up by request_output)

    def __post_init__(self) -> None:
        self.completions = [None] * len(self.seqs)
        self.changed = set(range(len(self.seqs)))

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


@dataclass
class EngineStats:
    num_blocks_total: int
    num_blocks_free: int
    num_running: int
    num_waiting: int
    steps: int
    generated_tokens: int
    forward_time: float
    propose_time: float
    preemptions: int
    spec: SpecStats = field(default_factory=SpecStats)
    prompt_tokens_computed: int = 0  # prompt positions the model ran
    tokens_cached: int = 0  # positions taken from the prefix cache instead of computed
    cuda_graphs: str | None = None  # the graphs captured so far (None: no graphs)
    overlapped_steps: int = 0  # steps queued on the device before the previous step's tokens reached the host


@dataclass(slots=True)
class _Launched:
    """A step queued on the device whose tokens have not reached the host yet."""

    out: SchedulerOutput
    sampled: Sampled | None
    start: float  # when it was planned (time.perf_counter)
    ahead: bool = False  # planned before the previous step's tokens reached the host
    captured: bool = False  # its forward captured a CUDA graph first (its time is no step's cost)
    dropped: set[int] = field(default_factory=set)  # sequences it fed a token that was not theirs
    # The drafts it verifies as proposed, by sequence id, and whether each was found ahead of the
    # token of the step before it (_drafts_ahead: it begins with the token it expected there).
    drafts: dict[int, tuple[Draft, bool]] = field(default_factory=dict)


class LLMEngine:
    def __init__(self, config: EngineConfig, proposer: Proposer | None = None,
                 model: "LlamaForCausalLM | None" = None, tokenizer: Tokenizer | None = None,
                 step_timer: StepTimer = measured) -> None:
        """`step_timer` turns a step's shape and measured seconds into the seconds it is taken to
        cost (a simulated device returns its recorded cost instead)."""
        self.config = config
        self.model_config = model.config if model is not None else read_model_config(config.model)
        self.tokenizer = tokenizer or Tokenizer(config.model)
        mc = self.model_config
        self.max_model_len = min(config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        self.runner = ModelRunner(config, mc, model)
        # Every id that ends a text: the tokenizer's, then the checkpoint's (e.g. <|im_end|> besides <|endoftext|>).
        self.eos_ids = tuple(dict.fromkeys((*self.tokenizer.eos_ids, *mc.eos_token_ids)))
        self.eos_id = self.eos_ids[0] if self.eos_ids else None
        blocks = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        limits = SchedulerLimits(config.max_num_seqs, config.max_num_batched_tokens, self.max_model_len)
        self.scheduler = Scheduler(limits, blocks, StopChecker(self.eos_ids, self.max_model_len))
        texts = self.tokenizer.plain_texts
        self.sampler = Sampler(self.eos_ids, use_kernels=self.runner.paths.cpu_sampler,
                               triton_noise=self.runner.paths.triton_noise, host_noise=self.runner.paths.host_noise,
                               triton_race=self.runner.paths.triton_race, redraw_at_launch=self.runner.paths.overlap,
                               json_tokens=JsonTokens(texts, frozenset(self.eos_ids)) if texts is not None else None)
        self.proposer = proposer
        self.step_cost = StepCost(self.runner.cost_key(), step_cost_dir())
        self.step_timer = step_timer
        if config.cost_sweep:
            self.sweep_step_cost()
        self.requests: dict[str, RequestState] = {}
        self._drafts: dict[int, Draft] = {}  # for the next step, by sequence id
        self._step_outs: tuple[SchedulerOutput, ...] = ()  # the steps being run (who a failure concerns)
        self._launched: _Launched | None = None  # a step queued ahead, its tokens not yet applied
        self._finished_at = 0.0  # when the last step's tokens were applied (time.perf_counter)
        self._drafted_last: bool | None = None  # whether the last step applied verified drafts (None: no step yet)
        self._after_drafts = OverlapChoice()  # whether a drafting step's successor is queued ahead
        self._next_seq_id = 0
        self._steps = 0
        self._ahead_steps = 0
        self._generated = 0
        self._forward_time = 0.0
        self._propose_time = 0.0
        self._spec = SpecStats()
        raise_young_threshold()

    @property
    def step_requests(self) -> set[str]:
        """The requests of the step being run (or last run): who a failure in it concerns."""
        return {s.seq.request_id for out in self._step_outs for s in out.scheduled}

    @property
    def block_manager(self) -> BlockManager:
        return self.scheduler.blocks

    def sweep_step_cost(self) -> StepCostPoints:
        """Times decode and verify steps now (benchmarks: the engine otherwise learns them from
        its own steps) and hands them to the step cost; see engine/cost_sweep.py."""
        limit = min(self.config.max_num_batched_tokens, self.block_manager.num_blocks * self.config.block_size)
        points = measure_step_cost(self.runner, self.sampler, limit)
        seed(self.step_cost, points)
        return points

    # ------------------------------------------------------------------ requests
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None, client: str | None = None,
                    prediction: str | list[int] | None = None) -> None:
        """`prediction`: what the client expects the output to be (OpenAI's predicted outputs),
        text or token ids; the proposer drafts from it, and the output stays what it would be."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        text, ids = self._prompt_ids(prompt)
        predicted = self._prediction_ids(prediction)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; the model's context is {self.max_model_len} tokens")
        if self.block_manager.blocks_for(len(ids) + 1) > self.block_manager.num_blocks:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit in the KV cache")
        if any(i >= self.model_config.vocab_size for i, _ in params.special_texts):
            raise ValueError(f"special_texts: token ids out of range [0, {self.model_config.vocab_size})")
        if any(i >= self.model_config.vocab_size for i, _ in params.logit_bias):
            raise ValueError(f"logit_bias: token ids out of range [0, {self.model_config.vocab_size})")
        if params.think_first is not None and any(i is not None and not 0 <= i < self.model_config.vocab_size
                                                  for i in params.think_first[1:]):
            raise ValueError(f"think_first: token ids out of range [0, {self.model_config.vocab_size})")
        if any(not 0 <= i < self.model_config.vocab_size for i in params.stop_token_ids):
            raise ValueError(f"stop_token_ids: token ids out of range [0, {self.model_config.vocab_size})")
        if params.json_object and (self.sampler.json_tokens is None or not self.eos_ids):
            raise ValueError("json_object needs a tokenizer whose pieces' texts are known and an end-of-text token")
        if params.json_schema is not None and not self.sampler.json_tokens.can_begin(params.json_schema.start):
            raise ValueError("the constraint accepts no answer that a token of this model's vocabulary can begin")
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        seqs = []
        for i in range(params.n):
            seq = Sequence(self._next_seq_id, request_id, i, ids, params, sample_key(seed, i), client)
            self._next_seq_id += 1
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, ids, kept=dict(params.special_texts))
            seq.json_state = None if not params.json_object else (
                JSON_START if params.json_schema is None else params.json_schema.start)
            if params.think_first is not None:
                seq.json_state = ThinkFirst(*params.think_first, then=seq.json_state)
            seqs.append(seq)
        self.requests[request_id] = RequestState(request_id, text, ids, params, seqs,
                                                 arrival_time or time.monotonic(), client=client)
        for seq in seqs:
            if self.proposer is not None:
                self.proposer.add_sequence(seq.seq_id, request_id, ids, predicted, seq.output_token_ids)
            self.scheduler.add(seq)

    def _prompt_ids(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return prompt, self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("prompt is empty")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
        return None, ids

    def _prediction_ids(self, prediction: str | list[int] | None) -> list[int]:
        if not prediction:
            return []
        if isinstance(prediction, str):
            return self.tokenizer.encode(prediction, add_bos=False)
        ids = [int(t) for t in prediction]
        if any(not 0 <= t < self.model_config.vocab_size for t in ids):
            raise ValueError(f"prediction token ids out of range [0, {self.model_config.vocab_size})")
        return ids

    def abort(self, request_id: str) -> bool:
        state = self.requests.pop(request_id, None)
        if state is None:
            return False
        live = [s for s in state.seqs if not s.is_finished]
        self.scheduler.abort(live)
        for seq in live:
            self._retired(seq, aborted=True)
        state.finish_time = time.monotonic()
        return True

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ------------------------------------------------------------------ the step
    def step(self, collect: str = "all") -> list[RequestOutput]:
        """One engine step: the outputs of one step's tokens. `collect`: 'all' returns every
        request that changed, 'finished' only those done. With overlapped steps (fast_paths), the
        next plain decode step is queued on the device before this one's tokens are applied, and
        the next call applies its tokens (a step's outputs may come one call later)."""
        try:
            launched = self._launched
            if launched is None:
                start = time.perf_counter()
                drafts, self._drafts = self._drafts, {}
                out = self.scheduler.schedule(drafts)
                self._step_outs = (out,)
                launched = self._launch(out, start, drafts={i: (d, False) for i, d in drafts.items()})
            else:
                self._step_outs = (launched.out,)
            self._launched = self._ahead(launched) if self.runner.paths.overlap else None
            outputs = self._finish(launched, collect)
        except BaseException:
            # A step queued ahead is dropped with whatever failed: it applied nothing, and its
            # sequences are planned again from what was applied.
            self._launched = None
            raise
        if self._launched is None:
            t1 = time.perf_counter()
            self._drafts = self._propose()
            self._propose_time += time.perf_counter() - t1
        return outputs

    def _launch(self, out: SchedulerOutput, start: float, feed: Feed | None = None, shift: Shift | None = None,
                ahead: bool = False, drafts: dict[int, tuple[Draft, bool]] | None = None,
                tails: dict[int, DeviceHistory] | None = None) -> _Launched:
        """Queues the step's forward and sampling (`feed`: token ids of it on the device; `shift`:
        sequences whose rows the device moves; `drafts`: those it verifies, as proposed; `tails`:
        penalized sequences' tokens of the step before, on the device: _device_tails)."""
        sampled = None
        if out.scheduled:
            logits = self.runner.execute(out, feed, shift)
            rows = self._sampling_rows(out, tails)
            if not rows:
                sampled = None
            elif shift is not None:
                sampled = self.sampler.launch(logits, rows, self._row_shift(out, shift))
            else:
                sampled = self.sampler.launch(logits, rows)
            self._steps += 1
        self._forward_time += time.perf_counter() - start
        return _Launched(out, sampled, start, ahead, self.runner.step_captured, drafts=drafts or {})

    def _ahead(self, prev: _Launched) -> _Launched | None:
        """The next step queued behind `prev` before prev's tokens reach the host, each sequence
        fed its token from the device (Scheduler.schedule_ahead: after a draft, the token after
        the part of it accepted, its rows moved by as many, both found on the device: _accepted),
        and the drafts the proposer finds now, ahead of those tokens (_drafts_ahead); None where it
        cannot be (the next step is then planned once they have)."""
        if prev.sampled is None or prev.dropped or not self.scheduler.can_plan_ahead(prev.out, shifts=True):
            return None  # (asked before the proposer: a search is not to be made for nothing)
        if prev.drafts and not self._after_drafts.ahead(len(self.scheduler.running)):
            return None  # waiting on the draft's tokens pays here (OverlapChoice)
        # prev's first sampling row of each sequence (all sample: can_plan_ahead), and what it fed
        sampled_at, row = {}, 0
        for s in prev.out.scheduled:
            sampled_at[s.seq] = (row, s)
            row += len(s.draft) + 1
        drafts = None
        if self.proposer is not None and self._proposer_searches(len(self.scheduler.running)):
            if not hasattr(self.proposer, "propose_ahead"):
                return None  # it drafts from the tokens: wait for them
            t0 = time.perf_counter()
            drafts = self._drafts_ahead(prev, sampled_at)
            self._propose_time += time.perf_counter() - t0
        start = time.perf_counter()
        out = self.scheduler.schedule_ahead(prev.out, drafts)
        if out is None:
            return None
        fed = out.scheduled[:out.fed]
        rows = [sampled_at[s.seq][0] for s in fed]
        tokens = prev.sampled.tokens
        device = tokens.device
        shifted = [i for i, s in enumerate(fed) if s.shift]
        shift = None
        if shifted:
            by = _accepted(tokens, [sampled_at[fed[i].seq] for i in shifted])
            shift = Shift(shifted, [fed[i].shift for i in shifted], by)
            index = on_device(torch.tensor(rows, dtype=torch.long), device)
            ids = tokens.index_select(0, index.index_add(0, on_device(torch.tensor(shifted), device), by))
        else:
            ids = tokens if len(rows) == len(tokens) else \
                tokens[on_device(torch.tensor(rows, dtype=torch.long), device)] if rows else None
        dst = None
        if drafts:  # each fed id goes to its sequence's first row, its draft after it
            dst = [0, *itertools.accumulate(len(s.token_ids) for s in fed[:-1])]
        feed = None if ids is None else \
            Feed(ids, on_device(torch.tensor(dst, dtype=torch.long), device) if dst is not None else None)
        self._ahead_steps += 1
        self._step_outs = (prev.out, out)
        found = {s.seq.seq_id: (drafts[s.seq.seq_id], True) for s in fed if s.draft} if drafts else None
        tails = _device_tails(fed, tokens, sampled_at, ids, shift)
        return self._launch(out, start, feed, shift, ahead=True, drafts=found, tails=tails)

    def _row_shift(self, out: SchedulerOutput, shift: Shift) -> RowShift:
        """The sampling rows of the sequences `shift` moves, each by its sequence's amount; in trace
        replay, each row's recorded token at every position it may have."""
        first, row = [], 0
        for s in out.scheduled:
            first.append(row)
            row += len(s.draft) + 1 if s.samples else 0
        rows, owner, forced, replay = [], [], [], False
        for j, i in enumerate(shift.seqs):
            s = out.scheduled[i]
            seq, count = s.seq, len(s.draft) + 1
            rows += range(first[i], first[i] + count)
            owner += [j] * count
            if seq.params.replay_token_ids is None:
                forced += [None] * count
                continue
            replay, position = True, s.start + s.num_real - len(seq.prompt_token_ids)
            forced += [tuple(self._forced(seq, position + k + b) for b in range(s.shift + 1)) for k in range(count)]
        by = shift.by.index_select(0, on_device(torch.tensor(owner, dtype=torch.long), shift.by.device))
        return RowShift(rows, [shift.limits[j] for j in owner], by, forced if replay else None)

    def _drafts_ahead(self, prev: _Launched,
                      sampled_at: dict[Sequence, tuple[int, ScheduledSeq]]) -> dict[int, Draft]:
        """Drafts for the step queued ahead, by sequence id: the proposer's (propose_ahead), each
        beginning with the token it expects the step in flight to sample (after a draft there, the
        token after it); the sequence is fed the rest after the token it gets. `sampled_at`: what
        prev fed each sequence (_ahead)."""
        seqs = self.scheduler.running
        budget = max(0, self.config.max_num_batched_tokens - len(seqs))
        max_model_len = self.max_model_len
        in_flight = {seq.seq_id: len(s.draft) for seq, (_, s) in sampled_at.items() if s.draft} if prev.drafts else {}
        # Room for the tokens in flight: the one after them comes first.
        queries = DraftQueries([seq.seq_id for seq in seqs], lambda i: max(
            0, _room(seqs[i], max_model_len) - 1 - in_flight.get(seqs[i].seq_id, 0)))
        covered = {i: (d, in_flight[i] + ahead) for i, (d, ahead) in prev.drafts.items() if i in in_flight}
        found = self.proposer.propose_ahead(queries, budget, self.step_cost, covered)
        return {seq.seq_id: draft for seq, draft in zip(seqs, found) if len(draft.tokens) > 1}

    def _proposer_searches(self, n: int) -> bool:
        """Whether the proposer will search for drafts at the next step (asked only where it can
        tell beforehand: Proposer.will_search; one that cannot is taken to search)."""
        will_search = getattr(self.proposer, "will_search", None)
        if will_search is None:
            return True
        budget = max(0, self.config.max_num_batched_tokens - len(self.scheduler.running))
        return will_search(n, budget, self.step_cost)

    def _finish(self, launched: _Launched, collect: str) -> list[RequestOutput]:
        """Applies a launched step's tokens: verification, stops, the proposer's feedback, outputs."""
        t0 = time.perf_counter()
        sampled, out = launched.sampled, launched.out
        result = sampled.result() if sampled is not None else None
        self._forward_time += time.perf_counter() - t0
        behind = self._launched
        if sampled is not None and sampled.changed and behind is not None:
            # The step queued behind this one fed these rows' sequences their tokens (or moved
            # their rows by drafts accepted) before a redraw or a JSON constraint changed them
            # (of those it fed: one that prev's token ended by length was left out).
            owners = [s.seq.seq_id for s in out.scheduled if s.samples for _ in range(len(s.draft) + 1)]
            fed = {s.seq.seq_id for s in behind.out.scheduled[:behind.out.fed]}
            behind.dropped.update(owners[i] for i in sampled.changed if owners[i] in fed)
        if behind is not None and launched.drafts:  # queued after this step's drafts: its rows moved by them
            updates = self.scheduler.postprocess(out, result, frozenset(launched.dropped), behind.out,
                                                 frozenset(behind.dropped))
        elif launched.dropped:
            updates = self.scheduler.postprocess(out, result, frozenset(launched.dropped))
        else:
            updates = self.scheduler.postprocess(out, result)
        if not out.scheduled and not updates and self.scheduler.has_work:
            raise RuntimeError("no sequence could be scheduled although some wait: a bug in the scheduler")
        generated = self._generated
        self._account(updates, launched.drafts)
        outputs = self._outputs(updates, collect)
        # A step queued ahead ran beside the host's work on the step before it: what it costs is
        # the time from that step's end to its own (what the step after a drafting step forgoes).
        now = time.perf_counter()
        if updates:  # (a step queued ahead of sequences that all ended meanwhile ran for nothing)
            self._observe(out, launched, now - (self._finished_at if launched.ahead else launched.start))
            if self.proposer is not None and self.runner.paths.overlap and self._finished_at:
                self._after_drafts.observe(len(out.scheduled), self._generated - generated, now - self._finished_at)
        self._finished_at, self._drafted_last = now, bool(launched.drafts)
        if not self.requests:
            self.step_cost.flush()  # idle: the next run (or request) starts from what this one learned
        return outputs

    def _observe(self, out: SchedulerOutput, launched: _Launched, seconds: float) -> None:
        """The step's time through the step timer (a simulated device reads it off a table), and
        what it teaches the step cost: decode and verify steps only (a prefill chunk's rows cost
        differently from draft rows), and none that captured a CUDA graph first. With overlapped
        steps, what a plain step costs is what one queued ahead costs: a plain step run otherwise
        (after a drafting step) is kept apart, as what the overlap a draft forgoes is worth
        (StepCost.forgone); drafting is weighed against queued ones."""
        if not out.scheduled or launched.captured:
            return
        seqs, rows = len(out.scheduled), out.num_tokens
        seconds = self.step_timer(seqs, rows, seconds)  # (every step: a simulated clock sums them)
        if not all(s.num_real == 1 for s in out.scheduled):
            return
        if rows == seqs and self.runner.paths.overlap and not launched.ahead:
            self.step_cost.observe_sync(seqs, seconds)
            if self._drafted_last is not False:
                return
            # After a plain step it was not queued ahead either (a client owed a slot, blocks
            # short, a row dropped for a token it was fed wrongly): where that lasts, no plain
            # step is, and drafting is weighed against these (else against none: it never drafts).
        if rows > seqs and launched.ahead and self._launched is None:
            # Kept as a drafting step the engine waited on: what it forgoes is the overlap of the
            # step after it, which was not queued ahead; drafting steps planned after their
            # tokens (one after another) cost the same, that overlap within their own time.
            seconds += self.step_cost.forgone(seqs)
        self.step_cost.observe(seqs, rows - seqs, seconds)

    def _sampling_rows(self, out: SchedulerOutput, tails: dict[int, DeviceHistory] | None = None
                       ) -> list[SamplingRow]:
        """The rows to sample, in order: for each sequence that reaches its end, one per draft
        prefix (the verification rows) and one after the whole draft. `tails`: by index in the
        step, the tokens penalized sequences got from the step before, on the device only (the
        first out.fed sequences of a step queued ahead follow such tokens)."""
        rows: list[SamplingRow] = []
        logits_row = 0
        for i, s in enumerate(out.scheduled):
            if not s.samples:
                continue
            seq, p = s.seq, s.seq.params
            # Its position from the step's (a step queued ahead feeds a token not yet in the output).
            position = s.start + s.num_real - len(seq.prompt_token_ids)
            if s.draft or p.row_by_row:
                rows += self._seq_rows(seq, logits_row, s.draft, position, tails.get(i) if tails else None,
                                       i < out.fed)
                logits_row += len(s.draft) + 1
                continue
            # One row without history (most rows of most steps), built as a plain tuple: a
            # NamedTuple's own __new__ is a Python call per row.
            forced = None if p.replay_token_ids is None else self._forced(seq, position)
            rows.append(_new_tuple(SamplingRow, (logits_row, p, seq.noise_key, position, (),
                                                 len(seq.prompt_token_ids), forced, None)))
            logits_row += 1
        return rows

    def _seq_rows(self, seq: Sequence, logits_row: int, draft: tuple[int, ...], position: int,
                  tail: DeviceHistory | None = None, late: bool = False) -> list[SamplingRow]:
        """One sequence's rows: row j picks the token after the first j draft tokens, the output's
        `position` + j-th (`late`: after tokens of the step before that the host does not have
        yet; `tail`: those, on the device, where a penalized row's history ends in them)."""
        p = seq.params
        prompt_len = len(seq.prompt_token_ids)
        count = len(draft) + 1
        if not p.row_by_row and p.replay_token_ids is None:  # a draft's rows, nothing else: plain tuples
            key = seq.noise_key
            return [_new_tuple(SamplingRow, (logits_row + j, p, key, position + j, (), prompt_len, None, None))
                    for j in range(count)]
        forced = [self._forced(seq, i) for i in range(position, position + count)]
        states = self._json_states(seq, draft, late)
        if not p.needs_penalties:
            key = seq.noise_key
            return [_new_tuple(SamplingRow, (logits_row + j, p, key, position + j, (), prompt_len, forced[j],
                                             states[j])) for j in range(count)]
        history = seq.prompt_token_ids + seq.output_token_ids
        if tail is None:
            histories = [history + list(draft[:j]) for j in range(count)]
        else:
            device, known = tail.tokens.device, len(history) + len(tail.tokens)
            tokens = torch.cat([on_device(torch.tensor(history, dtype=torch.long), device), tail.tokens.long(),
                                on_device(torch.tensor(draft, dtype=torch.long), device)])
            weights = torch.cat([torch.ones(len(history), device=device), tail.weights,
                                 torch.ones(len(draft), device=device)])
            histories = [DeviceHistory(tokens[:known + j], weights[:known + j]) for j in range(count)]
        return [SamplingRow(logits_row + j, p, seq.noise_key, position + j, histories[j], prompt_len,
                            forced[j], states[j]) for j in range(count)]

    def _json_states(self, seq: Sequence, draft: tuple[int, ...], late: bool = False) -> list:
        """A json_object sequence's state before each of its rows: after its output, then after
        each draft prefix (None for every row of a sequence without the constraint). `late`: its
        output lacks the step before's tokens: each state is read when its row is read back, by
        then after them (LateState)."""
        state = seq.json_state
        if state is None:
            return [None] * (len(draft) + 1)
        if late:
            return [LateState(functools.partial(self._json_after, seq, draft[:j])) for j in range(len(draft) + 1)]
        states = [state]
        for token in draft:
            state = self.sampler.json_tokens.after(state, token)
            states.append(state)
        return states

    def _json_after(self, seq: Sequence, tokens: tuple[int, ...]):
        """LateState's read: the sequence's state after its output and `tokens`, and the output
        position of the row after them; None once it ended."""
        if seq.is_finished:
            return None
        state, after = seq.json_state, self.sampler.json_tokens.after
        for token in tokens:
            state = after(state, token)
        return state, len(seq.output_token_ids) + len(tokens)

    def _forced(self, seq: Sequence, position: int) -> int | None:
        """Trace replay: the recorded token at this output position (EOS past its end); else None."""
        replay = seq.params.replay_token_ids
        if replay is None:
            return None
        tokens = replay[seq.sample_index]
        return tokens[position] if position < len(tokens) else self.eos_id

    def _account(self, updates: list[SeqUpdate], in_flight: dict[int, tuple[Draft, bool]]) -> None:
        """Counters, and what the proposer learns from the step (`in_flight`: the drafts it
        verified, as proposed, by sequence id, and whether each was found ahead)."""
        proposer = self.proposer
        generated = 0
        for update in updates:
            seq, new_tokens = update.seq, update.new_tokens
            generated += len(new_tokens)
            if seq.json_state is not None:
                after = self.sampler.json_tokens.after
                for token in new_tokens:
                    seq.json_state = after(seq.json_state, token)
            spec = seq.spec
            if new_tokens:
                spec.decode_steps += 1
            if update.draft:
                proposed, ahead = in_flight.get(seq.seq_id, (None, False))
                source = proposed.source if proposed is not None else "self"
                spec.verify_steps += 1
                spec.drafted[source] = spec.drafted.get(source, 0) + len(update.draft)
                spec.accepted[source] = spec.accepted.get(source, 0) + update.accepted
                if proposer is not None and ahead:  # as proposed: from the token it expected before it
                    self._record_ahead(seq, update, proposed)
                elif proposer is not None:
                    if proposed is None or proposed.tokens is not update.draft:  # cut short by the scheduler
                        proposed = Draft(update.draft, source)
                    proposer.record(seq.seq_id, proposed, update.accepted)
            if seq.is_finished:
                self._retired(seq, aborted=False)
        self._generated += generated

    def _record_ahead(self, seq: Sequence, update: SeqUpdate, found: Draft) -> None:
        """How a draft found ahead fared, as the proposer proposed it: the token it began with
        (the one the step before sampled) then what was verified after it; nothing of it where
        that first token was not the sequence's."""
        n = len(update.draft) + 1
        proposed = found if len(found.tokens) == n else Draft(found.tokens[:n], found.source)
        before = seq.output_token_ids[len(seq.output_token_ids) - len(update.new_tokens) - 1]
        self.proposer.record(seq.seq_id, proposed, 1 + update.accepted if before == found.tokens[0] else 0)

    def _retired(self, seq: Sequence, aborted: bool) -> None:
        self._spec.add(seq.spec)
        if self.proposer is not None:
            self.proposer.finish(seq.seq_id, aborted=aborted)

    # ------------------------------------------------------------------ drafting
    def _propose(self) -> dict[int, Draft]:
        if self.proposer is None:
            return {}
        budget = max(0, self.config.max_num_batched_tokens - len(self.scheduler.running))
        seqs = self.scheduler.decoding()
        max_model_len = self.max_model_len
        queries = DraftQueries([seq.seq_id for seq in seqs], lambda i: _room(seqs[i], max_model_len))
        drafts = self.proposer.propose(queries, budget, self.step_cost)
        return {seq.seq_id: draft for seq, draft in zip(seqs, drafts) if draft.tokens}

    # ------------------------------------------------------------------ outputs
    def _outputs(self, updates: list[SeqUpdate], collect: str) -> list[RequestOutput]:
        touched: dict[str, bool] = {}  # request id -> whether one of its samples ended in this step
        for update in updates:
            seq = update.seq
            state = self.requests.get(seq.request_id)
            if state is not None:
                state.changed.add(seq.sample_index)
                touched[seq.request_id] = touched.get(seq.request_id, False) or seq.is_finished
        outputs = []
        for request_id, ended_one in touched.items():
            state = self.requests[request_id]
            finished = ended_one and state.finished  # a request finishes in the step its last sample ends
            if finished:
                state.finish_time = time.monotonic()
                del self.requests[request_id]
            if finished or collect == "all":
                outputs.append(self.request_output(state, finished))
        return outputs

    @staticmethod
    def request_output(state: RequestState, finished: bool) -> RequestOutput:
        """The request's output now: the samples that changed since the last one are built anew,
        the others handed out again (outputs are never modified once handed out)."""
        for i in state.changed:
            seq = state.seqs[i]
            state.completions[i] = _completion(seq)
            t = seq.first_token_time
            if t is not None and (state.first_token_time is None or t < state.first_token_time):
                state.first_token_time = t
        state.changed.clear()
        return RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, list(state.completions),
                             finished, state.arrival_time, state.first_token_time, state.finish_time,
                             state.seqs[0].cached_prompt_tokens or 0)

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_blocks_total=self.block_manager.num_blocks, num_blocks_free=self.block_manager.num_free,
            num_running=len(s.running), num_waiting=s.num_waiting, steps=self._steps,
            generated_tokens=self._generated, forward_time=self._forward_time, propose_time=self._propose_time,
            preemptions=s.num_preemptions, spec=self._spec, prompt_tokens_computed=s.num_prompt_tokens_computed,
            tokens_cached=self.block_manager.hit_tokens,
            cuda_graphs=self.runner.graphs.summary() if self.runner.graphs is not None else None,
            overlapped_steps=self._ahead_steps)


_new_tuple = tuple.__new__


def _accepted(tokens: torch.Tensor, drafted: list[tuple[int, ScheduledSeq]]) -> torch.Tensor:
    """On the device, how many of each drafted sequence's draft tokens its sampled `tokens`
    accept (the longest agreeing prefix, as Scheduler.postprocess finds it on the host); `drafted`:
    each sequence's first sampling row and what the step fed it (its draft)."""
    device = tokens.device
    width = max(len(s.draft) for _, s in drafted)
    rows = [[first + min(j, len(s.draft) - 1) for j in range(width)] for first, s in drafted]
    wanted = [[*s.draft, *(-1,) * (width - len(s.draft))] for _, s in drafted]
    sampled = tokens[on_device(torch.tensor(rows, dtype=torch.long), device)]
    agree = sampled == on_device(torch.tensor(wanted, dtype=torch.long), device)
    return agree.long().cumprod(1).sum(1)


def _device_tails(fed: list[ScheduledSeq], tokens: torch.Tensor, sampled_at: dict[Sequence, tuple[int, ScheduledSeq]],
                  ids: torch.Tensor | None, shift: Shift | None) -> dict[int, DeviceHistory] | None:
    """By index in a step queued ahead, the tokens each penalized sequence it feeds got from
    the step in flight (`tokens`, that step's sampled rows), on the device: the token fed
    (`ids`), or after a draft that step's rows of it, counted as far as it accepts (`shift`:
    its draft's sequences and what each accepts). The rows' penalties read them there."""
    if not any(s.seq.params.row_by_row for s in fed):  # (row_by_row: a flag; needs_penalties: a property)
        return None
    moved = dict(zip(shift.seqs, range(len(shift.seqs)))) if shift is not None else {}
    tails = {}
    for i, s in enumerate(fed):
        if not s.seq.params.needs_penalties:
            continue
        k = moved.get(i)
        if k is None:
            tails[i] = DeviceHistory(ids[i:i + 1], torch.ones(1, device=tokens.device))
            continue
        first, before = sampled_at[s.seq]
        n = len(before.draft) + 1
        counted = torch.arange(n, device=tokens.device) <= shift.by[k]
        tails[i] = DeviceHistory(tokens[first:first + n], counted.float())
    return tails


def _room(seq: Sequence, max_model_len: int) -> int:
    """Draft tokens the sequence may carry: those before max_tokens and the context's end leave
    room for the token after the draft; none where its request turned drafting off."""
    p = seq.params
    if p.speculate is False:
        return 0
    generated = len(seq.output_token_ids)
    return max(0, min(p.max_tokens - generated, max_model_len - len(seq.prompt_token_ids) - generated) - 1)


def _completion(seq: Sequence) -> CompletionOutput:
    p = seq.params
    text = _shown_text(seq) if (p.stop or p.stop_at_dedent) and not seq.is_finished else seq.text
    return CompletionOutput(seq.sample_index, text, Prefix(seq.output_token_ids), seq.finish_reason,
                            Prefix(seq.logprobs) if p.logprobs else None, seq.stop_reason, seq.spec,
                            Prefix(seq.top_logprobs) if p.top_logprobs else None)


def _shown_text(seq: Sequence) -> str:
    """The text of an unfinished sequence that a stream may show: without what could still become
    a stop string, nor a trailing blank line that could still turn out dedented (stop_at_dedent)."""
    text, p = seq.text, seq.params
    end = len(text)
    if p.stop:
        end = max(0, end - compiled_stops(p.stop)[1] + 1)
    if p.stop_at_dedent:
        line = undecided_line_start(text)
        if line is not None:
            end = min(end, line)
    return text[:end]
