"""Mixed traffic, every feature at once: requests drawn at random (greedy and seeded sampling,
samples per request, penalties, min_tokens, stop strings and stop ids, logit bias, JSON mode,
logprobs, a dedent stop, predicted outputs, prompts sharing prefixes, arrivals and aborts at
random steps) go through engines that draft, roll back, preempt, chunk prompts, queue steps
ahead and run the static step function CUDA graphs replay, and each request must come out as it
does from a plain engine with room to spare: the same tokens, text and finish reason, logprobs
within rounding, no KV block kept. The features are tested one by one elsewhere; this is where
they meet. Each workload's seed is fixed, so a failure repeats;
python -c "from tests.engine.test_mixed_traffic import soak; soak(range(100))" runs more of them."""
from __future__ import annotations

import dataclasses
import functools
import random

import pytest

from engine import LLM, EngineConfig, SamplingParams
from engine.config import DEFAULT_MODEL
from engine.cuda_graphs import StepGraphs
from engine.models.registry import read_model_config
from engine.static_step import StaticStep
from fastcodellama.drafting import SpecConfig, build_proposer
from fastcodellama.job.tasks import load_tasks
from tests.engine.helpers import ScriptedProposer, assert_no_leaks

PROMPTS = tuple(t["prompt"] for t in load_tasks(None, 8))
VOCAB = read_model_config(DEFAULT_MODEL).vocab_size
ROOMY = dict(num_kv_blocks=400, block_size=4, max_num_batched_tokens=96, max_num_seqs=8)
TIGHT = dict(num_kv_blocks=90, block_size=4, max_num_batched_tokens=64, max_num_seqs=12)  # preempts


@dataclasses.dataclass(frozen=True)
class Variant:
    limits: dict
    proposer: str | None  # "fixed", "adaptive" (SpecConfig.policy), "random" (ScriptedProposer), None
    torch_sampler: bool = False  # the sampler a GPU runs, not the C kernel
    overlap: str = "off"
    static: bool = False  # decode and verify steps through the static step function CUDA graphs replay


VARIANTS = {
    "copy drafts": Variant(ROOMY, "fixed"),
    "copy drafts, preempted": Variant(TIGHT, "fixed"),
    "copy drafts, steps ahead": Variant(ROOMY, "fixed", overlap="on"),
    "copy drafts, steps ahead, torch sampler": Variant(ROOMY, "fixed", True, "on"),
    "adaptive policy, steps ahead, preempted": Variant(TIGHT, "adaptive", True, "on"),
    "copy drafts, steps ahead, preempted": Variant(TIGHT, "fixed", True, "on"),
    "copy drafts, static steps, steps ahead": Variant(ROOMY, "fixed", True, "on", static=True),
    "random drafts": Variant(ROOMY, "random"),  # (it cannot draft ahead: steps wait for it)
    "plain, steps ahead": Variant(ROOMY, None, overlap="on"),
}
SEEDS = (0, 2, 4, 7, 10)


@functools.lru_cache(maxsize=None)
def workload(seed: int) -> tuple[tuple, ...]:
    """(request id, prompt, params, arrival step, abort step or None, prediction or None) each."""
    rng = random.Random(seed)
    requests = []
    for i in range(rng.randint(4, 10)):
        base = rng.choice(PROMPTS)
        prompt = base if rng.random() < 0.6 else base[:rng.randint(5, len(base))]  # shared prefixes
        temperature = rng.choice([0.0, 0.0, 0.7, 1.0])
        kw = dict(n=rng.choice([1, 1, 2, 3]), temperature=temperature, max_tokens=rng.randint(1, 40),
                  seed=rng.randint(0, 10**6))
        if temperature > 0:
            kw.update(top_p=rng.choice([1.0, 0.9]), top_k=rng.choice([0, 20]), min_p=rng.choice([0.0, 0.05]))
        if rng.random() < 0.15:
            kw.update(repetition_penalty=1.2)
        if rng.random() < 0.15:
            kw.update(presence_penalty=0.5, frequency_penalty=0.3)
        if rng.random() < 0.3:
            kw.update(min_tokens=rng.randint(0, min(6, kw["max_tokens"])))
        if rng.random() < 0.4:
            kw.update(stop=tuple(rng.sample(["\n\n", "return", ")", "\n    #", ":"], rng.randint(1, 2))))
        if rng.random() < 0.2:
            kw.update(stop_token_ids=(rng.randint(3, VOCAB - 1),))
        if rng.random() < 0.3:
            kw.update(ignore_eos=True)
        if rng.random() < 0.3:
            kw.update(logprobs=True, top_logprobs=rng.choice([0, 2]))
        if rng.random() < 0.2:
            kw.update(logit_bias=((rng.randint(3, VOCAB - 1), rng.choice([-100.0, 5.0])),))
        if rng.random() < 0.1:
            kw.update(stop_at_dedent=4)
        if rng.random() < 0.15:
            kw.update(speculate=False)
        if rng.random() < 0.05:
            kw.update(json_object=True, ignore_eos=False, stop=(), stop_at_dedent=None)
        prediction = rng.choice(PROMPTS)[rng.randint(0, 50):][:rng.randint(0, 200)] if rng.random() < 0.25 else None
        arrival = rng.randint(0, 15)
        abort = rng.randint(arrival + 1, arrival + 20) if rng.random() < 0.15 else None
        requests.append((f"r{i}", prompt, SamplingParams(**kw), arrival, abort, prediction))
    return tuple(requests)


