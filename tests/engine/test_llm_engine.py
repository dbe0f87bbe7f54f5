"""The engine's step with overlapped steps (EngineConfig.overlap_steps "on", which a GPU gets by
default): a plain decode step is queued before the previous step's tokens reach the host, fed
them from the device. Everything must come out as from the synchronous step."""
from __future__ import annotations

import pytest

from engine import LLM, EngineConfig, SamplingParams
from engine.config import DEFAULT_MODEL
from engine.overlap_choice import OverlapChoice
from engine.proposer import EMPTY_DRAFT, Draft
from engine.scheduler import Scheduler
from engine.step_cost import StepCost
from fastcodellama.drafting import build_proposer
from tests.engine.helpers import assert_no_leaks

PROMPTS = ["def fib(n):\n    ", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):\n", "x = 1"]


def _run(model: str, overlap: str, params: SamplingParams, drafting: bool = False, max_num_seqs: int = 4,
         torch_sampler: bool = False, proposer=None) -> tuple[list, LLM]:
    llm = LLM(EngineConfig(model=model, overlap_steps=overlap, num_kv_blocks=256, block_size=4,
                           max_num_batched_tokens=64, max_num_seqs=max_num_seqs),
              proposer=proposer or (build_proposer() if drafting else None))
    if torch_sampler:  # the PyTorch path a GPU samples with, its candidates' race and redraws
        llm.engine.sampler.use_kernels = False
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    return [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outs], llm, outs


def _logprobs(outs) -> list:
    return [c.logprobs for o in outs for c in o.outputs]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
    SamplingParams(n=3, temperature=0.8, seed=7, max_tokens=20, stop=["\n\n", "):"]),
    SamplingParams(n=2, temperature=1.0, top_p=0.9, top_k=50, seed=3, max_tokens=16, logprobs=2),
], ids=["greedy", "sampled-stops", "logprobs"])
@pytest.mark.parametrize("drafting", [False, True], ids=["plain", "drafting"])
def test_overlapped_steps_give_the_synchronous_outputs(tiny_model_dir, params, drafting):
    # Four prompts on at most four running sequences: admissions wait for slots while others decode.
    synchronous, _, sync_outs = _run(tiny_model_dir, "off", params, drafting)
    overlapped, llm, outs = _run(tiny_model_dir, "on", params, drafting)
    assert overlapped == synchronous
    # A token's logprob from a verify row and from a decode row may part in the last bits, and the
    # two engines need not draft alike.
    for got, want in zip(_logprobs(outs), _logprobs(sync_outs)):
        assert got == want if not drafting or want is None else got == pytest.approx(want, abs=1e-4)
    assert_no_leaks(llm.engine)
    stats = llm.engine.stats()
    if not drafting:
        assert stats.overlapped_steps >= stats.steps // 3  # most decode steps went ahead


def test_overlap_is_a_gpu_default(tiny_model_dir):
    assert not LLM(EngineConfig(model=tiny_model_dir, num_kv_blocks=64)).engine.runner.paths.overlap
    assert LLM(EngineConfig(model=tiny_model_dir, num_kv_blocks=64, overlap_steps="on")).engine.runner.paths.overlap
    with pytest.raises(ValueError, match="overlap_steps must be auto, on or off"):
        EngineConfig(overlap_steps="yes")


def test_a_sequence_that_ends_while_the_next_step_is_queued(tiny_model_dir):
    """A stop token ends a sequence at a step whose successor already fed it that token: its row
    there is dropped, its blocks come back, the others go on as without overlap."""
    plain, _, _ = _run(tiny_model_dir, "off", SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
    stop = plain[0][0][0][5]  # the sixth token of the first prompt's greedy output
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop_token_ids=[stop])
    synchronous, _, _ = _run(tiny_model_dir, "off", params)
    overlapped, llm, _ = _run(tiny_model_dir, "on", params)
    assert overlapped == synchronous
    assert synchronous[0][0][2] == "stop" and len(synchronous[0][0][0]) <= 6
    assert_no_leaks(llm.engine)


