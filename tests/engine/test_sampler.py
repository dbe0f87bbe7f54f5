"""Sampling: filters, position-keyed noise, and the speculative rule's distribution."""
from __future__ import annotations

import dataclasses
import itertools
import random

import numpy as np
import pytest
import torch

from engine import rejection_sampler
from engine.rejection_sampler import accepted_length, reference_speculative_sample
from engine import sampler as sampler_module
from engine.sampler import (CANDIDATE_ROWS, REDRAWN_AT_ONCE, DeviceHistory, RowKnobs, RowShift, Sampler, SamplingRow,
                            _filter, host_row_noise, kept_scores, race, race_candidates, race_scores, row_noise,
                            sample_key)
from engine.sampling_params import SamplingParams

V = 5  # vocabulary of the toy target
LENGTH = 3  # tokens generated per trial: 125 possible outputs


def _table_model(seed: int = 0) -> dict[tuple[int, ...], torch.Tensor]:
    """A random autoregressive 'model' over V tokens: logits for every prefix up to LENGTH."""
    g = torch.Generator().manual_seed(seed)
    return {prefix: torch.randn(V, generator=g) * 1.5
            for n in range(LENGTH) for prefix in itertools.product(range(V), repeat=n)}


def _exact_distribution(model, sampler: Sampler, params: SamplingParams) -> dict[tuple[int, ...], float]:
    probs = {prefix: sampler.probs(logits[None], [SamplingRow(0, params, 0, len(prefix))])[0]
             for prefix, logits in model.items()}
    dist = {}
    for out in itertools.product(range(V), repeat=LENGTH):
        p = 1.0
        for i in range(LENGTH):
            p *= probs[out[:i]][out[i]].item()
        dist[out] = p
    return dist


def _generate(model, sampler, params, key, verify, draft_fn) -> tuple[int, ...]:
    """The engine's loop in miniature: draft, one 'forward' over all draft prefixes, verify."""
    out: list[int] = []
    while len(out) < LENGTH:
        draft = draft_fn(tuple(out))[: LENGTH - len(out) - 1]
        prefixes = [tuple(out) + tuple(draft[:j]) for j in range(len(draft) + 1)]
        logits = torch.stack([model[p] for p in prefixes])
        out.extend(verify(logits, prefixes, draft, key))
    return tuple(out[:LENGTH])


def _chi_square(counts: dict, dist: dict, trials: int) -> float:
    return sum((counts.get(o, 0) - trials * p) ** 2 / (trials * p) for o, p in dist.items() if trials * p > 0)


def _run(verify_name: str, trials: int = 3000) -> float:
    model = _table_model()
    params = SamplingParams(temperature=0.9, top_k=4)
    sampler = Sampler(eos_ids=())
    gen = torch.Generator().manual_seed(1)

    def draft_fn(prefix):  # deterministic drafts of varying quality
        return [(sum(prefix) + i) % V for i in range(2)]

    def coupled(logits, prefixes, draft, key):
        rows = [SamplingRow(j, params, key, len(p)) for j, p in enumerate(prefixes)]
        tokens = sampler(logits, rows).tokens
        return tokens[: rejection_sampler.accepted_length(tokens, draft) + 1]

    def reference(logits, prefixes, draft, key):
        probs = sampler.probs(logits, [SamplingRow(j, params, key, len(p)) for j, p in enumerate(prefixes)])
        return reference_speculative_sample(probs, draft, gen)

    def plain(logits, prefixes, draft, key):
        probs = sampler.probs(logits[:1], [SamplingRow(0, params, key, len(prefixes[0]))])
        return [int(torch.multinomial(probs[0], 1, generator=gen))]

    verify = {"coupled": coupled, "reference": reference, "plain": plain}[verify_name]
    counts: dict = {}
    for t in range(trials):
        out = _generate(model, sampler, params, sample_key(t, 0), verify, draft_fn)
        counts[out] = counts.get(out, 0) + 1
    return _chi_square(counts, _exact_distribution(model, sampler, params), trials)


# 64 outcomes have non-zero probability (top_k=4 of 5 at each of 3 positions): 63 degrees of
# freedom, whose chi-square 99.9th percentile is about 103.4.
CRITICAL = 103.4


@pytest.mark.parametrize("verify", ["plain", "reference", "coupled"])
def test_speculative_sampling_draws_from_the_plain_distribution(verify):
    assert _run(verify) < CRITICAL


