"""Continuous batching under a per-step token budget.

Every sequence has `num_tokens` and `num_computed_tokens`; each step closes part
of that gap: one token per decoding sequence plus its draft, then chunks of
prefill. Requests join and leave at step boundaries. When blocks run out, the
most recently admitted sequence is preempted and later recomputed from its
tokens, which leaves its output unchanged. A sample that joins after its request
started (no room when the siblings were forked, or preempted since) takes the
full prompt blocks its request keeps, and a copy of the prompt's last partly
filled block (or a running sibling's full blocks), instead of computing them
again.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager, NoFreeBlocks
from engine.proposer import EMPTY_DRAFT
from engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    stagger: int = 0  # EngineConfig.stagger_samples


@dataclass
class ScheduledSeq:
    seq: Sequence
    start: int  # position of the first token fed
    token_ids: list[int]  # real tokens then draft tokens
    draft: tuple[int, ...]

    @property
    def num_real(self) -> int:
        return len(self.token_ids) - len(self.draft)

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the sequence's known tokens."""
        return self.start + self.num_real == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.scheduled)


@dataclass
class PromptPin:
    """What a request keeps of its prompt's cache for samples that join later: the full blocks
    (shared) and a copy of the partly filled last block (copied again for each sample)."""

    blocks: list[int]
    tail: int | None

    @property
    def held(self) -> list[int]:
        return self.blocks + ([self.tail] if self.tail is not None else [])