def test_redrawn_rows_drop_what_the_queued_step_fed_them():
    """The PyTorch sampler races each row's likeliest tokens and races a row it could not cover
    again over the whole vocabulary once read back (the demo model's rows are flat: many are not
    covered): a step queued behind it was fed the first token, and its row for that sequence is
    dropped and computed again. 16 sequences sample (the candidates' race needs as many)."""
    params = SamplingParams(n=4, temperature=1.0, top_p=0.95, seed=11, max_tokens=12)
    synchronous, _, _ = _run(DEFAULT_MODEL, "off", params, max_num_seqs=16, torch_sampler=True)
    overlapped, llm, _ = _run(DEFAULT_MODEL, "on", params, max_num_seqs=16, torch_sampler=True)
    assert overlapped == synchronous
    assert_no_leaks(llm.engine)
    assert llm.engine.stats().overlapped_steps > 0


@pytest.mark.parametrize("drafts_ahead", [False, True])
def test_abort_while_a_step_is_queued(tiny_model_dir, drafts_ahead):
    """drafts_ahead: the queued steps carry drafts found ahead (the aborted sequence's too)."""
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    synchronous, _, outs = _run(tiny_model_dir, "off", params)
    proposer = _Foresight({tuple(o.prompt_token_ids): o.outputs[0].token_ids for o in outs}) if drafts_ahead else None
    llm = LLM(EngineConfig(model=tiny_model_dir, overlap_steps="on", num_kv_blocks=256, block_size=4,
                           max_num_batched_tokens=64, max_num_seqs=4), proposer=proposer)
    engine = llm.engine
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, params)
    while engine._launched is None or engine._launched.out.scheduled[0].start < 12:
        engine.step()
    queued = {s.seq.request_id: s.draft for s in engine._launched.out.scheduled}
    assert bool(queued["r1"]) == drafts_ahead
    assert engine.abort("r1")
    done = {}
    while engine.has_unfinished():
        for out in engine.step(collect="finished"):
            done[out.request_id] = out
    assert sorted(done) == ["r0", "r2", "r3"]
    for i in (0, 2, 3):
        assert done[f"r{i}"].outputs[0].token_ids == synchronous[i][0][0]
    engine.step()  # whatever was still queued for the aborted sequence is applied to nothing
    assert_no_leaks(engine)
    assert not drafts_ahead or proposer.records


@pytest.mark.parametrize("overlap", ["off", "on"])
def test_with_overlap_steps_after_drafting_ones_are_queued_ahead_too(tiny_model_dir, overlap, monkeypatch):
    """With overlap on, every step after the first is queued ahead of its predecessor's tokens, the
    step after a drafting step too (its rows moved on the device by what the draft got): no plain
    decode step is run otherwise, and none is priced as the overlap a draft forgoes
    (StepCost.observe_sync). Without overlap every plain step is a plain step's cost."""
    monkeypatch.setattr(OverlapChoice, "ahead", lambda self, seqs: True)
    llm = LLM(EngineConfig(model=tiny_model_dir, overlap_steps=overlap, num_kv_blocks=256, block_size=4,
                           max_num_batched_tokens=64, max_num_seqs=4), proposer=build_proposer())
    engine, seen = llm.engine, {"plain": 0, "sync": 0}
    observe, observe_sync = engine.step_cost.observe, engine.step_cost.observe_sync

    def counted(seqs, rows, seconds):
        seen["plain"] += rows == 0
        observe(seqs, rows, seconds)

    def counted_sync(seqs, seconds):
        seen["sync"] += 1
        observe_sync(seqs, seconds)

    monkeypatch.setattr(engine.step_cost, "observe", counted)
    monkeypatch.setattr(engine.step_cost, "observe_sync", counted_sync)
    llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True), use_tqdm=False)
    stats = engine.stats()
    assert stats.spec.total_drafted > 0
    if overlap == "on":
        assert 0 < seen["plain"] <= stats.overlapped_steps == stats.steps - 1 and seen["sync"] == 0
    else:
        assert seen["plain"] > 0 and seen["sync"] == 0 and engine.step_cost.forgone(4) == 0.0
    assert_no_leaks(engine)