def test_a_broken_acceptance_rule_fails_the_same_test(monkeypatch):
    def too_generous(sampled, draft):  # accepts the first draft token whatever was sampled
        m = 1 if draft else 0
        while m < len(draft) and sampled[m] == draft[m]:
            m += 1
        return m

    monkeypatch.setattr(rejection_sampler, "accepted_length", too_generous)
    assert _run("coupled") > CRITICAL


def test_accepted_length():
    assert accepted_length([1, 2, 3], [1, 2]) == 2
    assert accepted_length([1, 5, 3], [1, 2]) == 1
    assert accepted_length([4], []) == 0


def test_noise_depends_on_key_and_position_only():
    sampler = Sampler(eos_ids=())
    logits = torch.randn(3, 50)
    p = SamplingParams(temperature=1.0)
    key = sample_key(42, 0)
    a = sampler(logits, [SamplingRow(i, p, key, 7) for i in range(3)]).tokens
    b = sampler(logits[[2, 1, 0]], [SamplingRow(2 - i, p, key, 7) for i in range(3)]).tokens
    assert a == b
    many = {tuple(sampler(logits[:1], [SamplingRow(0, p, sample_key(42, i), 7)]).tokens) for i in range(30)}
    assert len(many) > 1


def test_top_k_and_top_p_restrict_the_support():
    sampler = Sampler(eos_ids=())
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    probs_k = sampler.probs(logits, [SamplingRow(0, SamplingParams(temperature=1.0, top_k=2), 0, 0)])[0]
    assert (probs_k[2:] == 0).all() and probs_k[:2].sum().item() == pytest.approx(1.0)
    probs_p = sampler.probs(logits, [SamplingRow(0, SamplingParams(temperature=1.0, top_p=0.7), 0, 0)])[0]
    full = torch.softmax(logits[0], -1)
    assert full[0] < 0.7 < full[0] + full[1]
    assert (probs_p[2:] == 0).all() and (probs_p[:2] > 0).all()


def test_min_p_keeps_what_is_likely_enough_next_to_the_best():
    """A token stays when its probability, after temperature, is at least min_p of the best's."""
    sampler = Sampler(eos_ids=())
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])  # each e (at T=1) times less likely than the one before
    support = [int((sampler.probs(logits, [SamplingRow(0, SamplingParams(temperature=t, min_p=m), 0, 0)])[0] > 0)
                   .sum()) for t, m in ((1.0, 0.3), (1.0, 0.1), (2.0, 0.3), (1.0, 1.0), (1.0, 0.0))]
    assert support == [2, 3, 3, 1, 5]
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams(min_p=1.5)


def test_each_row_of_a_batch_is_filtered_and_drawn_as_it_would_be_alone():
    """One batch mixes rows with and without top-k (the largest k sets the batch's top-k width),
    with and without top-p, at different temperatures; each row's support and token equal what it
    gets in a batch of its own."""
    sampler = Sampler(eos_ids=())
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(3)) * 3
    params = [SamplingParams(temperature=0.7, top_k=0), SamplingParams(temperature=1.0, top_k=3),
              SamplingParams(temperature=1.3, top_p=0.5), SamplingParams(temperature=0.9, top_k=40, top_p=0.9),
              SamplingParams(temperature=1.0, top_k=80), SamplingParams(temperature=0.5, top_k=1),
              SamplingParams(temperature=1.0, min_p=0.2), SamplingParams(temperature=0.8, top_k=30, min_p=0.05)]
    rows = [SamplingRow(i, p, sample_key(5, i), 11) for i, p in enumerate(params)]
    together = sampler.probs(logits, rows)
    alone = [sampler.probs(logits[i:i + 1], [SamplingRow(0, p, rows[i].noise_key, 11)])[0] for i, p in enumerate(params)]
    for i in range(len(params)):
        assert torch.equal(together[i] > 0, alone[i] > 0), params[i]
        assert torch.allclose(together[i], alone[i])
    assert int((together[0] > 0).sum()) == 50 and int((together[1] > 0).sum()) == 3
    assert int((together[5] > 0).sum()) == 1 and int((together[4] > 0).sum()) == 50
    assert 1 <= int((together[6] > 0).sum()) < 50 and int((together[7] > 0).sum()) < 30
    drawn = sampler(logits, rows).tokens
    assert drawn == [sampler(logits[i:i + 1], [SamplingRow(0, p, rows[i].noise_key, 11)]).tokens[0]
                     for i, p in enumerate(params)]


