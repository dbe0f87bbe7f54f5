"""The Triton race over each row's likeliest tokens against its reference, engine.sampler.race_candidates:
the same coverage and, where covered, the same tokens; in the sampler's tokens; and in the device
check engine/fast_paths.py runs. Without a GPU it runs under the Triton interpreter on the CPU."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before the import below
pytest.importorskip("triton", reason="triton is not installed")

from engine.kernels import triton_race
from engine.sampler import CANDIDATE_ROWS, RowKnobs, Sampler, SamplingRow, race_candidates, sample_key
from engine.sampling_params import SamplingParams

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rows(trial: int, rows: int, vocab: int, count: int) -> tuple[torch.Tensor, RowKnobs]:
    """Random rows, and the hard ones first: a tie across the candidates' end, a few values over the
    whole row, most tokens dropped, many ties, and ties across the top-p cut (rows 4-9: one token,
    then ten equal ones, then a light tail, at top-p 0.5); each other row with its own temperature
    and filters (top-k below, at and past the candidates; top-p from 0.1 to 1; min-p or none)."""
    gen, rng = torch.Generator().manual_seed(trial), random.Random(trial)
    x = torch.randn(rows, vocab, generator=gen) * torch.rand(rows, 1, generator=gen) * rng.choice([1.0, 4.0, 10.0])
    x[0, :vocab // 3] = 2.0
    x[1] = torch.randint(0, 3, (vocab,), generator=gen).float()
    x[2, 20:] = float("-inf")
    x[3] = (x[3] * 4).round() / 4
    params = [SamplingParams(temperature=rng.choice([0.2, 0.8, 1.0, 1.7]),
                             top_p=rng.choice([1.0, 0.95, 0.5, 0.1, 0.999]),
                             top_k=rng.choice([0, 0, 1, 3, 50, count - 1, count, count + 5, 5000]),
                             min_p=rng.choice([0.0, 0.0, 0.02, 0.3, 1.0])) for _ in range(rows)]
    x[4:10] = torch.randn(6, vocab, generator=gen) - 12.0
    x[4:10, :11] = torch.tensor([5.0] + [4.0] * 10)
    params[4:10] = [SamplingParams(temperature=1.0, top_p=0.5)] * 6
    seeds = np.array([rng.randrange(2**32) for _ in range(rows)], dtype=np.uint64)
    return x.to(DEVICE), RowKnobs.of(params, seeds, DEVICE)


@pytest.mark.parametrize("trial,rows,vocab,count", [(0, 24, 300, 64), (1, 30, 200, 128), (2, 24, 300, 64),
                                                    (3, 12, 3000, 1024)])
def test_the_race_covers_what_the_reference_covers_and_draws_its_tokens_there(trial, rows, vocab, count) -> None:
    x, knobs = _rows(trial, rows, vocab, count)
    want = race_candidates(x, knobs, count=count)
    tokens, covered = race_candidates(x, knobs, count=count, kernel=triton_race.race)
    assert covered.dtype == torch.bool and tokens.dtype == torch.int64
    assert torch.equal(covered, want[1]) and 0 < int(covered.sum()) < rows
    assert torch.equal(tokens[covered], want[0][covered])


def test_rows_without_min_p_take_the_kernel_without_its_floor() -> None:
    x, knobs = _rows(4, 24, 300, 64)
    knobs = knobs._replace(log_min_p=None, any_min_p=False)
    want = race_candidates(x, knobs, count=64)
    tokens, covered = race_candidates(x, knobs, count=64, kernel=triton_race.race)
    assert torch.equal(covered, want[1]) and torch.equal(tokens[covered], want[0][covered])


@pytest.mark.parametrize("rows", [3, CANDIDATE_ROWS + 2])
def test_the_sampler_with_the_kernel_draws_the_references_tokens(rows: int) -> None:
    """Below CANDIDATE_ROWS no row races the candidates; from there the kernel does, and the flat row
    it cannot cover races the whole vocabulary."""
    vocab = 1024 + 500
    torch.manual_seed(rows)
    logits = (torch.randn(rows, vocab) * 2).to(DEVICE)
    logits[:, :20] += 6
    logits[1] = 0.0  # flat: not covered by the candidates
    params = [SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=1.1, top_k=40),
              SamplingParams(temperature=0.7, top_p=0.9, top_k=300, min_p=0.01)]
    sampled = [SamplingRow(i, params[i % 3], sample_key(11, i), i) for i in range(rows)]
    assert Sampler((), triton_race=True)(logits, sampled).tokens == Sampler(())(logits, sampled).tokens


def test_the_device_check_passes_the_kernel_and_names_a_wrong_one(monkeypatch) -> None:
    from engine.fast_paths import race_problem

    assert race_problem(DEVICE) is None
    real = triton_race.race

    def ids_out_of_order(x, vals, ids, *knobs):
        tokens, covered = real(x, vals, ids.flip(1), *knobs)  # the candidates' ids out of order
        return tokens, covered

    monkeypatch.setattr(triton_race, "race", ids_out_of_order)
    assert race_problem(DEVICE) == "a token differs from the reference"
    monkeypatch.setattr(triton_race, "race", lambda x, vals, ids, *knobs: (real(x, vals, ids, *knobs)[0],
                                                                         torch.ones(x.shape[0], dtype=torch.bool)))
    assert race_problem(DEVICE) == "which rows the candidates cover differs from the reference"
    monkeypatch.setattr(triton_race, "race", lambda *args: 1 / 0)
    assert race_problem(DEVICE) == "ZeroDivisionError: division by zero"