class Scheduler:
    def __init__(self, limits: SchedulerLimits, block_manager: BlockManager) -> None:
        self.limits = limits
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._copies: list[tuple[int, int]] = []
        self.num_preemptions = 0
        self.num_shared_prompt_tokens = 0  # prompt tokens not computed again: taken from a sibling
        self._prompt_pins: dict[str, PromptPin] = {}
        # Keep a little headroom so that admitting a prompt does not force an immediate preemption.
        self._watermark = max(1, block_manager.num_blocks // 100)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        plan, drafts = self._plan_running()
        preempted = self._allocate_running(plan, drafts)
        budget = self.limits.max_num_batched_tokens - sum(plan.values()) - sum(len(d) for d in drafts.values())
        if not preempted:
            self._admit_waiting(plan, budget)
        scheduled = []
        for seq in self.running:
            if seq in plan:
                draft = drafts.get(seq, ())
                start = seq.num_computed_tokens
                tokens = seq.token_slice(start, start + plan[seq]) + list(draft)
                scheduled.append(ScheduledSeq(seq, start, tokens, draft))
        copies, self._copies = self._copies, []
        return SchedulerOutput(scheduled, copies, preempted)

    def _plan_running(self) -> tuple[dict[Sequence, int], dict[Sequence, tuple[int, ...]]]:
        budget = self.limits.max_num_batched_tokens
        plan: dict[Sequence, int] = {}
        drafts: dict[Sequence, tuple[int, ...]] = {}
        decoding = [s for s in self.running if not s.is_prefilling]
        for seq in decoding:
            plan[seq] = 1
        budget -= len(decoding)
        for seq in decoding:
            room = self.limits.max_model_len - seq.num_tokens
            d = min(len(seq.draft), budget, max(0, room))
            if d:
                drafts[seq] = seq.draft.tokens[:d]
                budget -= d
        for seq in self.running:
            if seq.is_prefilling and budget > 0:
                plan[seq] = min(seq.num_tokens - seq.num_computed_tokens, budget)
                budget -= plan[seq]
        return plan, drafts

    def _allocate_running(self, plan: dict[Sequence, int], drafts: dict[Sequence, tuple[int, ...]]) -> int:
        preempted = 0
        for seq in list(self.running):
            if seq not in plan or seq.status is not SequenceStatus.RUNNING:
                continue
            need = seq.num_computed_tokens + plan[seq] + len(drafts.get(seq, ()))
            while not self.blocks.can_hold(seq, need):
                victim = self.running[-1]
                self.preempt(victim)
                plan.pop(victim, None)
                drafts.pop(victim, None)
                preempted += 1
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.blocks.allocate(seq, need)
        return preempted

    def _admit_waiting(self, plan: dict[Sequence, int], budget: int) -> None:
        running = Counter(s.request_id for s in self.running) if self.limits.stagger else None
        while self.waiting and budget > 0:
            i = self._next_waiting(running)
            seq = self.waiting[i]
            if self.running and len(self.running) >= self.limits.max_num_seqs:
                break
            # Siblings forked once the prompt is in take a tail block each; those with no room then
            # wait, and start from the prompt's blocks later (see fork).
            siblings = max(0, seq.params.n - 1) if seq.sample_index == 0 and not seq.output_token_ids else 0
            siblings = min(siblings, self.limits.max_num_seqs - len(self.running) - 1, self._fork_room(0))
            shared, tail = self._shared_prompt(seq)
            start = seq.num_computed_tokens
            if shared or tail is not None:
                start = seq.num_prompt_tokens if tail is not None else len(shared) * self.blocks.block_size
            chunk = min(seq.num_tokens - start, budget)
            reserve = siblings + (self._watermark if self.running else 0)
            held = len(shared) if shared else len(seq.block_table)
            if self.blocks.blocks_for(start + chunk) - held + reserve > self.blocks.num_free:
                break
            del self.waiting[i]
            if running is not None:
                running[seq.request_id] += 1
            if shared or tail is not None:
                self.blocks.share(shared, seq)
                if tail is not None:
                    dst = self.blocks.new_block()
                    seq.block_table.append(dst)
                    self._copies.append((tail, dst))
                seq.num_computed_tokens = start
                self.num_shared_prompt_tokens += start
            self.blocks.allocate(seq, seq.num_computed_tokens + chunk)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            plan[seq] = chunk
            budget -= chunk

    def _next_waiting(self, running: Counter | None) -> int:
        """The next sequence to admit: the first in line; with stagger, the first whose request
        runs fewer than `stagger` samples, or the first in line when none does (a slot is never
        left empty to keep samples apart)."""
        if running is None:
            return 0
        cap = self.limits.stagger
        for i, seq in enumerate(self.waiting):
            if running[seq.request_id] < cap:
                return i
        return 0

    def _fork_room(self, others: int) -> int:
        """How many more samples of a request may start beside one of its samples and `others`
        more that already run (no limit without stagger)."""
        cap = self.limits.stagger
        return max(0, cap - 1 - others) if cap else self.limits.max_num_seqs

    def _shared_prompt(self, seq: Sequence) -> tuple[list[int], int | None]:
        """The full blocks of the sequence's prompt, and the request's copy of its last partly
        filled block, when the request still holds them (pinned at fork time; or a running
        sibling's full blocks): a sample that could not be forked when its request started (no
        room then) or was preempted since starts from them instead of computing its prompt
        again. ([], None) when none are held."""
        # At least the last known token is computed: its logits give the next one.
        full = min(seq.num_prompt_tokens, seq.num_tokens - 1) // self.blocks.block_size
        if seq.num_computed_tokens or seq.block_table:
            return [], None
        pin = self._prompt_pins.get(seq.request_id)
        if pin is not None:
            whole = seq.num_tokens > seq.num_prompt_tokens and pin.tail is not None
            return pin.blocks[:full], pin.tail if whole else None
        if full <= 0:
            return [], None
        for other in self.running:
            if (other.request_id == seq.request_id and other.status is SequenceStatus.RUNNING
                    and other.num_computed_tokens >= full * self.blocks.block_size):
                return other.block_table[:full], None
        return [], None

    def release_prompt(self, request_id: str) -> None:
        """The request is done: its pinned prompt blocks go back (see fork)."""
        pin = self._prompt_pins.pop(request_id, None)
        if pin is not None:
            self.blocks.release(pin.held)

    def preempt(self, seq: Sequence) -> None:
        """Frees the sequence's cache; it will be recomputed from its tokens."""
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.draft = EMPTY_DRAFT
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def commit(self, seq: Sequence, num_computed: int) -> None:
        """After a step: `num_computed` tokens have valid K/V; blocks past the next token are freed."""
        seq.num_computed_tokens = num_computed
        self.blocks.truncate(seq, seq.num_tokens)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Starts a sibling sample that shares the parent's prompt blocks."""
        siblings = sum(s.request_id == parent.request_id for s in self.running) if self.limits.stagger else 0
        if len(self.running) < self.limits.max_num_seqs and self._fork_room(siblings - 1) > 0:
            try:
                copy = self.blocks.fork(parent, child, parent.num_prompt_tokens)
            except NoFreeBlocks:
                copy = False
            if copy is not False:
                if copy is not None:
                    self._copies.append(copy)
                child.num_computed_tokens = parent.num_prompt_tokens
                child.status = SequenceStatus.RUNNING
                self.running.append(child)
                return
        # No room now (or stagger holds it back): it waits, and the request keeps the prompt's
        # cache until it is done so that the child starts from it, whenever it joins.
        if parent.request_id not in self._prompt_pins:
            self._pin_prompt(parent)
        child.status = SequenceStatus.WAITING
        i = 0  # ahead of requests that have not started, so that started ones finish first
        while i < len(self.waiting) and not self._fresh(self.waiting[i]):
            i += 1
        self.waiting.insert(i, child)

    def _pin_prompt(self, parent: Sequence) -> None:
        """Keeps the prompt's full blocks, and a copy of its partly filled last block when one is
        free (the copy is made before the next forward, before the parent writes past its prompt)."""
        full, partial = divmod(parent.num_prompt_tokens, self.blocks.block_size)
        blocks = parent.block_table[:full]
        self.blocks.hold(blocks)
        tail = None
        if partial and self.blocks.num_free > self._watermark:
            tail = self.blocks.new_block()
            self._copies.append((parent.block_table[full], tail))
        self._prompt_pins[parent.request_id] = PromptPin(blocks, tail)

    @staticmethod
    def _fresh(seq: Sequence) -> bool:
        return seq.sample_index == 0 and not seq.output_token_ids and seq.num_computed_tokens == 0

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