def test_penalties_push_seen_tokens_down():
    sampler = Sampler(eos_ids=())
    logits = torch.tensor([[2.0, 2.0, 2.0]])
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0, frequency_penalty=0.5)
    row = SamplingRow(0, p, 0, 2, history=(2, 0, 0), output_start=1)  # prompt [2], output [0, 0]
    out = sampler.process(logits.clone(), [row])[0]
    assert out[0].item() == pytest.approx(2.0 / 2.0 - 0.5 * 2)  # repeated twice in the output
    assert out[2].item() == pytest.approx(1.0)  # seen in the prompt only: repetition penalty alone
    assert out[1].item() == 2.0


@pytest.mark.parametrize("use_kernels", [False, True])
def test_a_logit_bias_draws_what_the_biased_logits_draw(use_kernels):
    """Greedy and sampled rows (the C kernel's too): a biased row picks exactly what the same row
    with the bias added to its logits picks; -100 bans the likeliest token, +100 forces a poor one."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 300, generator=g) * 3
    best = int(x[0].argmax())
    biases = [((best, -100.0),), ((7, 100.0),), ((3, 2.5), (11, -4.0))] * 2
    params = [SamplingParams(temperature=t, top_p=0.9, logit_bias=b) for t, b in zip((0.0,) * 3 + (0.8,) * 3, biases)]
    rows = [SamplingRow(i, p, 1234 + i, 5) for i, p in enumerate(params)]
    shifted = x.clone()
    for i, bias in enumerate(biases):
        for token, value in bias:
            shifted[i, token] += value
    plain = [r._replace(params=dataclasses.replace(r.params, logit_bias=())) for r in rows]
    got = Sampler((), use_kernels=use_kernels)(x.clone(), rows).tokens
    assert got == Sampler((), use_kernels=use_kernels)(shifted, plain).tokens
    assert got[0] != best and got[1] == 7 and got[4] == 7


def _knobs(params: list[SamplingParams], seed: int) -> "RowKnobs":
    rng = random.Random(seed)
    return RowKnobs.of(params, np.array([rng.getrandbits(32) for _ in params], dtype=np.uint64), torch.device("cpu"))


def test_racing_the_likeliest_tokens_gives_the_vocabularys_tokens_or_declines():
    """race_candidates against the reference (filter, then race over the whole vocabulary) on
    peaked and flat rows, with ties, banned tokens, top-k, top-p and both: where it answers, the
    tokens are the same; where a row's filter could keep a token past the candidates, it declines."""
    rng = random.Random(0)
    torch.manual_seed(0)
    answered = declined = 0
    for trial in range(150):
        n = rng.choice([1, 4, 9])
        x = torch.randn(n, 3000) * rng.choice([1, 3, 6])
        x[:, :rng.randint(1, 40)] += rng.choice([0, 5, 10])
        if trial % 3 == 0:
            x = torch.round(x * 2) / 2  # many equal logits
        if trial % 5 == 0:
            x[:, rng.randrange(3000)] = float("-inf")  # a banned token (min_tokens)
        knobs = dict(temperature=rng.choice([0.5, 0.8, 1.2]), top_p=rng.choice([1.0, 0.9, 0.95, 0.5]),
                     top_k=rng.choice([0, 0, 5, 50, 128, 200]), min_p=rng.choice([0.0, 0.0, 0.0, 0.01, 0.1, 0.5]))
        if knobs["top_p"] == 1.0 and knobs["top_k"] == 0 and knobs["min_p"] == 0.0:
            continue
        k = _knobs([SamplingParams(**knobs) for _ in range(n)], trial)
        fast, covered = race_candidates(x, k, count=128)
        reference = race(_filter(x, k), k.seeds)
        for token, ok, want in zip(fast.tolist(), covered.tolist(), reference.tolist()):
            answered += ok
            declined += not ok
            assert not ok or token == want, (trial, knobs)
    assert answered > 150 and declined > 50


def test_candidates_decline_what_they_cannot_cover():
    peaked = torch.randn(3, 3000)
    peaked[:, 7] += 30
    mixed = torch.stack([peaked[0], torch.zeros(3000), peaked[2]])  # the middle row is flat
    tokens, covered = race_candidates(mixed, _knobs([SamplingParams(temperature=1.0, top_p=0.95)] * 3, 1), count=128)
    assert covered.tolist() == [True, False, True] and tokens[[0, 2]].tolist() == [7, 7]
    _, covered = race_candidates(peaked, _knobs([SamplingParams(temperature=1.0, top_k=200)] * 3, 1), count=128)
    assert not covered.any()  # a top-k past the candidates
    assert race_candidates(peaked, _knobs([SamplingParams(temperature=1.0)] * 3, 1), count=128) is None
    tokens, covered = race_candidates(mixed, _knobs([SamplingParams(temperature=1.0, min_p=0.1)] * 3, 1), count=128)
    assert covered.tolist() == [True, False, True] and tokens[[0, 2]].tolist() == [7, 7]  # a flat row's floor is its all


