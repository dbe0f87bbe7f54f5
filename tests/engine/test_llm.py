"""End-to-end engine behaviour on a tiny random Llama: exactness, batching, preemption, limits."""
from __future__ import annotations

import dataclasses
import sys
import threading
import time

import pytest

from engine import LLM, EngineConfig, SamplingParams
from engine.proposer import Draft
from engine.llm_engine import LLMEngine
from tests.engine.helpers import ScriptedProposer, assert_no_leaks, hf_greedy

PROMPTS = [
    "def fib(n):\n    ",
    "import os\nimport sys\n\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "x = 1",
    "# A function that sorts a list of numbers in place using insertion sort, returning nothing\ndef sort(",
]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, num_kv_blocks=256, block_size=4, max_num_batched_tokens=64, max_num_seqs=8)


def greedy(max_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_greedy_matches_transformers_generate(llm, tiny_model_dir):
    outs = llm.generate(PROMPTS, greedy())
    for prompt, out in zip(PROMPTS, outs):
        ids = llm.tokenizer.encode(prompt)
        assert out.outputs[0].token_ids == hf_greedy(tiny_model_dir, ids, 24), prompt
        assert out.outputs[0].finish_reason == "length"
    assert_no_leaks(llm.engine)


def test_text_is_the_decoded_tokens(llm):
    for out in llm.generate(PROMPTS[:3], greedy()):
        assert out.outputs[0].text == llm.tokenizer.decode(out.outputs[0].token_ids)


def test_request_added_mid_flight_gives_the_same_tokens(llm):
    alone = llm.generate([PROMPTS[2]], greedy())[0].outputs[0].token_ids
    engine: LLMEngine = llm.engine
    engine.add_request("first", PROMPTS[0], greedy(40))
    for _ in range(7):
        engine.step()
    engine.add_request("late", PROMPTS[2], greedy())
    done = {}
    while engine.has_unfinished():
        for out in engine.step(collect="finished"):
            done[out.request_id] = out
    assert done["late"].outputs[0].token_ids == alone
    assert_no_leaks(engine)


def test_preemption_does_not_change_outputs(tiny_model_dir, llm):
    reference = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy(40))]
    small = LLM(tiny_model_dir, num_kv_blocks=40, block_size=4, max_num_batched_tokens=64, max_num_seqs=8)
    outs = small.generate(PROMPTS, greedy(40))
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert small.engine.scheduler.num_preemptions > 0
    assert_no_leaks(small.engine)


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_tokens=16, seed=1234, ignore_eos=True)
    alone = llm.generate([PROMPTS[1]], p)[0].outputs[0].token_ids
    crowded = llm.generate(PROMPTS, [greedy()] + [p] * 4)[1].outputs[0].token_ids
    assert alone == crowded
    other_seed = llm.generate([PROMPTS[1]], SamplingParams(temperature=0.9, max_tokens=16, seed=99, ignore_eos=True))
    assert other_seed[0].outputs[0].token_ids != alone