class _Foresight:
    """A proposer that knows each request's greedy output: at every step it can queue ahead it
    drafts ahead of the token in flight, beginning with that token (or, every other draft, a token
    the sequence does not get) and then the two true tokens after it."""

    def __init__(self, truth: dict[tuple[int, ...], list[int]]) -> None:
        self.truth, self.outputs, self.proposed, self.records = truth, {}, 0, []  # truth: by prompt
        self.at = {}  # id of each draft proposed -> where its first token is in the output

    def add_sequence(self, seq_id, group_id, prompt_token_ids, prediction=(), output=None) -> None:
        self.outputs[seq_id] = (self.truth[tuple(prompt_token_ids)], output)

    def extend(self, seq_id, token_ids) -> None:
        raise AssertionError("the engine hands its own output lists")

    def record(self, seq_id, draft, num_accepted) -> None:
        self.records.append((draft.tokens, num_accepted))

    def finish(self, seq_id, aborted=False) -> None:
        self.outputs.pop(seq_id)

    def will_search(self, n, budget, cost) -> bool:
        return True

    def propose(self, queries, budget, cost) -> list[Draft]:
        return [EMPTY_DRAFT] * len(queries)

    def propose_ahead(self, queries, budget, cost, in_flight) -> list[Draft]:
        drafts = []
        for query in queries:
            truth, output = self.outputs[query.seq_id]
            # The token in flight, or where a draft of its own is in flight, the one after the
            # tokens it covers (all right but the first, which may not be); then two.
            flying = in_flight.get(query.seq_id)
            at = len(output) if flying is None else self.at[id(flying[0])] + flying[1]
            ahead = truth[at:at + 3]
            if query.max_len < 2 or len(ahead) < 3:
                drafts.append(EMPTY_DRAFT)
                continue
            self.proposed += 1
            first = ahead[0] if self.proposed % 2 else ahead[0] + 1
            drafts.append(Draft((first, *ahead[1:])))
            self.at[id(drafts[-1])] = at
        return drafts


@pytest.mark.parametrize("after_drafts", ["ahead", "wait"])
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
    SamplingParams(temperature=0.8, seed=5, max_tokens=24, ignore_eos=True),  # noise keyed by position
], ids=["greedy", "sampled"])
def test_drafts_found_ahead_of_the_token_in_flight_are_fed_after_it(tiny_model_dir, params, after_drafts,
                                                                   monkeypatch):
    """A step queued ahead carries drafts found before the previous step's token reached the
    host: each sequence is fed its own token, then the draft's tokens after the one the proposer
    expected; they are verified like any draft (the outputs are plain decoding's), and the
    proposer hears how the whole draft fared: nothing of it where the expected token was not the
    sequence's, although what followed was accepted. The step after a drafting step is queued
    ahead too (the proposer drafts from the token after the draft in flight) where OverlapChoice
    says so: then no step forgoes the overlap, and the step cost keeps each at its own time; where
    it says to wait, a drafting step is kept with the overlap the step after it forgoes."""
    monkeypatch.setattr(OverlapChoice, "ahead", lambda self, seqs: after_drafts == "ahead")
    plain, _, outs = _run(tiny_model_dir, "off", params)
    proposer = _Foresight({tuple(o.prompt_token_ids): o.outputs[0].token_ids for o in outs})
    observed = []
    monkeypatch.setattr(StepCost, "forgone", lambda self, seqs: 100.0)
    monkeypatch.setattr(StepCost, "observe", lambda self, seqs, rows, seconds: observed.append((rows, seconds)))
    foresight, llm, _ = _run(tiny_model_dir, "on", params, proposer=proposer)
    assert foresight == plain
    drafting = [seconds for rows, seconds in observed if rows > 0]
    assert drafting and all(seconds < 100.0 for rows, seconds in observed if rows == 0)
    assert all((seconds < 100.0) == (after_drafts == "ahead") for seconds in drafting)
    engine = llm.engine
    assert (engine.stats().overlapped_steps == engine.stats().steps - 1) == (after_drafts == "ahead")
    records = set(proposer.records)
    assert {n for _, n in records} == {0, 3}  # the expected token wrong (then 2 accepted after it), or right
    assert all(len(tokens) == 3 for tokens, _ in records)
    spec = engine.stats().spec
    assert spec.total_drafted == 2 * len(proposer.records) and spec.total_accepted == spec.total_drafted
    assert_no_leaks(engine)