def test_a_large_batch_samples_what_each_row_samples_alone(monkeypatch):
    """From CANDIDATE_ROWS rows the reference sampler races the likeliest tokens; each row's token
    equals the one it gets alone, through the whole vocabulary."""
    sampler = Sampler(eos_ids=())
    n = CANDIDATE_ROWS + 4
    torch.manual_seed(5)
    logits = torch.randn(n, 4000) * 2
    logits[:, :20] += 6
    logits[[3, 8]] = 0.0  # flat rows (top-k, top-p): outside the candidates, through the whole vocabulary
    params = [SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=1.0, top_k=40)]
    rows = [SamplingRow(i, params[i % 2], sample_key(9, i), i) for i in range(n)]
    calls = []
    real = sampler_module.race_candidates

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(sampler_module, "race_candidates", spy)
    together = sampler(logits, rows).tokens
    monkeypatch.undo()
    assert len(calls) == 1 and calls[0] is not None and calls[0][1].tolist().count(False) == 2
    alone = [sampler(logits[i:i + 1], [SamplingRow(0, r.params, r.noise_key, r.position)]).tokens[0]
             for i, r in enumerate(rows)]
    assert together == alone


@pytest.mark.parametrize("use_kernels", [False, True])
@pytest.mark.parametrize("n", [6, CANDIDATE_ROWS + 4])
def test_shifted_rows_sample_what_rows_at_their_true_positions_sample(use_kernels: bool, n: int):
    """Rows planned before the accepted draft tokens ahead of them were known (RowShift): their
    noise is keyed by the position they went to, chosen on the device (or, for the C kernel,
    read back first); greedy rows among them, the candidates' race from CANDIDATE_ROWS rows."""
    sampler = Sampler(eos_ids=(), use_kernels=use_kernels)
    torch.manual_seed(7)
    logits = torch.randn(n, 500) * 2
    params = [SamplingParams(temperature=0.9, top_p=0.95), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0, top_k=30)]
    rows = [SamplingRow(i, params[i % 3], sample_key(4, i % 2), 10 + i) for i in range(n)]
    moved = {0: 2, 1: 4, 2: 0, 3: 5, 5: 3, n - 1: 1}
    shift = RowShift(list(moved), [5] * len(moved), torch.tensor(list(moved.values())))
    shifted = sampler.launch(logits, rows, shift).result().tokens
    true = [r._replace(position=r.position + moved.get(i, 0)) for i, r in enumerate(rows)]
    assert shifted == sampler(logits, true).tokens
    assert shifted != sampler(logits, rows).tokens  # (where they were planned, other tokens)


def test_shifted_rows_replay_the_recorded_token_of_their_true_position():
    sampler = Sampler(eos_ids=())
    params = SamplingParams(temperature=0.0)
    rows = [SamplingRow(0, params, 0, 3, forced=11), SamplingRow(1, params, 0, 4, forced=12),
            SamplingRow(2, params, 0, 7, forced=13), SamplingRow(3, params, 0, 2)]
    logits = torch.zeros(4, 40)
    logits[3, 5] = 1.0
    shift = RowShift([0, 1, 3], [2, 2, 2], torch.tensor([2, 1, 2]), forced=[(11, 21, 31), (12, 22, 32), None])
    assert sampler.launch(logits, rows, shift).result().tokens == [31, 22, 13, 5]  # the last replays nothing


