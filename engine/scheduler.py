"""Continuous batching under a per-step token budget.

Every sequence has `num_tokens` and `num_computed_tokens`; each step closes part
of that gap: one token per decoding sequence plus its draft, then chunks of
prefill. Requests join and leave at step boundaries. When blocks run out, the
most recently admitted sequence is preempted and later recomputed from its
tokens, which leaves its output unchanged.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager, NoFreeBlocks
from engine.proposer import EMPTY_DRAFT
from engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


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


class Scheduler:
    def __init__(self, limits: SchedulerLimits, block_manager: BlockManager) -> None:
        self.limits = limits
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._copies: list[tuple[int, int]] = []
        self.num_preemptions = 0
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
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            siblings = max(0, seq.params.n - 1) if seq.sample_index == 0 and not seq.output_token_ids else 0
            if self.running and len(self.running) + 1 + siblings > self.limits.max_num_seqs:
                break
            chunk = min(seq.num_tokens - seq.num_computed_tokens, budget)
            reserve = siblings + (self._watermark if self.running else 0)
            if self.blocks.extra_blocks(seq, seq.num_computed_tokens + chunk) + reserve > self.blocks.num_free:
                break
            self.waiting.popleft()
            self.blocks.allocate(seq, seq.num_computed_tokens + chunk)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            plan[seq] = chunk
            budget -= chunk

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
        if len(self.running) < self.limits.max_num_seqs:
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
        self.add(child)  # no room now: it will be prefilled from its tokens later

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