@pytest.mark.parametrize("greedy", [True, False])
def test_trace_replay_through_steps_queued_after_drafts_gives_the_recorded_tokens(tiny_model_dir, greedy,
                                                                                 monkeypatch):
    """Trace replay forces each position's recorded token: in a step queued behind a drafting step,
    a row's position is known on the device only, and its recorded token is chosen there (with the
    C sampler, after reading the amount back; with the PyTorch one, on the device)."""
    monkeypatch.setattr(OverlapChoice, "ahead", lambda self, seqs: True)
    recorded = [[(7 * i + 3 * j) % 200 + 5 for j in range(20)] for i in range(len(PROMPTS))]
    for use_kernels in (True, False):
        llm = LLM(EngineConfig(model=tiny_model_dir, overlap_steps="on", num_kv_blocks=256, block_size=4,
                               max_num_batched_tokens=64, max_num_seqs=4))
        engine = llm.engine
        engine.sampler.use_kernels = use_kernels
        truth = {tuple(engine.tokenizer.encode(p)): r for p, r in zip(PROMPTS, recorded)}
        engine.proposer = proposer = _Foresight(truth)
        for i, prompt in enumerate(PROMPTS):
            params = SamplingParams(temperature=0.0 if greedy else 0.9, seed=1, max_tokens=20, ignore_eos=True,
                                    replay_token_ids=[recorded[i]])
            engine.add_request(f"r{i}", prompt, params)
        done = {}
        while engine.has_unfinished():
            for out in engine.step(collect="finished"):
                done[out.request_id] = out.outputs[0].token_ids
        assert [done[f"r{i}"] for i in range(len(PROMPTS))] == recorded
        stats = engine.stats()
        assert proposer.records and stats.spec.total_accepted > 0 and stats.overlapped_steps == stats.steps - 1
        assert_no_leaks(engine)


@pytest.mark.parametrize("odd", [SamplingParams(temperature=0.8, seed=5, max_tokens=20, repetition_penalty=1.3,
                                                presence_penalty=0.5),
                                 SamplingParams(temperature=0.0, max_tokens=20, json_object=True)],
                         ids=["penalties", "json"])
def test_one_request_sampled_row_by_row_does_not_hold_the_others_steps_back(odd):
    """Among seven plain sequences, one with penalties or held to JSON (sampled row by row): the
    steps are still queued ahead (before 2026-12-07, not one was): every one after the first where
    the odd one has penalties (its rows read the token fed them on the device), at least half
    where it is held to JSON (not the one after a step whose token its constraint refused: the
    step queued behind fed that token, and its row is dropped), and every output is the
    synchronous engine's."""
    plain = SamplingParams(n=7, temperature=0.8, seed=3, max_tokens=20, ignore_eos=True)
    outputs = {}
    for overlap in ("off", "on"):
        llm = LLM(EngineConfig(model=DEFAULT_MODEL, overlap_steps=overlap, num_kv_blocks=256, block_size=4,
                               max_num_seqs=8))
        engine = llm.engine
        engine.add_request("plain", PROMPTS[0], plain)
        engine.add_request("odd", PROMPTS[1], odd)
        done = {}
        while engine.has_unfinished():
            done.update((o.request_id, [(c.token_ids, c.text) for c in o.outputs]) for o in engine.step("finished"))
        outputs[overlap] = done
        assert_no_leaks(engine)
    assert outputs["on"] == outputs["off"]
    stats = engine.stats()
    assert stats.overlapped_steps >= stats.steps // 2
    if odd.needs_penalties:
        assert stats.overlapped_steps == stats.steps - 1


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, repetition_penalty=1.3, frequency_penalty=0.4),
    SamplingParams(n=2, temperature=0.9, seed=4, max_tokens=24, ignore_eos=True, presence_penalty=0.8,
                   repetition_penalty=0.9),
], ids=["greedy", "sampled"])
@pytest.mark.parametrize("torch_sampler", [False, True], ids=["c-sampler", "torch-sampler"])
def test_penalized_sequences_are_queued_ahead_after_their_drafts_too(tiny_model_dir, params, torch_sampler,
                                                                     monkeypatch):
    """Every sequence penalized, drafts partly wrong: the steps are queued ahead,
    each penalized row's history ending in the tokens the step in flight gives its sequence, on
    the device (after a draft, its rows counted as far as it accepts), and the outputs are the
    synchronous engine's. Before, such sequences sat queued steps out, and where they were more
    than a quarter of those running, no step was queued ahead."""
    monkeypatch.setattr(OverlapChoice, "ahead", lambda self, seqs: True)
    synchronous, _, outs = _run(tiny_model_dir, "off", params, torch_sampler=torch_sampler)
    proposer = _Foresight({tuple(o.prompt_token_ids): o.outputs[0].token_ids for o in outs})
    overlapped, llm, _ = _run(tiny_model_dir, "on", params, proposer=proposer, torch_sampler=torch_sampler)
    assert overlapped == synchronous
    stats = llm.engine.stats()
    assert stats.steps - stats.overlapped_steps <= 2  # the first, and one whose tokens end every sequence by length
    accepted = [n for _, n in proposer.records]
    assert 0 in accepted and 3 in accepted  # drafts in flight rejected and accepted whole
    assert_no_leaks(llm.engine)