@pytest.mark.parametrize("at_launch", [False, True])
@pytest.mark.parametrize("greedy_rows", [False, True])
def test_rows_the_candidates_missed_are_raced_again_when_read_back(greedy_rows: bool, at_launch: bool):
    """launch() races REDRAWN_AT_ONCE of the rows the candidates' race did not cover again on the
    device (`at_launch`: where steps are queued ahead) and leaves the rest as they were raced there; result() races those again over the whole
    vocabulary, lists those whose token changed, and gives the tokens and logprobs the sampler
    gives when it races them again at once (each row alone), from the logits as they were at
    launch."""
    sampler = Sampler(eos_ids=(), redraw_at_launch=at_launch)
    n = CANDIDATE_ROWS + 16
    torch.manual_seed(6)
    logits = torch.randn(n, 4000) * 2
    logits[:, :20] += 6
    logits[2:24] = torch.randn(22, 4000) * 0.01  # nearly flat: past the candidates under top-p
    params = [SamplingParams(temperature=1.0, top_p=0.95, logprobs=1, top_logprobs=2),
              SamplingParams(temperature=0.0, logprobs=1, top_logprobs=2)]  # greedy rows among them
    rows = [SamplingRow(i, params[int(greedy_rows and i % 5 == 4)], sample_key(3, i), i) for i in range(n)]
    kept = logits.clone()
    sampled = sampler.launch(logits, rows)
    launched = sampled.tokens.tolist()
    logits.normal_()  # the next step's logits, where a CUDA graph writes them: read back after that
    result = sampled.result()
    alone = [sampler(kept[i:i + 1], [SamplingRow(0, r.params, r.noise_key, r.position)]) for i, r in enumerate(rows)]
    assert result.tokens == [a.tokens[0] for a in alone]
    assert result.logprobs == pytest.approx([a.logprobs[0] for a in alone])
    assert result.top == [a.top[0] for a in alone]
    assert sampled.changed and sampled.changed == [i for i in range(n) if launched[i] != result.tokens[i]]
    assert all(2 <= i < 24 for i in sampled.changed)
    missed = [i for i in range(2, 24) if not greedy_rows or i % 5 != 4]  # (greedy rows are not raced)
    assert bool(set(missed[:REDRAWN_AT_ONCE]) & set(sampled.changed)) == (not at_launch)  # raced again at launch


@pytest.mark.parametrize("logprobs", [False, True])
def test_what_comes_back_is_copied_as_the_tokens_are_chosen(logprobs: bool):
    """launch() queues the copy back to the host: what the device does after it (a step queued
    ahead, writing where this step's tokens and logits were) is not in what result() reads."""
    sampler = Sampler(eos_ids=())
    torch.manual_seed(8)
    logits = torch.randn(6, 300)
    params = SamplingParams(temperature=0.0, logprobs=int(logprobs), top_logprobs=2 if logprobs else 0)
    rows = [SamplingRow(i, params, 0, i) for i in range(6)]
    want = sampler(logits.clone(), rows)
    sampled = sampler.launch(logits, rows)
    with torch.inference_mode():
        sampled.tokens.fill_(0)
        logits.fill_(0)
    got = sampled.result()
    assert (got.tokens, got.logprobs, got.top) == (want.tokens, want.logprobs, want.top)
    assert len(set(got.tokens)) > 1


def _launch_rows(case: str, n: int) -> list[SamplingRow]:
    sampled = SamplingParams(temperature=0.8, top_p=0.95)
    params = {"mixed": [sampled, SamplingParams(temperature=0.0)],
              "biased": [dataclasses.replace(sampled, logit_bias=((5, 3.0), (8, -2.0)))],
              "min_tokens": [dataclasses.replace(sampled, max_tokens=64, min_tokens=50, stop_token_ids=(9,))],
              "penalties": [dataclasses.replace(sampled, repetition_penalty=1.3, frequency_penalty=0.4)]}
    kinds = params.get(case, [sampled])
    rows = [SamplingRow(i, kinds[i % len(kinds)], sample_key(2, i), i, history=(5, i, 7, 7), output_start=1)
            for i in range(n)]
    if case in ("replayed", "partly replayed"):
        rows = [r._replace(forced=40 + i) if case == "replayed" or i % 2 else r for i, r in enumerate(rows)]
    return rows


@pytest.mark.parametrize("case", ["plain", "mixed", "replayed", "partly replayed", "biased", "min_tokens",
                                  "penalties"])
