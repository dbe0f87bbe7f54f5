"""The scheduler on its own: token budget, prefix sharing between sequences, fairness between
clients, preemption, and a sequence too long for the cache ending alone."""
from __future__ import annotations

import random

from engine.block_manager import BlockManager
from engine.proposer import Draft
from engine.sampler import SampleResult
from engine.sampling_params import SamplingParams
from engine.scheduler import KV_CACHE_FULL, Scheduler, SchedulerLimits, SchedulerOutput
from engine.sequence import Sequence, SequenceStatus
from engine.stop_checker import StopChecker


class _Silent:
    """A detokenizer that releases no text (these tests look at tokens only)."""

    def add(self, token: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def _scheduler(num_blocks: int = 64, block_size: int = 4, max_seqs: int = 8, budget: int = 32,
               max_len: int = 512) -> Scheduler:
    return Scheduler(SchedulerLimits(max_seqs, budget, max_len), BlockManager(num_blocks, block_size),
                     StopChecker((2,), max_len))


_ids = iter(range(1_000_000))


def _seqs(prompt: list[int], n: int = 1, max_tokens: int = 8, client: str | None = None) -> list[Sequence]:
    params = SamplingParams(n=n, max_tokens=max_tokens, ignore_eos=True)
    seqs = [Sequence(next(_ids), f"r{prompt[0]}", i, prompt, params, 0, client) for i in range(n)]
    for seq in seqs:
        seq.detokenizer = _Silent()
    return seqs


def _step(sched: Scheduler, drafts: dict[int, Draft] | None = None, token: int = 7) -> SchedulerOutput:
    """One step with the model's choice fixed at `token` (so drafts of `token` are accepted)."""
    out = sched.schedule(drafts)
    rows = sum(len(s.draft) + 1 for s in out.scheduled if s.samples)
    sched.postprocess(out, SampleResult([token] * rows, None))
    return out


def _run_to_end(sched: Scheduler) -> None:
    for _ in range(1000):
        if not sched.has_work:
            return
        _step(sched)
    raise AssertionError("did not finish")


def test_every_step_stays_within_the_token_budget():
    rng = random.Random(0)
    sched = _scheduler(num_blocks=200, budget=24, max_seqs=6)
    for i in range(12):
        for seq in _seqs([100 + i] + [rng.randrange(50) for _ in range(rng.randrange(1, 40))], max_tokens=10):
            sched.add(seq)
    while sched.has_work:
        drafts = {s.seq_id: Draft((7,) * rng.randrange(0, 9)) for s in sched.decoding()}
        out = _step(sched, drafts)
        assert out.num_tokens <= 24 and len(out.scheduled) <= 6
    assert sched.blocks.num_free == 200


def test_the_samples_of_a_request_compute_the_prompt_once():
    sched = _scheduler()
    prompt = list(range(10, 33))  # 23 tokens: 5 full blocks and 3 more
    for seq in _seqs(prompt, n=4):
        sched.add(seq)
    first = _step(sched)
    assert [s.seq.sample_index for s in first.scheduled] == [0]  # the others wait for its blocks
    second = _step(sched)
    late = [s for s in second.scheduled if s.seq.sample_index > 0]
    assert len(late) == 3 and all(len(s.token_ids) == 1 and s.start == 22 for s in late)
    assert len(second.block_copies) == 3  # each copies the block that holds tokens 20 and 21
    assert sched.num_prompt_tokens_computed == 23 + 3
    _run_to_end(sched)
    assert sched.blocks.num_free == sched.blocks.num_blocks


def test_a_new_client_is_served_before_a_heavy_one_gets_more():
    sched = _scheduler(num_blocks=256, max_seqs=4, budget=64)
    for seq in _seqs([1, 2, 3], n=8, max_tokens=10, client="heavy"):
        sched.add(seq)
    _step(sched)
    _step(sched)
    assert len(sched.running) == 4 and {s.client for s in sched.running} == {"heavy"}
    light = _seqs([9, 9, 9], max_tokens=3, client="light")[0]
    sched.add(light)
    _step(sched)
    assert light.status is SequenceStatus.RUNNING  # at once: the heavy client gave up a slot for it
    assert sum(s.client == "heavy" for s in sched.running) == 3 and sched.num_preemptions == 1
    _run_to_end(sched)
    assert light.finish_reason == "length" and len(light.output_token_ids) == 3


def test_preemption_takes_from_the_client_that_runs_most():
    sched = _scheduler(num_blocks=12, block_size=2, max_seqs=8, budget=64)
    heavy = _seqs([1, 2, 3], n=3, max_tokens=12, client="heavy")
    light = _seqs([5, 6, 3], max_tokens=12, client="light")
    for seq in heavy + light:
        sched.add(seq)
    preempted = []
    for _ in range(40):
        if not sched.has_work:
            break
        running = set(sched.running)
        _step(sched)
        preempted += [s for s in running if s.status is SequenceStatus.WAITING]
    assert preempted and all(s.client == "heavy" for s in preempted)
    _run_to_end(sched)
    assert all(len(s.output_token_ids) == 12 for s in heavy + light)


def test_a_sequence_that_outgrows_the_cache_ends_alone():
    sched = _scheduler(num_blocks=6, block_size=4, max_seqs=4, budget=64)
    long = _seqs([1] * 18, max_tokens=100)[0]  # 24 positions fill the cache
    short = _seqs([2, 3], max_tokens=4)[0]
    sched.add(long)
    sched.add(short)
    _run_to_end(sched)
    assert long.finish_reason == "length" and long.stop_reason == KV_CACHE_FULL
    assert short.finish_reason == "length" and short.stop_reason is None and len(short.output_token_ids) == 4
    assert sched.blocks.num_free == 6


def test_drafts_are_verified_and_rejected_rows_rolled_back():
    sched = _scheduler(block_size=4)
    seq = _seqs([1, 2, 3], max_tokens=20)[0]
    sched.add(seq)
    _step(sched)
    out = _step(sched, {seq.seq_id: Draft((7, 7, 8, 7, 7, 7, 7))})  # the model picks 7: two accepted
    assert out.scheduled[0].draft == (7, 7, 8, 7, 7, 7, 7)
    assert seq.output_token_ids == [7, 7, 7, 7] and seq.num_computed_tokens == 3 + 3
    assert len(seq.block_table) == sched.blocks.blocks_for(seq.num_tokens)
    _run_to_end(sched)


def test_a_block_is_cached_in_the_step_it_becomes_full():
    """Each block the output fills is listed in the prefix cache by the step that filled it, with
    drafts and without, so that a request arriving meanwhile finds it (not only after the end)."""
    sched = _scheduler(block_size=4)
    seq = _seqs([1, 2, 3], max_tokens=30)[0]
    sched.add(seq)
    for step in range(20):
        _step(sched, {seq.seq_id: Draft((7, 7, 9))} if step % 3 == 2 else None)
        if seq.is_finished:
            break
        full = seq.num_computed_tokens // 4
        assert len(seq.block_chain) == full, step
        known = seq.token_slice(0, seq.num_computed_tokens)
        assert sched.blocks.match(known, len(known)).blocks == tuple(seq.block_table[:full]), step
    _run_to_end(sched)


def _trace(decode_lane: bool, seed: int) -> tuple[list, int]:
    """Every step's plan, with the one-pass decode lane or without it (the general path), of a
    workload that fills the cache: samples sharing prompts, late arrivals, drafts on some steps,
    preemption, clients; and how many steps the lane planned with admissions, and with drafts."""
    rng = random.Random(seed)
    sched = _scheduler(num_blocks=20, block_size=4, max_seqs=6, budget=24)
    lane, admitting = sched._decode_only, [0, 0]

    def counted(drafts):
        before = len(sched.running)
        out = lane(drafts)
        admitting[0] += out is not None and len(out.scheduled) > before
        admitting[1] += out is not None and any(s.draft for s in out.scheduled)
        return out

    sched._decode_only = counted if decode_lane else (lambda drafts: None)
    ids = iter(range(10_000))
    pending = []
    for i in range(8):
        prompt = [50 + i] + [rng.randrange(40) for _ in range(rng.randrange(1, 14))]
        params = SamplingParams(n=rng.choice((1, 3)), max_tokens=rng.randrange(4, 30), ignore_eos=True)
        for j in range(params.n):
            seq = Sequence(next(ids), f"r{i}", j, prompt, params, 0, rng.choice(("a", "b")))
            seq.detokenizer = _Silent()
            pending.append((rng.randrange(0, 30), seq))
    trace = []
    for step in range(400):
        for arrival, seq in pending:
            if arrival == step:
                sched.add(seq)
        if not sched.has_work and step > 30:
            break
        drafts = {s.seq_id: Draft((7, 7, 8, 8, 9)) for s in sched.decoding()} if step % 4 == 3 else None
        out = _step(sched, drafts)
        assert sched.decoding() == [s for s in sched.running if not s.is_prefilling]
        trace.append([(s.seq.seq_id, s.start, tuple(s.token_ids), s.draft, s.num_real, s.samples,
                       tuple(s.seq.block_table)) for s in out.scheduled]
                     + [out.num_preempted, tuple(out.block_copies)])
    assert not sched.has_work and sched.blocks.num_free == sched.blocks.num_blocks
    return trace, admitting


def test_the_decode_lane_plans_every_step_as_the_general_path_does():
    for seed in range(3):
        (lane, (admitting, drafting)), (general, _) = _trace(True, seed), _trace(False, seed)
        assert lane == general
        # the lane admitted sequences and planned drafts itself, not only left such steps to the general path
        assert admitting > 0 and drafting > 0


def test_a_step_planned_ahead_feeds_each_draft_after_the_token_in_flight():
    """schedule_ahead plans the step after one whose tokens are not on the host yet: each sequence
    feeds that token (fed from the device: a placeholder here) at the next position, then its
    draft after the token it expected there, cut to the step's token budget; once both steps'
    tokens are applied the draft was verified as any draft (whatever it expected), and blocks
    past what was accepted went back."""
    sched = _scheduler(block_size=4, budget=8)
    a, b = _seqs([1, 2, 3], max_tokens=20)[0], _seqs([4, 5, 6, 7], max_tokens=20)[0]
    sched.add(a)
    sched.add(b)
    prev = sched.schedule()  # both prompts, each sampling its first token
    assert not sched.can_plan_ahead(SchedulerOutput([])) and sched.can_plan_ahead(prev)
    # Each draft begins with the token it expects prev to sample (not fed).
    ahead = sched.schedule_ahead(prev, {a.seq_id: Draft((5, 7, 8, 7)), b.seq_id: Draft((7, 7, 7, 7, 7, 7))})
    sa, sb = ahead.scheduled
    assert ahead.fed == 2 and (sa.seq, sb.seq) == (a, b)
    assert (sa.start, sa.token_ids[1:], sa.draft, sa.num_real) == (3, [7, 8, 7], (7, 8, 7), 1)
    assert (sb.start, sb.draft) == (4, (7, 7, 7))  # the budget: 8 tokens, 2 of them the fed ones
    assert not sched.can_plan_ahead(ahead)  # a step with drafts: the next one waits for its tokens
    sched.postprocess(prev, SampleResult([7, 7], None))
    sched.postprocess(ahead, SampleResult([7] * 8, None))  # the model picks 7: a's 8 is rejected
    assert a.output_token_ids == [7, 7, 7] and a.num_computed_tokens == 3 + 2
    assert b.output_token_ids == [7] * 5 and b.num_computed_tokens == 4 + 4
    for seq in (a, b):
        blocks = sched.blocks.blocks_for
        assert blocks(seq.num_computed_tokens) <= len(seq.block_table) <= blocks(seq.num_tokens)
    _run_to_end(sched)
    assert sched.blocks.num_free == sched.blocks.num_blocks


def test_a_step_planned_ahead_of_a_drafting_step_shifts_by_what_it_accepts():
    """After a step with drafts, the next may be planned before its tokens (can_plan_ahead with
    shifts): each drafted sequence is planned at the position after its last known token, to move
    by up to its draft's length (ScheduledSeq.shift), blocks held for the farthest; once the
    drafting step's tokens are applied with the queued step behind it, the queued step knows where
    its rows went, and keeps the blocks they write."""
    sched = _scheduler(block_size=4, budget=16)
    a, b = _seqs([1, 2, 3], max_tokens=30)[0], _seqs([4, 5, 6, 7], max_tokens=30)[0]
    sched.add(a)
    sched.add(b)
    sched.postprocess(sched.schedule(), SampleResult([7, 7], None))
    drafting = sched.schedule({a.seq_id: Draft((7, 7, 8)), b.seq_id: Draft((9,))})
    assert [s.draft for s in drafting.scheduled] == [(7, 7, 8), (9,)]
    assert not sched.can_plan_ahead(drafting) and sched.can_plan_ahead(drafting, shifts=True)
    # a's next draft begins with the token expected after its draft in flight (not fed)
    ahead = sched.schedule_ahead(drafting, {a.seq_id: Draft((5, 7, 7))})
    sa, sb = ahead.scheduled
    assert (sa.start, sa.shift, sa.draft, sa.token_ids) == (4, 3, (7, 7), [0, 7, 7])
    assert (sb.start, sb.shift, sb.draft) == (5, 1, ())
    assert len(a.block_table) * 4 >= 4 + 3 + 3  # the farthest: 3 accepted, then its 3 rows
    assert not sched.can_plan_ahead(ahead, shifts=True)  # where its rows are is not known yet
    # The model picks 7 everywhere: a accepts 7, 7 (then 7 where 8 was drafted), b accepts nothing.
    sched.postprocess(drafting, SampleResult([7, 7, 7, 7, 7, 7], None), behind=ahead)
    assert a.output_token_ids == [7, 7, 7, 7] and b.output_token_ids == [7, 7]
    assert (sa.start, sa.shift, sb.start, sb.shift) == (3 + 3, 0, 4 + 1, 0)
    assert len(a.block_table) * 4 >= sa.start + len(sa.token_ids)  # its queued rows' blocks stayed
    sched.postprocess(ahead, SampleResult([7, 7, 7, 7], None))  # a's draft 7, 7 accepted
    assert a.output_token_ids == [7] * 7 and a.num_computed_tokens == 3 + 6
    assert b.output_token_ids == [7] * 3 and b.num_computed_tokens == 4 + 2
    _run_to_end(sched)
    assert sched.blocks.num_free == sched.blocks.num_blocks


def test_a_sequence_dropped_from_the_step_behind_its_draft_is_computed_again_from_where_it_was_planned():
    """The step queued behind a drafting step moves the sequence's rows by what the device found
    accepted; where a token changed once read back (a redraw, a JSON constraint), that count may
    not be the host's, and those rows may have been written over tokens the host accepts: the
    sequence's rows there are dropped, and its tokens from where that step planned them are
    computed again (before, the keys and values of accepted tokens could stay overwritten)."""
    sched = _scheduler(block_size=4)
    seq = _seqs([1, 2, 3], max_tokens=30)[0]
    sched.add(seq)
    sched.postprocess(sched.schedule(), SampleResult([7], None))
    drafting = sched.schedule({seq.seq_id: Draft((7, 7))})
    ahead = sched.schedule_ahead(drafting)
    assert (ahead.scheduled[0].start, ahead.scheduled[0].shift) == (4, 2)
    sched.postprocess(drafting, SampleResult([7, 7, 7], None), behind=ahead, dropped_behind=frozenset({seq.seq_id}))
    assert seq.output_token_ids == [7, 7, 7, 7] and seq.num_computed_tokens == 4  # not 6: 4 and 5 may be overwritten
    sched.postprocess(ahead, SampleResult([9], None), dropped=frozenset({seq.seq_id}))
    again = sched.schedule()
    assert (again.scheduled[0].start, again.scheduled[0].token_ids) == (4, [7, 7, 7])
    _run_to_end(sched)
    assert sched.blocks.num_free == sched.blocks.num_blocks


def test_no_step_is_planned_ahead_of_a_draft_before_min_tokens():
    """The host applies min_tokens by each row's position: a drafted sequence short of it waits
    for its draft's tokens before the next step is planned."""
    sched = _scheduler(block_size=4)
    params = SamplingParams(max_tokens=30, min_tokens=5, ignore_eos=True)
    seq = Sequence(next(_ids), "r", 0, [1, 2, 3], params, 0)
    seq.detokenizer = _Silent()
    sched.add(seq)
    sched.postprocess(sched.schedule(), SampleResult([7], None))
    drafting = sched.schedule({seq.seq_id: Draft((7, 7))})
    assert not sched.can_plan_ahead(drafting, shifts=True)
    sched.postprocess(drafting, SampleResult([7, 7, 7], None))
    sched.postprocess(sched.schedule({seq.seq_id: Draft((7,))}), SampleResult([7, 7], None))
    assert len(seq.output_token_ids) == 6
    assert sched.can_plan_ahead(sched.schedule({seq.seq_id: Draft((7,))}), shifts=True)


def _odd(name: str, prompt: list[int], **params) -> Sequence:
    seq = Sequence(next(_ids), name, 0, prompt, SamplingParams(max_tokens=20, **params), 0)
    seq.detokenizer = _Silent()
    return seq


def test_sequences_with_penalties_or_held_to_json_are_planned_ahead_like_any_other():
    """Rows that read the tokens before them (penalties, a JSON constraint's state) do not keep a
    step from being planned ahead of those tokens: the engine gives them prev's where they are
    (on the device, or once read back). Before, such a sequence sat every other such step out,
    and where they were more than a quarter of those running, no step was planned ahead."""
    sched = _scheduler(block_size=4, budget=32)
    plain = _seqs([10, 2, 3], max_tokens=20)[0]
    penalized = _odd("p", [4, 5, 6], ignore_eos=True, repetition_penalty=1.2)
    json = _odd("j", [20, 21, 22], json_object=True)
    for seq in (plain, penalized, json):
        sched.add(seq)
    prev = sched.schedule()
    assert sched.can_plan_ahead(prev)
    ahead = sched.schedule_ahead(prev)
    assert [s.seq for s in ahead.scheduled] == [plain, penalized, json] and ahead.fed == 3
    sched.postprocess(prev, SampleResult([7] * 3, None))
    sched.postprocess(ahead, SampleResult([8] * 3, None))
    drafting = sched.schedule({penalized.seq_id: Draft((5, 6)), json.seq_id: Draft((5,))})
    assert sched.can_plan_ahead(drafting, shifts=True)
    after = sched.schedule_ahead(drafting)
    assert [(s.seq, s.shift) for s in after.scheduled] == [(plain, 0), (penalized, 2), (json, 1)]
    sched.postprocess(drafting, SampleResult([9] * 6, None), behind=after)
    sched.postprocess(after, SampleResult([9] * 3, None))
    assert [s.output_token_ids for s in (plain, penalized, json)] == [[7, 8, 9, 9]] * 3
    _run_to_end(sched)
    assert sched.blocks.num_free == sched.blocks.num_blocks