def test_where_no_step_can_be_queued_ahead_drafting_is_weighed_against_the_plain_steps_run(monkeypatch):
    """With overlapped steps a plain step is costed as one queued ahead; where none can be (a
    client owed a slot, blocks short: here the scheduler says no), the plain steps run after plain
    steps are the baseline the policy weighs drafting against. Before, nothing was: it never
    searched."""
    monkeypatch.setattr(Scheduler, "can_plan_ahead", lambda self, prev, shifts=False: False)
    llm = LLM(EngineConfig(model=DEFAULT_MODEL, overlap_steps="on", num_kv_blocks=256, block_size=4, max_num_seqs=8),
              proposer=build_proposer())
    params = SamplingParams(n=4, temperature=0.8, seed=1, max_tokens=40, ignore_eos=True)
    llm.generate(PROMPTS[:2], params, use_tqdm=False)
    engine = llm.engine
    assert engine.stats().overlapped_steps == 0
    assert engine.step_cost.measured(8) and engine.step_cost.plain(8) is not None
    assert engine.proposer.stats()["searches"] > 0
    assert_no_leaks(engine)


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
@pytest.mark.parametrize("torch_sampler", [False, True], ids=["c-sampler", "torch-sampler"])
def test_sequences_held_to_json_are_queued_ahead_and_their_refused_choices_dropped(temperature, torch_sampler,
                                                                                   monkeypatch):
    """Every sequence held to JSON, drafts partly wrong: steps are queued ahead of their tokens,
    each row checked against its constraint once read back with its state after the tokens
    before it; where the constraint refuses a row's own choice, the step queued behind fed that
    sequence the refused token (moved its rows by a wrong count, after a draft): its rows there
    are dropped and computed again. The outputs are the synchronous engine's. Before 2026-12-07
    no step was queued ahead of such sequences."""
    monkeypatch.setattr(OverlapChoice, "ahead", lambda self, seqs: True)
    dropped, postprocess = [], Scheduler.postprocess

    def counted(self, out, result, dropped_here=frozenset(), behind=None, dropped_behind=frozenset()):
        dropped.append((len(dropped_here), sum(s.seq.seq_id in dropped_behind for s in out.scheduled if s.draft)))
        return postprocess(self, out, result, dropped_here, behind, dropped_behind)
    monkeypatch.setattr(Scheduler, "postprocess", counted)
    params = SamplingParams(n=2, temperature=temperature, seed=7, max_tokens=24, json_object=True)
    outputs, truth = {}, None
    for overlap in ("off", "on"):
        llm = LLM(EngineConfig(model=DEFAULT_MODEL, overlap_steps=overlap, num_kv_blocks=256, block_size=4,
                               max_num_seqs=8))
        llm.engine.sampler.use_kernels = not torch_sampler  # (the PyTorch sampler moves rows on the device)
        if truth is not None:  # the synchronous engine's first samples
            llm.engine.proposer = _Foresight(truth)
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        outputs[overlap] = [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outs]
        truth = {tuple(o.prompt_token_ids): o.outputs[0].token_ids for o in outs}
    assert outputs["on"] == outputs["off"]
    stats = llm.engine.stats()
    assert stats.overlapped_steps > 0 and stats.spec.total_accepted > 0
    assert any(here for here, _ in dropped)  # refused choices the step behind was fed
    assert temperature == 0.0 or any(redone for _, redone in dropped)  # and rows moved by a wrong count
    assert_no_leaks(llm.engine)
