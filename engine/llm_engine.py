"""The engine loop: add requests, step, collect outputs.

One step: schedule -> forward -> sample and verify drafts -> append accepted
tokens (stops, limits) -> commit or roll back the KV cache -> ask the proposer
for the next drafts.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.block_manager import BlockManager
from engine.config import EngineConfig, ModelConfig
from engine.model_runner import ModelRunner
from engine.models.llama import LlamaForCausalLM
from engine.outputs import CompletionOutput, RequestOutput, SpecStats
from engine.proposer import EMPTY_DRAFT, Draft, DraftQuery, Proposer
from engine.rejection_sampler import accepted_length
from engine.sampler import Sampler, SamplingRow, sample_key
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSeq, Scheduler, SchedulerLimits, SchedulerOutput
from engine.sequence import Sequence, SequenceStatus
from engine.tokenizer import IncrementalDetokenizer, Tokenizer

if TYPE_CHECKING:
    from engine.cost_model import StepCostPoints


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    arrival_time: float
    pending_children: list[Sequence] = field(default_factory=list)
    finish_time: float | None = None
    client: str | None = None  # who asked (an API key, a peer address): the scheduler shares slots fairly by it

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
    spec: SpecStats
    shared_prompt_tokens: int = 0  # prompt tokens a late sample took from a sibling instead of computing


class LLMEngine:
    def __init__(self, config: EngineConfig, proposer: Proposer | None = None,
                 model: LlamaForCausalLM | None = None, tokenizer: Tokenizer | None = None) -> None:
        self.config = config
        self.model_config = model.config if model is not None else ModelConfig.from_folder(config.model)
        self.tokenizer = tokenizer or Tokenizer(config.model)
        mc = self.model_config
        self.max_model_len = min(config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        self.runner = ModelRunner(config, mc, model)
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size)
        limits = SchedulerLimits(config.max_num_seqs, config.max_num_batched_tokens, self.max_model_len,
                                 0)
        self.scheduler = Scheduler(limits, self.block_manager)
        self.eos_id = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else mc.eos_token_id
        self.sampler = Sampler(self.eos_id)
        self.proposer = proposer
        self._drafts_wanted = getattr(proposer, "active", None) or (lambda num_running, budget: True)
        if proposer is not None and getattr(proposer, "wants_measured_cost", False):
            proposer.set_cost_curve(self.measure_step_cost())
        self.requests: dict[str, RequestState] = {}
        self._next_seq_id = 0
        self._steps = 0
        self._generated = 0
        self._forward_time = 0.0
        self._propose_time = 0.0
        self._spec = SpecStats()

    def measure_step_cost(self) -> "StepCostPoints":
        """Decode and verify step costs on this machine; see engine/cost_model.py."""
        from engine.cost_model import measure_step_cost

        limit = min(self.config.max_num_batched_tokens, self.block_manager.num_blocks * self.config.block_size)
        return measure_step_cost(self.runner, self.sampler, limit)

    # ------------------------------------------------------------------ requests
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None, client: str | None = None) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        text, ids = self._prompt_ids(prompt)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; the model's context is {self.max_model_len} tokens")
        if self.block_manager.blocks_for(len(ids) + 1) > self.block_manager.num_blocks:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit in the KV cache")
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        seqs = []
        for i in range(params.n):
            seq = Sequence(self._next_seq_id, request_id, i, ids, params, sample_key(seed, i))
            self._next_seq_id += 1
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, ids)
            seqs.append(seq)
            if self.proposer is not None:
                self.proposer.add_sequence(seq.seq_id, request_id, ids)
        state = RequestState(request_id, text, ids, params, seqs, arrival_time or time.monotonic(), client=client)
        for child in seqs[1:]:
            child.status = SequenceStatus.PENDING
            state.pending_children.append(child)
        self.requests[request_id] = state
        self.scheduler.add(seqs[0])

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

    def abort(self, request_id: str) -> bool:
        state = self.requests.pop(request_id, None)
        if state is None:
            return False
        for seq in state.seqs:
            if not seq.is_finished:
                self._finish(seq, "abort", aborted=True)
        self.scheduler.release_prompt(request_id)
        state.finish_time = time.monotonic()
        return True

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ------------------------------------------------------------------ the step
    def step(self, collect: str = "all") -> list[RequestOutput]:
        """One engine step. `collect`: 'all' returns every request that changed, 'finished' only those done."""
        out = self.scheduler.schedule()
        if not out.scheduled:
            if self.scheduler.has_work:
                raise RuntimeError("no sequence could be scheduled: the KV cache is too small for a single sequence")
            return []
        t0 = time.perf_counter()
        logits = self.runner.execute(out)
        rows, owners = self._sampling_rows(out)
        result = self.sampler(logits, rows) if rows else None
        self._forward_time += time.perf_counter() - t0
        self._steps += 1
        touched = self._postprocess(out, owners, result)
        t1 = time.perf_counter()
        self._propose()
        self._propose_time += time.perf_counter() - t1
        return self._outputs(touched, collect)

    def _sampling_rows(self, out: SchedulerOutput) -> tuple[list[SamplingRow], list[tuple[Sequence, int, int]]]:
        """Rows to sample and, per sampled sequence, (seq, first row, row count)."""
        rows: list[SamplingRow] = []
        owners: list[tuple[Sequence, int, int]] = []
        logits_row = 0
        for s in out.scheduled:
            if not s.samples:
                continue
            seq, first = s.seq, len(rows)
            for j in range(len(s.draft) + 1):
                rows.append(self._row(seq, logits_row + j, s.draft[:j]))
            owners.append((seq, first, len(s.draft) + 1))
            state = self.requests[seq.request_id]
            if seq.sample_index == 0 and state.pending_children:
                for child in state.pending_children:  # siblings draw their first token from the same logits
                    owners.append((child, len(rows), 1))
                    rows.append(self._row(child, logits_row, ()))
            logits_row += len(s.draft) + 1
        return rows, owners

    def _row(self, seq: Sequence, logits_row: int, draft_prefix: tuple[int, ...]) -> SamplingRow:
        p = seq.params
        position = seq.num_output_tokens + len(draft_prefix)
        history: tuple[int, ...] | list[int] = ()
        if p.needs_penalties:
            history = seq.prompt_token_ids + seq.output_token_ids + list(draft_prefix)
        forced = None
        if p.replay_token_ids is not None:
            replay = p.replay_token_ids[seq.sample_index]
            forced = replay[position] if position < len(replay) else self.eos_id
        return SamplingRow(logits_row, p, seq.noise_key, position, history, seq.num_prompt_tokens, forced)

    def _postprocess(self, out: SchedulerOutput, owners, result) -> set[str]:
        touched: set[str] = set()
        by_seq = {s.seq: s for s in out.scheduled}
        for s in out.scheduled:
            if not s.samples:
                self.scheduler.commit(s.seq, s.start + len(s.token_ids))
                continue
            self._fork_children(s.seq)
        for seq, first, count in owners:
            tokens = result.tokens[first:first + count]
            logprobs = result.logprobs[first:first + count] if result.logprobs else None
            self._accept(seq, tokens, logprobs, by_seq.get(seq))
            touched.add(seq.request_id)
        return touched

    def _fork_children(self, parent: Sequence) -> None:
        state = self.requests[parent.request_id]
        if parent.sample_index != 0 or not state.pending_children:
            return
        for child in state.pending_children:
            self.scheduler.fork(parent, child)
        state.pending_children = []

    def _accept(self, seq: Sequence, tokens: list[int], logprobs, sched: ScheduledSeq | None) -> None:
        draft = sched.draft if sched is not None else ()
        m = accepted_length(tokens, draft)
        if draft:
            self._record_draft(seq, Draft(draft, seq.draft.source), m)
        if sched is not None:
            seq.num_computed_tokens = sched.start + sched.num_real + m
        seq.spec.decode_steps += 1
        before = seq.num_output_tokens
        for j, token in enumerate(tokens[: m + 1]):
            self._append_token(seq, token, logprobs[j] if logprobs else None)
            if seq.is_finished:
                break
        self._generated += seq.num_output_tokens - before
        if self.proposer is not None:
            self.proposer.extend(seq.seq_id, seq.output_token_ids[before:])
        if seq.is_finished:
            self._finish(seq, seq.finish_reason, stop_reason=seq.stop_reason)
            return
        if seq.status is SequenceStatus.RUNNING:
            self.block_manager.truncate(seq, seq.num_tokens)

    def _record_draft(self, seq: Sequence, draft: Draft, accepted: int) -> None:
        seq.spec.verify_steps += 1
        seq.spec.drafted[draft.source] = seq.spec.drafted.get(draft.source, 0) + len(draft)
        seq.spec.accepted[draft.source] = seq.spec.accepted.get(draft.source, 0) + accepted
        if self.proposer is not None:
            self.proposer.record(seq.seq_id, draft, accepted)
        seq.draft = EMPTY_DRAFT

    def _append_token(self, seq: Sequence, token: int, logprob: float | None) -> None:
        p = seq.params
        seq.output_token_ids.append(token)
        seq.mark_first_token()
        if logprob is not None:
            seq.logprobs.append(logprob)
        is_eos = token == self.eos_id and not p.ignore_eos
        if is_eos or token in p.stop_token_ids:
            seq.text += seq.detokenizer.flush()
            seq.finish("stop", token)
            return
        piece = seq.detokenizer.add(token)
        if piece:
            seq.text += piece
            if p.stop and self._check_stop_strings(seq, len(piece)):
                return
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.text += seq.detokenizer.flush()
            seq.finish("length")

    @staticmethod
    def _check_stop_strings(seq: Sequence, piece_len: int) -> bool:
        longest = max(len(s) for s in seq.params.stop)
        start = max(0, len(seq.text) - piece_len - longest + 1)
        hits = [(idx, s) for s in seq.params.stop if (idx := seq.text.find(s, start)) >= 0]
        if not hits:
            return False
        idx, stop = min(hits)
        seq.text = seq.text[:idx]
        seq.finish("stop", stop)
        return True

    def _finish(self, seq: Sequence, reason: str, stop_reason=None, aborted: bool = False) -> None:
        if seq.status is not SequenceStatus.PENDING:
            self.scheduler.finish(seq)
        seq.finish(reason, stop_reason)
        state = self.requests.get(seq.request_id)
        if state is not None and state.finished:
            self.scheduler.release_prompt(seq.request_id)
        self._spec.add(seq.spec)
        if self.proposer is not None:
            self.proposer.finish(seq.seq_id, aborted=aborted)

    # ------------------------------------------------------------------ drafting
    def _propose(self) -> None:
        if self.proposer is None:
            return
        running = self.scheduler.running
        budget = max(0, self.config.max_num_batched_tokens - len(running))
        if not self._drafts_wanted(len(running), budget):
            return
        queries, seqs = [], []
        for seq in running:
            if seq.is_prefilling or seq.params.speculate is False:
                continue
            room = min(seq.params.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
            if room > 0:
                queries.append(DraftQuery(seq.seq_id, room))
                seqs.append(seq)
        drafts = self.proposer.propose(queries, budget)
        for seq, draft in zip(seqs, drafts):
            seq.draft = draft

    # ------------------------------------------------------------------ outputs
    def _outputs(self, touched: set[str], collect: str) -> list[RequestOutput]:
        outputs = []
        for request_id in touched:
            state = self.requests.get(request_id)
            if state is None:
                continue
            finished = state.finished
            if finished:
                state.finish_time = time.monotonic()
                del self.requests[request_id]
            if finished or collect == "all":
                outputs.append(self.request_output(state))
        return outputs

    def request_output(self, state: RequestState) -> RequestOutput:
        completions = []
        for seq in state.seqs:
            text = seq.text
            if not seq.is_finished and seq.params.stop:
                # Hold back what could still become a stop string, so a stream never shows it.
                text = text[: max(0, len(text) - max(len(s) for s in seq.params.stop) + 1)]
            completions.append(CompletionOutput(
                index=seq.sample_index, text=text, token_ids=list(seq.output_token_ids),
                finish_reason=seq.finish_reason, logprobs=list(seq.logprobs) if seq.params.logprobs else None,
                stop_reason=seq.stop_reason, spec=seq.spec))
        firsts = [s.first_token_time for s in state.seqs if s.first_token_time is not None]
        return RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, completions,
                             state.finished, state.arrival_time, min(firsts) if firsts else None, state.finish_time)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_blocks_total=self.block_manager.num_blocks, num_blocks_free=self.block_manager.num_free,
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            steps=self._steps, generated_tokens=self._generated, forward_time=self._forward_time,
            propose_time=self._propose_time, preemptions=self.scheduler.num_preemptions, spec=self._spec,
            shared_prompt_tokens=self.scheduler.num_shared_prompt_tokens)