def test_launch_waits_for_nothing_and_samples_what_each_row_samples_alone(case: str):
    """launch() runs while the device works on the step before (a step queued ahead): it reads
    nothing back, from CANDIDATE_ROWS rows with rows past the candidates' race too, whatever the
    rows ask for, and those few rows are raced again there: the tokens a step queued ahead is fed
    are the rows' own (none changes when read back), each the token it gets alone (a recorded one
    where there is one)."""
    from tests.engine.helpers import read_backs

    sampler = Sampler(eos_ids=(2,), redraw_at_launch=True)
    n = CANDIDATE_ROWS + 4
    torch.manual_seed(3)
    logits = torch.randn(n, 3000) * 2
    logits[:, :20] += 6
    logits[:4] = torch.randn(4, 3000) * 0.01  # nearly flat: past the candidates under top-p
    rows = _launch_rows(case, n)
    with read_backs() as seen:
        launched = sampler.launch(logits.clone(), rows)
    assert seen == []
    alone = [sampler(logits[i:i + 1].clone(), [r._replace(logits_row=0)]).tokens[0] for i, r in enumerate(rows)]
    at_launch = launched.tokens.tolist()
    got = launched.result().tokens
    assert got == alone
    assert launched.changed == [] and (at_launch == got or case in ("replayed", "partly replayed"))
    if case in ("replayed", "partly replayed"):
        assert all(rows[i].forced is None for i in launched.changed)
        assert [got[i] for i, r in enumerate(rows) if r.forced is not None] == \
            [r.forced for r in rows if r.forced is not None]


def test_a_history_on_the_device_penalizes_as_its_counted_tokens_do_on_the_host():
    """In a step queued ahead a penalized row's history ends in tokens only the device knows, some
    not counted (a draft's rows past what its step accepts): the row is penalized as by the
    counted tokens alone, and launch reads nothing back."""
    from tests.engine.helpers import read_backs

    sampler = Sampler(eos_ids=(2,), redraw_at_launch=True)
    params = SamplingParams(temperature=0.8, repetition_penalty=1.5, frequency_penalty=0.7, presence_penalty=0.3)
    torch.manual_seed(5)
    logits = torch.randn(3, 500) * 2
    tokens, weights = torch.tensor([5, 9, 9, 11, 40, 41, 40]), torch.tensor([1.0, 1, 1, 1, 1, 0, 0])
    on_device = [SamplingRow(i, params, sample_key(1, 0), i, DeviceHistory(tokens[:5 + i], weights[:5 + i]), 1)
                 for i in range(3)]
    on_host = [r._replace(history=[t for t, w in zip(tokens[:5 + i].tolist(), weights.tolist()) if w])
               for i, r in enumerate(on_device)]
    counted_all = [r._replace(history=tokens[:5 + i].tolist()) for i, r in enumerate(on_device)]
    assert torch.equal(sampler.process(logits.clone(), on_device), sampler.process(logits.clone(), on_host))
    assert not torch.equal(sampler.process(logits.clone(), on_device), sampler.process(logits.clone(), counted_all))
    with read_backs() as seen:
        launched = sampler.launch(logits.clone(), on_device)
    assert seen == []
    assert launched.result().tokens == sampler(logits.clone(), on_host).tokens


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reading_a_step_back_does_not_wait_for_the_work_queued_behind_it():
    """On a GPU the step queued ahead runs while the host applies the step before it: reading
    that step's tokens back waits for that step only."""
    sampler = Sampler(eos_ids=())
    logits = torch.randn(4, 1000, device="cuda")
    sampled = sampler.launch(logits, [SamplingRow(i, SamplingParams(temperature=0.0), 0, i) for i in range(4)])
    torch.cuda._sleep(2_000_000_000)  # about a second of the device's time, queued behind the step
    tokens = sampled.result().tokens
    assert not torch.cuda.current_stream().query()  # the work behind it still runs
    torch.cuda.synchronize()
    assert tokens == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("kept", [3, 200, 1000])
def test_scores_of_the_kept_tokens_are_the_races_bit_for_bit(kept: int) -> None:
    """kept_scores draws noise for the kept tokens only (few or most of a row's): the same scores."""
    g = torch.Generator().manual_seed(kept)
    x = torch.randn(5, 1024, generator=g) * 4
    for row in x:
        row[torch.randperm(1024, generator=g)[kept:]] = float("-inf")
    x[0, 7] = 90.0  # the others' weights underflow to 0: kept, with a score of 0
    seeds = torch.randint(0, 2**32, (5,), generator=g)
    assert torch.equal(kept_scores(x, torch.isfinite(x), seeds), race_scores(x, seeds))


def test_the_host_noise_is_the_reference_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(3)
    seeds = torch.cat([torch.randint(0, 2**32, (6,), generator=g), torch.tensor([0, 2**32 - 1])])
    assert torch.equal(host_row_noise(seeds, None, 4099), row_noise(seeds, None, 4099))
    ids = torch.randint(0, 2**31, (8, 33), generator=g)
    assert torch.equal(host_row_noise(seeds, ids, 0), row_noise(seeds, ids, 0))