def run(requests, variant: Variant):
    """Steps the engine through the workload: the finished requests' outputs by id, the ids
    aborted before they ended, and the engine (checked for leaks)."""
    backend = dict(attention_backend="torch") if variant.static else {}
    llm = LLM(EngineConfig(model=DEFAULT_MODEL, overlap_steps=variant.overlap, **variant.limits, **backend),
              proposer=_proposer(variant.proposer))
    engine = llm.engine
    if variant.torch_sampler:
        engine.sampler.use_kernels = False
    if variant.static:
        runner, limits = engine.runner, variant.limits
        widest = -(-engine.max_model_len // limits["block_size"])  # a block table as long as any sequence's
        static = StaticStep(limits["max_num_seqs"], limits["max_num_batched_tokens"], widest, limits["block_size"],
                            runner.num_blocks, runner.model_config.vocab_size, runner.device)
        runner.graphs = StepGraphs(runner.model, runner.kv_caches, runner.backend, static, capture=False)
    pending = sorted(requests, key=lambda r: r[3])
    aborts = {r[0]: r[4] for r in requests if r[4] is not None}
    done, aborted, step = {}, set(), 0
    while pending or engine.has_unfinished():
        while pending and pending[0][3] <= step:
            request_id, prompt, params, _, _, prediction = pending.pop(0)
            engine.add_request(request_id, prompt, params, prediction=prediction)
        for request_id in [r for r, at in aborts.items() if at == step]:
            del aborts[request_id]
            if engine.abort(request_id):
                aborted.add(request_id)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = [(list(c.token_ids), c.text, c.finish_reason, c.logprobs) for c in out.outputs]
        step += 1
        assert step < 2000, "the engine stopped making progress"
    engine.step()  # whatever a queued step still held for an aborted sequence is applied to nothing
    assert_no_leaks(engine)
    return done, aborted, engine


@functools.lru_cache(maxsize=None)
def reference(seed: int):
    return run(workload(seed), Variant(dict(num_kv_blocks=2000, block_size=16, max_num_batched_tokens=2048,
                                            max_num_seqs=64), None))


def _proposer(kind: str | None):
    if kind == "random":  # drafts nothing like the text: everything after a draft's first row rolls back
        return ScriptedProposer(random_drafts=True, vocab=VOCAB, max_draft=3)
    return build_proposer(SpecConfig(policy=kind)) if kind else None


def check(seed: int, variant: str) -> dict:
    """Runs one workload through one variant against the reference; returns what it exercised."""
    want, want_aborted, _ = reference(seed)
    got, aborted, engine = run(workload(seed), VARIANTS[variant])
    compared = sorted(set(want) - aborted)  # a request aborted in either run is compared in neither
    assert sorted(set(got) - want_aborted) == compared
    for request_id in compared:
        for i, (mine, theirs) in enumerate(zip(got[request_id], want[request_id], strict=True)):
            assert mine[:3] == theirs[:3], f"{request_id}, sample {i}"
            if theirs[3] is not None:  # a verify row's logprob may part from a decode row's in the last bits
                assert mine[3] == pytest.approx(theirs[3], abs=1e-4), f"{request_id}, sample {i}"
    stats = engine.stats()
    graphs = engine.runner.graphs
    return {"compared": len(compared), "drafted": stats.spec.total_drafted, "accepted": stats.spec.total_accepted,
            "preempted": engine.scheduler.num_preemptions, "ahead": stats.overlapped_steps,
            "static": graphs.replays if graphs is not None else 0}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mixed_traffic_comes_out_as_from_a_plain_engine(seed, variant):
    seen = check(seed, variant)
    v = VARIANTS[variant]
    # What each variant is there for happened in each of these workloads.
    assert seen["compared"] > 0
    assert seen["drafted"] > 0 or v.proposer in (None, "adaptive")
    assert seen["preempted"] > 0 or v.limits is not TIGHT
    assert seen["ahead"] > 0 or v.overlap == "off"
    assert seen["static"] > 0 or not v.static


def soak(seeds) -> None:
    """Every variant on more workloads (not part of the suite: minutes)."""
    for seed in seeds:
        for variant in VARIANTS:
            check(seed, variant)
        print(f"seed {seed}: every variant as the plain engine", flush=True)
