"""Continuous batching under a per-step token budget: the one owner of sequence and KV state.

Every sequence has `num_tokens` and `num_computed_tokens`; each step closes part of that gap.
`schedule()` gives each decoding sequence one token plus its draft, then prefill chunks, then
admits waiting sequences, each taking what the prefix cache holds of its tokens (BlockManager):
the n samples of a request, samples that start late, and other requests with the same start
all compute only what is new. A sequence whose start another sequence is computing right now
waits a step and then takes it from the cache. Waiting sequences are admitted fairly between
clients (the one with fewest running first), and a client that waits while another holds more
slots than it gets one of them; when blocks run out, the newest sequence of the client that runs
most is preempted. A preempted sequence is recomputed later, from the cache where its blocks
survived. A sequence that could not fit even alone ends by itself ("length").

`postprocess()` verifies drafts (the longest agreeing prefix), appends tokens (StopChecker),
commits what was computed or rolls back rejected draft rows, caches blocks that became full,
and retires finished sequences.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Mapping

from engine.block_manager import NO_HIT, BlockManager, PrefixHit
from engine.proposer import Draft
from engine.rejection_sampler import accepted_length
from engine.sampler import SampleResult, TopLogprobs
from engine.sequence import Sequence, SequenceStatus
from engine.stop_checker import StopChecker

KV_CACHE_FULL = "kv_cache_full"  # stop_reason of a sequence that outgrew the whole KV cache


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    start: int  # position of the first token fed
    token_ids: list[int]  # real tokens then draft tokens
    draft: tuple[int, ...]
    num_real: int  # known tokens fed (token_ids less the draft)
    samples: bool  # this step reaches the end of the sequence's known tokens
    # Planned before the step in flight's accepted draft tokens were known (schedule_ahead): the
    # rows sit up to `shift` positions later than `start` says, by what that step accepts (the
    # device moves them); postprocess of that step sets `start` and this to 0.
    shift: int = 0


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    num_preempted: int = 0
    # The first `fed` sequences feed the previous step's token, not yet on the host (schedule_ahead).
    fed: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.scheduled)


@dataclass(slots=True)
class SeqUpdate:
    """What one step did to one sequence."""

    seq: Sequence
    new_tokens: list[int]
    draft: tuple[int, ...] = ()
    accepted: int = 0


class Scheduler:
    def __init__(self, limits: SchedulerLimits, blocks: BlockManager, stops: StopChecker) -> None:
        self.limits = limits
        self.blocks = blocks
        self.stops = stops
        self.running: list[Sequence] = []
        self._waiting: dict[str | None, deque[Sequence]] = {}  # by client, each in arrival order
        self._running_by_client: Counter = Counter()
        self._copies: list[tuple[int, int]] = []
        self._ended: list[Sequence] = []  # ended by the scheduler itself, reported by postprocess
        # The last step fed every running sequence one token and admitted none: all of them decode
        # next (postprocess and abort only take sequences out of `running`).
        self._all_decoding = False
        self.num_preemptions = 0
        self.num_prompt_tokens_computed = 0
        # Keep a little headroom so that admitting a prompt does not force an immediate preemption.
        self._watermark = max(1, blocks.num_blocks // 100)

    # ------------------------------------------------------------------ sequences in and out
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self._waiting.setdefault(seq.client, deque()).append(seq)

    @property
    def waiting(self) -> list[Sequence]:
        return [s for queue in self._waiting.values() for s in queue]

    @property
    def num_waiting(self) -> int:
        """How many sequences wait; safe to read from another thread while the engine steps (the
        server's /metrics and /health do): no iteration over what a step may change meanwhile."""
        return sum(map(len, list(self._waiting.values())))

    @property
    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    def abort(self, seqs: list[Sequence]) -> None:
        """Ends these sequences now ("abort") and frees what they hold."""
        for seq in seqs:
            if seq.is_finished:
                continue
            if seq.status is SequenceStatus.RUNNING:
                self._stop_running(seq)
            else:
                self._remove_waiting(seq)
            seq.finish("abort")

    def decoding(self) -> list[Sequence]:
        """Running sequences that feed one known token next step (the ones a draft can ride on)."""
        if self._all_decoding:
            return list(self.running)
        return [s for s in self.running  # not is_prefilling, inline: called every step for every sequence
                if len(s.prompt_token_ids) + len(s.output_token_ids) - s.num_computed_tokens <= 1]

    # ------------------------------------------------------------------ schedule
    def schedule(self, drafts: Mapping[int, Draft] | None = None) -> SchedulerOutput:
        """The next step's work; `drafts` by sequence id, for decoding sequences."""
        self._all_decoding = False
        self._rebalance()
        out = self._decode_only(drafts or {})
        if out is not None:
            return out
        plan, chosen = self._plan_running(drafts or {})
        preempted = self._allocate_running(plan, chosen)
        budget = self.limits.max_num_batched_tokens - sum(plan.values()) - sum(len(d) for d in chosen.values())
        if not preempted:
            self._admit(plan, budget)
        scheduled = [_scheduled(seq, plan[seq], chosen.get(seq, ())) for seq in self.running if seq in plan]
        copies, self._copies = self._copies, []
        return SchedulerOutput(scheduled, copies, preempted)

    def _decode_only(self, drafts: Mapping[int, Draft]) -> SchedulerOutput | None:
        """schedule() of a step where every running sequence decodes one token and the draft it
        was given (most steps of a long job), in one pass, then admits who fits as the general
        path does; None where that does not hold or blocks run short even without a draft (the
        general path then plans it: prefill chunks, preemption). Drafts take the step's token
        budget in the order of `running`, as the general path gives it them."""
        limits, running = self.limits, self.running
        budget = limits.max_num_batched_tokens - len(running)
        if budget < 0:
            return None
        blocks = self.blocks
        block_size, max_len = blocks.block_size, limits.max_model_len
        scheduled = []
        for seq in running:
            end = len(seq.prompt_token_ids) + len(seq.output_token_ids)  # num_tokens, inline: the hot loop
            start = seq.num_computed_tokens
            if end - start != 1:
                return None
            found = drafts.get(seq.seq_id) if drafts else None
            draft = found.tokens[:max(0, min(budget, max_len - end))] if found is not None else ()
            budget -= len(draft)  # taken even where blocks then run short, as the general path plans it
            if end + len(draft) > len(seq.block_table) * block_size:
                draft = self._hold(seq, end, draft)
                if draft is None:
                    return None
            if draft:
                scheduled.append(ScheduledSeq(seq, start, [seq.last_token, *draft], draft, 1, True))
            else:
                scheduled.append(ScheduledSeq(seq, start, [seq.last_token], (), 1, True))
        admitted: dict[Sequence, int] = {}
        if self._waiting and len(running) < limits.max_num_seqs:
            self._admit(admitted, budget)
            scheduled += [_scheduled(seq, n, ()) for seq, n in admitted.items()]
        self._all_decoding = not admitted
        copies, self._copies = self._copies, []
        return SchedulerOutput(scheduled, copies, 0)

    def can_plan_ahead(self, prev: SchedulerOutput, shifts: bool = False) -> bool:
        """Whether the step after `prev` may be planned before prev's tokens reach the host (blocks
        aside): every running sequence sampled in prev (a decode, or the last chunk of its prompt)
        one token, or with `shifts` a draft's rows too (where the next rows go is then known on the
        device only: none before min_tokens, which the host applies by position), and no waiting
        client is owed a slot. A row whose sampling reads the tokens before it reads prev's where
        they are: a penalized row's history ends in them on the device (LLMEngine._device_tails),
        a row held to JSON is checked against the constraint's state after them once read back,
        when prev's are applied (sampler.LateState)."""
        if not prev.scheduled or self._unfair() is not None:
            return False
        live = 0
        for s in prev.scheduled:
            seq = s.seq
            if seq.is_finished:
                continue
            if not s.samples or s.shift:
                return False
            if s.draft and (not shifts or len(seq.output_token_ids) < seq.params.min_tokens):
                return False
            live += 1
        return live == len(self.running)

    def schedule_ahead(self, prev: SchedulerOutput,
                       drafts: Mapping[int, Draft] | None = None) -> SchedulerOutput | None:
        """The step after `prev`, planned before prev's tokens reach the host: each sequence prev
        sampled feeds prev's token (the engine feeds it from the device) at the next position, then
        its draft (`drafts`, by sequence id, found from the text without that token: each begins
        with the token it expects prev to sample, which is not fed, and the rest may follow a
        token the sequence does not get; verification is lossless whatever it follows), then
        waiting sequences are admitted as schedule() admits them. A sequence that drafted in prev
        is planned at the position after its last known token, shifted by up to its draft's length
        (ScheduledSeq.shift; the engine moves its rows on the device by what prev accepts, and
        postprocess(prev, behind=this step) tells the host), its blocks held for the farthest.
        Planned only where can_plan_ahead(prev) says yes (the engine asks it before any search for
        drafts); None where blocks run short even without drafts (the engine then waits for prev's
        tokens and schedules as usual). A sequence that prev's token ends by length is left out;
        one that prev ends otherwise (an end-of-text token, a stop string, accepted tokens that
        reach its length) or that is aborted meanwhile has its rows dropped by postprocess."""
        blocks, limits = self.blocks, self.limits
        block_size, max_len = blocks.block_size, limits.max_model_len
        budget = limits.max_num_batched_tokens - len(self.running)
        scheduled = []
        for s in prev.scheduled:
            seq = s.seq
            if seq.is_finished:
                continue
            made = len(seq.output_token_ids) + 1  # with prev's token
            if made >= seq.params.max_tokens or made >= max_len - len(seq.prompt_token_ids):
                continue  # prev's token ends it
            start, shift = s.start + s.num_real, len(s.draft)
            found = drafts.get(seq.seq_id) if drafts else None
            draft = found.tokens[1:1 + max(0, min(budget, max_len - start - shift - 1))] if found is not None else ()
            budget -= len(draft)  # taken even where blocks then run short, as schedule() plans it
            if start + shift + 1 + len(draft) > len(seq.block_table) * block_size:
                draft = self._hold(seq, start + shift + 1, draft)
                if draft is None:
                    return None
            # The first id is fed from the device.
            scheduled.append(ScheduledSeq(seq, start, [0, *draft] if draft else [0], draft, 1, True, shift))
        fed = len(scheduled)
        if self._waiting and len(self.running) < limits.max_num_seqs:
            admitted: dict[Sequence, int] = {}
            self._admit(admitted, limits.max_num_batched_tokens - sum(len(s.token_ids) for s in scheduled))
            scheduled += [_scheduled(seq, n, ()) for seq, n in admitted.items()]
        if not scheduled:
            return None
        self._all_decoding = False
        copies, self._copies = self._copies, []
        return SchedulerOutput(scheduled, copies, 0, fed)

    def _hold(self, seq: Sequence, end: int, draft: tuple[int, ...]) -> tuple[int, ...] | None:
        """Allocates blocks for the sequence's first `end` positions and the draft after them: the
        draft, or () where blocks do not hold it (a draft is dropped before anyone waits for
        blocks); None where they do not hold even those positions."""
        blocks = self.blocks
        need = end + len(draft)
        if draft and not blocks.can_hold(seq, need):
            draft, need = (), end
        if need > len(seq.block_table) * blocks.block_size:
            if not blocks.can_hold(seq, need):
                return None
            blocks.allocate(seq, need)
        return draft

    def _plan_running(self, drafts: Mapping[int, Draft]) -> tuple[dict[Sequence, int], dict[Sequence, tuple[int, ...]]]:
        budget = self.limits.max_num_batched_tokens
        plan: dict[Sequence, int] = {}
        chosen: dict[Sequence, tuple[int, ...]] = {}
        prefilling = []
        for seq in self.running:
            if seq.is_prefilling:
                prefilling.append(seq)
            else:
                plan[seq] = 1
        budget -= len(plan)
        if drafts:
            for seq in plan:
                draft = drafts.get(seq.seq_id)
                if draft is None:
                    continue
                d = min(len(draft), budget, max(0, self.limits.max_model_len - seq.num_tokens))
                if d:
                    chosen[seq] = draft.tokens[:d]
                    budget -= d
        for seq in prefilling:
            if budget <= 0:
                break
            plan[seq] = min(seq.num_tokens - seq.num_computed_tokens, budget)
            budget -= plan[seq]
        return plan, chosen

    def _allocate_running(self, plan: dict[Sequence, int], chosen: dict[Sequence, tuple[int, ...]]) -> int:
        """Blocks for every planned sequence: a draft is dropped before anyone is preempted."""
        preempted = 0
        block_size = self.blocks.block_size
        for seq in list(self.running):
            n = plan.get(seq)
            if n is None or seq.status is not SequenceStatus.RUNNING:
                continue
            base = seq.num_computed_tokens + n
            if base + len(chosen.get(seq, ())) <= len(seq.block_table) * block_size:
                continue  # it holds the blocks already (most steps of most sequences)
            if not self.blocks.can_hold(seq, base + len(chosen.get(seq, ()))):
                chosen.pop(seq, None)
            while not self.blocks.can_hold(seq, base):
                if self.blocks.blocks_for(base) > self.blocks.num_blocks:  # could never fit, even alone
                    plan.pop(seq)
                    self._end_alone(seq)
                    break
                victim = self._victim()
                self.preempt(victim)
                plan.pop(victim, None)
                chosen.pop(victim, None)
                preempted += 1
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.blocks.allocate(seq, base + len(chosen.get(seq, ())))
        return preempted

    def _rebalance(self) -> None:
        """With every slot taken, a waiting client that runs fewer sequences than the heaviest client
        less one gets a slot from it: the heaviest's newest sequence is preempted (what it computed
        stays in the prefix cache). A few per step, so that shares converge without thrashing."""
        for _ in range(1 + self.limits.max_num_seqs // 8):
            heaviest = self._unfair()
            if heaviest is None:
                return
            self.preempt(max((s for s in self.running if s.client == heaviest), key=lambda s: s.seq_id))

    def _unfair(self) -> str | None:
        """With every slot taken, the client to give one up for a waiting client that runs fewer
        sequences than it less one; None where there is none."""
        if len(self.running) < self.limits.max_num_seqs or not self._waiting:
            return None
        lightest = min(self._running_by_client.get(c, 0) for c in self._waiting)
        heaviest = max(self._running_by_client, key=lambda c: self._running_by_client[c])
        return heaviest if self._running_by_client[heaviest] > lightest + 1 else None

    def _victim(self) -> Sequence:
        """The newest running sequence of the client that runs most."""
        client = max(self._running_by_client, key=lambda c: (self._running_by_client[c], c is None))
        return max((s for s in self.running if s.client == client), key=lambda s: s.seq_id)

    def _end_alone(self, seq: Sequence) -> None:
        self._stop_running(seq)
        seq.text += seq.detokenizer.flush() if seq.detokenizer is not None else ""
        seq.finish("length", KV_CACHE_FULL)
        self._ended.append(seq)

    # ------------------------------------------------------------------ admission
    def _admit(self, plan: dict[Sequence, int], budget: int) -> None:
        deferred: list[Sequence] = []
        in_flight: set[int] = set()  # prompts (by list identity) whose start is being computed
        while budget > 0 and self._waiting and len(self.running) < self.limits.max_num_seqs:
            seq = self._pop_waiting()
            if id(seq.prompt_token_ids) in in_flight:
                deferred.append(seq)
                continue
            if not self._can_ever_fit(seq):
                self._end_waiting(seq)
                continue
            limit = seq.num_tokens - 1  # the last known token is always computed: its logits give the next
            hit = self.blocks.match(seq.token_slice(0, limit), limit)
            if self._prefix_in_flight(seq, hit, limit):
                in_flight.add(id(seq.prompt_token_ids))
                deferred.append(seq)
                continue
            chunk = self._try_start(seq, hit, budget)
            if chunk is None:
                self._waiting.setdefault(seq.client, deque()).appendleft(seq)
                break
            plan[seq] = chunk
            budget -= chunk
        for seq in reversed(deferred):
            self._waiting.setdefault(seq.client, deque()).appendleft(seq)

    def _try_start(self, seq: Sequence, hit: PrefixHit, budget: int) -> int | None:
        """Starts the sequence from the hit with a chunk of at most `budget` tokens; None when the
        blocks it needs are not free (it stays first in line)."""
        start = hit.num_tokens(self.blocks.block_size)
        chunk = min(seq.num_tokens - start, budget)
        refs = self.blocks.refcounts
        taken = sum(refs[b] == 0 for b in hit.blocks) + (hit.partial_src is not None and refs[hit.partial_src] == 0)
        new = self.blocks.blocks_for(start + chunk) - len(hit.blocks)
        reserve = self._watermark if self.running else 0
        if taken + new + reserve > self.blocks.num_free:
            return None
        copy = self.blocks.take(seq, hit if hit.blocks or hit.partial_src is not None else NO_HIT)
        if copy is not None:
            self._copies.append(copy)
        self.blocks.allocate(seq, start + chunk)
        seq.num_computed_tokens = start
        if seq.cached_prompt_tokens is None:  # a preempted sequence's restart reuses its own blocks: not counted
            seq.cached_prompt_tokens = min(start, len(seq.prompt_token_ids))
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        self._running_by_client[seq.client] += 1
        return chunk

    def _prefix_in_flight(self, seq: Sequence, hit: PrefixHit, limit: int) -> bool:
        """Whether a running sequence is computing the tokens that follow this sequence's hit right
        now (same blocks before them, same tokens): then waiting a step lets this one take them from
        the cache instead of computing them twice."""
        bs = self.blocks.block_size
        k = len(hit.blocks)
        lo, hi = k * bs + hit.partial_len, min((k + 1) * bs, limit)
        if hi <= lo:
            return False
        want = seq.token_slice(k * bs, hi)
        for other in self.running:
            if (other.is_prefilling and other.num_computed_tokens < hi <= other.num_tokens
                    and tuple(other.block_table[:k]) == hit.blocks and other.token_slice(k * bs, hi) == want):
                return True
        return False

    def _can_ever_fit(self, seq: Sequence) -> bool:
        return self.blocks.blocks_for(seq.num_tokens + 1) <= self.blocks.num_blocks

    def _end_waiting(self, seq: Sequence) -> None:
        seq.finish("length", KV_CACHE_FULL)
        self._ended.append(seq)

    def _pop_waiting(self) -> Sequence:
        """The next in line: from the client with the fewest running sequences, oldest first."""
        client = min(self._waiting, key=lambda c: (self._running_by_client[c], self._waiting[c][0].seq_id))
        queue = self._waiting[client]
        seq = queue.popleft()
        if not queue:
            del self._waiting[client]
        return seq

    def _remove_waiting(self, seq: Sequence) -> None:
        queue = self._waiting.get(seq.client)
        if queue is not None and seq in queue:
            queue.remove(seq)
            if not queue:
                del self._waiting[seq.client]

    # ------------------------------------------------------------------ preemption and retirement
    def preempt(self, seq: Sequence) -> None:
        """Frees the sequence's cache (what it computed stays cached); it will be recomputed."""
        self._stop_running(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self._waiting.setdefault(seq.client, deque()).appendleft(seq)
        self.num_preemptions += 1

    def _stop_running(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._running_by_client[seq.client] -= 1
        if not self._running_by_client[seq.client]:
            del self._running_by_client[seq.client]
        self.blocks.free(seq)

    # ------------------------------------------------------------------ after the forward
    def postprocess(self, out: SchedulerOutput, result: SampleResult | None,
                    dropped: frozenset[int] = frozenset(), behind: SchedulerOutput | None = None,
                    dropped_behind: frozenset[int] = frozenset()) -> list[SeqUpdate]:
        """Applies the step's sampled tokens (rows in the order of the scheduled sequences that
        sample: 1 + draft rows each); returns what happened to each sequence. Rows of sequences
        that ended since the step was planned, and of those in `dropped` (by id: fed a token that
        was not theirs), are left as if not computed. `behind`: the step queued after this one
        before its tokens were known (schedule_ahead): its shifted sequences learn where their rows
        went, and keep the blocks those rows write; of those in `dropped_behind` (their rows there
        to be dropped), the rows were moved by what the device found accepted, which was not what
        this step accepts: they may have written over tokens it accepts, computed again from where
        behind planned them."""
        self.blocks.copies_done()
        shifted = {s.seq: s for s in behind.scheduled[:behind.fed] if s.shift} if behind is not None else None
        updates = [SeqUpdate(seq, []) for seq in self._ended]
        self._ended = []
        if result is not None:
            sampled, logprobs, top = result.tokens, result.logprobs, result.top
        row = 0
        for s in out.scheduled:
            seq = s.seq
            if seq.is_finished or seq.seq_id in dropped:  # planned ahead of what ended it, or fed another's token
                row += len(s.draft) + 1 if s.samples else 0
                continue
            if s.start < len(seq.prompt_token_ids):
                self.num_prompt_tokens_computed += min(s.start + s.num_real, len(seq.prompt_token_ids)) - s.start
            if not s.samples:  # a prefill chunk short of the last known token
                seq.num_computed_tokens = s.start + len(s.token_ids)
                self.blocks.cache_full_blocks(seq)
                continue
            if not s.draft:  # one token: most sequences of most steps
                updates.append(self._apply_one(s, sampled[row], logprobs[row] if logprobs else None,
                                               top[row] if top else None))
                row += 1
                continue
            n = len(s.draft) + 1
            after = shifted.get(seq) if shifted else None
            redo = after.start if after is not None and seq.seq_id in dropped_behind else None
            updates.append(self._apply(s, sampled[row:row + n], logprobs[row:row + n] if logprobs else None,
                                       top[row:row + n] if top else None, len(after.draft) if after else 0, redo))
            if after is not None:  # its rows went where the accepted tokens end: at the last known token
                after.start, after.shift = seq.num_tokens - 1, 0
            row += n
        return updates

    def _apply_one(self, s: ScheduledSeq, token: int, logprob: float | None, top: TopLogprobs | None) -> SeqUpdate:
        """_apply for a sequence without a draft: the one token is always taken."""
        seq = s.seq
        first = not seq.output_token_ids
        self.stops.append_one(seq, token, logprob, top)
        seq.num_computed_tokens = s.start + s.num_real
        if first:
            self.blocks.cache_prompt_tail(seq)
        elif seq.num_computed_tokens >= (len(seq.block_chain) + 1) * self.blocks.block_size:
            self.blocks.cache_full_blocks(seq)  # a block became full
        if seq.is_finished:
            self._stop_running(seq)
        return SeqUpdate(seq, [token])

    def _apply(self, s: ScheduledSeq, tokens: list[int], logprobs: list[float] | None,
               top: list[TopLogprobs] | None = None, held: int = 0, redo: int | None = None) -> SeqUpdate:
        """A sequence with a draft: its longest agreeing prefix and the token after it. `held`:
        draft rows of the step queued behind this one, after the new last token, whose blocks stay;
        `redo`: the first position that step may have written over (computed again from there)."""
        seq = s.seq
        m = accepted_length(tokens, s.draft)
        first = not seq.output_token_ids
        before = len(seq.output_token_ids)
        if m + 1 < len(tokens):
            tokens = tokens[:m + 1]
            logprobs = logprobs[:m + 1] if logprobs else None
            top = top[:m + 1] if top else None
        self.stops.append(seq, tokens, logprobs, top)
        num_tokens = len(seq.prompt_token_ids) + len(seq.output_token_ids)
        seq.num_computed_tokens = min(s.start + s.num_real + m, num_tokens)
        if redo is not None:
            seq.num_computed_tokens = min(seq.num_computed_tokens, redo)
        blocks, block_size = self.blocks, self.blocks.block_size
        if first:
            blocks.cache_prompt_tail(seq)
        elif seq.num_computed_tokens >= (len(seq.block_chain) + 1) * block_size:
            blocks.cache_full_blocks(seq)  # a block became full
        if seq.is_finished:
            self._stop_running(seq)
        elif len(seq.block_table) * block_size >= num_tokens + held + block_size:
            blocks.truncate(seq, num_tokens + held)  # blocks for the whole draft: those past the accepted part go
        return SeqUpdate(seq, seq.output_token_ids[before:], s.draft, m)


def _scheduled(seq: Sequence, n: int, draft: tuple[int, ...]) -> ScheduledSeq:
    """What a step feeds a sequence planned n known tokens (and a draft after them)."""
    start = seq.num_computed_tokens
    end = seq.num_tokens
    if n == 1 and start + 1 == end:  # a decode step: its last token
        tokens = [seq.last_token]
    else:
        tokens = seq.token_slice(start, start + n)
    if draft:
        tokens += draft
    return ScheduledSeq(seq, start, tokens, draft, n, start + n == end)