def test_n_samples_share_the_prompt_and_differ(llm):
    out = llm.generate([PROMPTS[4]], SamplingParams(n=6, temperature=1.0, max_tokens=12, seed=7, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == list(range(6))
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    # Each sample equals the same sample index generated with the same seed again.
    again = llm.generate([PROMPTS[4]], SamplingParams(n=6, temperature=1.0, max_tokens=12, seed=7, ignore_eos=True))[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    assert_no_leaks(llm.engine)


def test_samples_share_the_prompts_blocks_and_compute_only_its_last_token(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=256, block_size=4, max_num_batched_tokens=64, max_num_seqs=8)
    engine = llm.engine
    engine.add_request("r", PROMPTS[4], SamplingParams(n=4, max_tokens=8, temperature=1.0, ignore_eos=True))
    while len(engine.scheduler.running) < 4:
        engine.step()
    tables = [s.block_table for s in engine.scheduler.running]
    prompt_len = len(engine.scheduler.running[0].prompt_token_ids)
    full = (prompt_len - 1) // 4  # the block of the last prompt token is each sample's own (copied)
    assert all(t[:full] == tables[0][:full] for t in tables)
    assert all(engine.block_manager.refcounts[b] == 4 for b in tables[0][:full])
    assert len({t[full] for t in tables}) == 4
    while engine.has_unfinished():
        engine.step()
    assert engine.stats().prompt_tokens_computed == prompt_len + 3  # the first sample's prompt, then 1 each
    assert_no_leaks(engine)


def test_samples_joining_late_take_the_prompt_from_the_cache(tiny_model_dir):
    params = SamplingParams(n=12, temperature=1.0, max_tokens=10, seed=3, ignore_eos=True)
    roomy = LLM(tiny_model_dir, num_kv_blocks=256, block_size=4, max_num_batched_tokens=64, max_num_seqs=16)
    tight = LLM(tiny_model_dir, num_kv_blocks=256, block_size=4, max_num_batched_tokens=64, max_num_seqs=4)
    expected = [c.token_ids for c in roomy.generate([PROMPTS[4]], params)[0].outputs]
    engine = tight.engine
    engine.add_request("r", PROMPTS[4], params)
    prompt_len = len(tight.tokenizer.encode(PROMPTS[4]))
    assert prompt_len % 4                                   # a partly filled last block: copied, not computed
    seen_late = 0
    while engine.has_unfinished():
        engine.step()
        seen_late += sum(seq.sample_index >= 4 for seq in engine.scheduler.running)
    assert seen_late > 0  # samples that started after the first 4 finished
    assert engine.stats().prompt_tokens_computed == prompt_len + 11   # the others compute the last token only
    assert [c.token_ids for c in tight.generate([PROMPTS[4]], params)[0].outputs] == expected
    assert_no_leaks(engine)
    engine.add_request("aborted", PROMPTS[4], params)   # aborted with samples still waiting
    for _ in range(3):
        engine.step()
    assert engine.scheduler.waiting and engine.abort("aborted")
    assert_no_leaks(engine)


def test_a_request_that_extends_a_cached_prompt_computes_only_the_new_tokens(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=256, block_size=4, max_num_batched_tokens=64, max_num_seqs=8)
    uncached = LLM(tiny_model_dir, num_kv_blocks=256, block_size=4, max_num_batched_tokens=64, max_num_seqs=8,
                   enable_prefix_caching=False)
    ids = llm.tokenizer.encode(PROMPTS[2] + PROMPTS[4])
    first, longer = ids[:21], ids[:29]  # an editor's prompt, then the same file a few keystrokes on
    for engine_llm in (llm, uncached):
        assert engine_llm.generate([first], greedy(6))[0].cached_prompt_tokens == 0
    before = llm.engine.stats().prompt_tokens_computed
    result = llm.generate([longer], greedy(6))[0]
    out = result.outputs[0]
    assert llm.engine.stats().prompt_tokens_computed - before == 29 - 21  # token 20 copied from block 5
    assert result.cached_prompt_tokens == 21  # what a request reports as read from the cache
    again = uncached.generate([longer], greedy(6))[0]
    assert out.token_ids == again.outputs[0].token_ids and again.cached_prompt_tokens == 0
    assert uncached.engine.stats().prompt_tokens_computed == 21 + 29
    assert_no_leaks(llm.engine)


def test_the_proposer_is_asked_once_per_step_with_the_cost_the_engine_learns(tiny_model_dir):
    class Counting(ScriptedProposer):
        def __init__(self) -> None:
            super().__init__(continuations={})
            self.costs = []

        def propose(self, queries, budget, cost):
            self.costs.append((cost, cost.observations))
            return super().propose(queries, budget, cost)

    counting = Counting()
    llm = LLM(tiny_model_dir, proposer=counting, num_kv_blocks=64, block_size=4)
    plain = LLM(tiny_model_dir, num_kv_blocks=64, block_size=4)
    out = llm.generate([PROMPTS[0]], greedy(12))[0].outputs[0]
    assert out.token_ids == plain.generate([PROMPTS[0]], greedy(12))[0].outputs[0].token_ids
    assert len(counting.costs) == llm.engine.stats().steps
    assert all(cost is llm.engine.step_cost for cost, _ in counting.costs)
    seen = [n for _, n in counting.costs]
    assert seen == sorted(seen) and seen[-1] >= 10  # every decode step after the prefill taught it
    assert llm.engine.step_cost.plain(1) > 0
    assert_no_leaks(llm.engine)


def test_the_proposer_sees_every_decoding_sequence_and_reads_its_queries_only_to_draft(tiny_model_dir):
    """One query per decoding sequence, max_len 0 where its request turned drafting off; a
    proposer that answers from the number of queries alone (a policy that will not draft this
    step) has the engine build none of them."""
    class EveryOther(ScriptedProposer):
        def __init__(self) -> None:
            super().__init__(continuations={})
            self.unread, self.read = [], []

        def propose(self, queries, budget, cost):
            if not queries:  # the last step: nothing decodes any more
                return []
            if len(self.unread) <= len(self.read):
                self.unread.append(queries)
                return [Draft(())] * len(queries)
            self.read.append(sorted(q.max_len for q in queries))
            return super().propose(queries, budget, cost)

    proposer = EveryOther()
    llm = LLM(tiny_model_dir, proposer=proposer, num_kv_blocks=64, block_size=4)
    llm.generate([PROMPTS[0], PROMPTS[1]], [greedy(8), greedy(8, speculate=False)])
    assert len(proposer.read) >= 3 and all(len(q) == 2 for q in proposer.unread)
    assert all(not q._lens for q in proposer.unread)
    assert all(lens[0] == 0 for lens in proposer.read)  # the request without drafts
    assert proposer.read[0][1] > 0  # the other may draft up to its max_tokens


def test_stop_strings_and_stop_tokens(llm):
    base = llm.generate([PROMPTS[0]], greedy(30))[0].outputs[0]
    text = base.text
    stop = text[10:13]
    out = llm.generate([PROMPTS[0]], greedy(30, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[: text.find(stop)]
    assert stop not in out.text
    token = base.token_ids[5]
    out = llm.generate([PROMPTS[0]], greedy(30, stop_token_ids=(token,)))[0].outputs[0]
    assert out.token_ids == base.token_ids[: base.token_ids.index(token) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == token
    assert_no_leaks(llm.engine)


def test_min_tokens_bans_eos(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=128, block_size=4)
    eos = llm.tokenizer.eos_id
    out = llm.generate(["x"], SamplingParams(temperature=0.0, max_tokens=20, min_tokens=20, stop_token_ids=(eos, 3)))
    assert eos not in out[0].outputs[0].token_ids and 3 not in out[0].outputs[0].token_ids


def test_logprobs_are_of_the_chosen_tokens(llm):
    out = llm.generate([PROMPTS[0]], greedy(6, logprobs=True))[0].outputs[0]
    assert len(out.logprobs) == 6 and all(lp <= 0 for lp in out.logprobs)


def test_top_logprobs_are_the_likeliest_tokens_drafting_or_not(llm):
    """Each position's k likeliest tokens, likeliest first; greedy picks the first of them; the
    same with drafts verified (rows of a verify step) as without; the same under sampling for
    the chosen tokens' log probabilities."""
    from fastcodellama.drafting import SpecConfig, build_proposer

    params = greedy(12, logprobs=True, top_logprobs=4)
    plain = llm.generate([PROMPTS[0]], params)[0].outputs[0]
    assert len(plain.top_logprobs) == 12
    for token, value, top in zip(plain.token_ids, plain.logprobs, plain.top_logprobs):
        values = [v for _, v in top]
        assert len(top) == 4 and values == sorted(values, reverse=True)
        assert top[0] == (token, pytest.approx(value))
    drafted = LLM(llm.engine.config.model, num_kv_blocks=128, block_size=4,
                  proposer=build_proposer(SpecConfig(policy="fixed")))
    again = drafted.generate([PROMPTS[0]], params)[0].outputs[0]
    assert again.token_ids == plain.token_ids
    assert [[t for t, _ in top] for top in again.top_logprobs] == [[t for t, _ in top] for top in plain.top_logprobs]
    assert [v for top in again.top_logprobs for _, v in top] == pytest.approx(
        [v for top in plain.top_logprobs for _, v in top], abs=1e-4)
    assert llm.generate([PROMPTS[0]], greedy(3, logprobs=True))[0].outputs[0].top_logprobs is None
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=2)
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(logprobs=True, top_logprobs=21)


def test_abort_frees_everything(llm):
    engine = llm.engine
    engine.add_request("a", PROMPTS[0], SamplingParams(n=3, max_tokens=50, temperature=1.0))
    engine.add_request("b", PROMPTS[1], greedy(50))
    for _ in range(5):
        engine.step()
    assert engine.abort("a") and engine.abort("b")
    assert not engine.abort("b")
    assert_no_leaks(engine)


def test_speculation_with_rejections_keeps_greedy_output(tiny_model_dir, llm):
    reference = llm.generate(PROMPTS, greedy(30))
    engine = llm.engine
    continuations = {}
    for i, out in enumerate(reference):
        continuations[i] = out.outputs[0].token_ids
    for corrupt in (0, 3):
        proposer = ScriptedProposer(corrupt_every=corrupt)
        spec = LLM(tiny_model_dir, proposer=proposer, num_kv_blocks=256, block_size=4,
                   max_num_batched_tokens=64, max_num_seqs=8)
        # seq ids are assigned in order, one per prompt
        proposer.continuations = {i: c for i, c in continuations.items()}
        outs = spec.generate(PROMPTS, greedy(30))
        assert [o.outputs[0].token_ids for o in outs] == [c for c in continuations.values()]
        stats = spec.engine.stats().spec
        assert stats.total_drafted > 0
        if corrupt == 0:
            assert stats.total_accepted == stats.total_drafted
        else:
            assert 0 < stats.total_accepted < stats.total_drafted
        assert spec.engine.stats().steps < engine.stats().steps
        assert_no_leaks(spec.engine)


def test_speculative_sampling_equals_plain_sampling_for_a_seed(tiny_model_dir):
    p = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_tokens=24, seed=5, ignore_eos=True)
    plain = LLM(tiny_model_dir, num_kv_blocks=256, block_size=4).generate(PROMPTS[:3], p)
    proposer = ScriptedProposer(random_drafts=True, vocab=512, max_draft=4)
    spec = LLM(tiny_model_dir, proposer=proposer, num_kv_blocks=256, block_size=4)
    # Random drafts are mostly rejected; feed the plain outputs as drafts too.
    outs = spec.generate(PROMPTS[:3], p)
    assert [[c.token_ids for c in o.outputs] for o in outs] == [[c.token_ids for c in o.outputs] for o in plain]
    assert spec.engine.stats().spec.total_drafted > 0
    assert_no_leaks(spec.engine)


def test_speculation_under_preemption(tiny_model_dir, llm):
    reference = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy(40))]
    proposer = ScriptedProposer(continuations={i: c for i, c in enumerate(reference)}, corrupt_every=4)
    small = LLM(tiny_model_dir, proposer=proposer, num_kv_blocks=40, block_size=4, max_num_batched_tokens=64,
                max_num_seqs=8)
    outs = small.generate(PROMPTS, greedy(40))
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert small.engine.scheduler.num_preemptions > 0
    assert_no_leaks(small.engine)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_tokens=-1), "max_tokens"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-0.1), "temperature"),
    (dict(n=0), "n must"),
    (dict(top_k=-1), "top_k"),
    (dict(min_tokens=5, max_tokens=2), "min_tokens"),
    (dict(stop=[""]), "stop"),
    (dict(special_texts=((-1, "[X]"),)), "special_texts"),
    (dict(special_texts=((3, ""),)), "special_texts"),
])
def test_bad_sampling_params_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_bad_prompts_raise_and_leave_nothing(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([""], greedy())
    with pytest.raises(ValueError, match="context"):
        llm.generate(["x " * 600], greedy())
    with pytest.raises(ValueError, match="out of range"):
        llm.generate([[1, 5, 100000]], greedy())
    with pytest.raises(ValueError, match="special_texts"):
        llm.generate(["x"], dataclasses.replace(greedy(), special_texts=((100000, "[X]"),)))
    with pytest.raises(TypeError, match="unknown engine options"):
        LLM(None, no_such_option=1)
    assert_no_leaks(llm.engine)


def test_stats_can_be_read_while_another_thread_changes_the_queues(tiny_model_dir):
    """The server reads the engine's stats on its event loop (/metrics, /health) while the engine's
    thread adds and aborts requests: a read must never meet a queue changing under it."""
    engine = LLMEngine(EngineConfig(model=tiny_model_dir, num_kv_blocks=64, block_size=4, max_num_seqs=1))
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            engine.add_request(f"r{i}", [1, 2, 3], greedy(1), client=f"c{i % 40}")
            if i % 2:
                engine.abort(f"r{i - 1}")
            i += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns as often as they can
    thread = threading.Thread(target=churn)
    thread.start()
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            assert engine.stats().num_waiting >= 0
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
