"""The Triton noise kernel against its reference, engine.sampler.uniform_hash: bit for bit, in the
sampler's tokens, and in the device check engine/fast_paths.py runs. Without a GPU it runs under the
Triton interpreter on the CPU."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before the import below
pytest.importorskip("triton", reason="triton is not installed")

from engine.kernels import triton_noise
from engine.sampler import CANDIDATE_ROWS, CANDIDATES, Sampler, SamplingRow, sample_key, uniform_hash
from engine.sampling_params import SamplingParams

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seeds(rows: int, gen: torch.Generator) -> torch.Tensor:
    """Random seeds over [0, 2**32), the extremes first (as many as there are rows)."""
    seeds = torch.randint(0, 2**32, (rows,), generator=gen)
    extremes = torch.tensor([0, 2**32 - 1, 2**31, 2**31 - 1])[:rows]
    seeds[:len(extremes)] = extremes
    return seeds.to(DEVICE)


@pytest.mark.parametrize("rows,width", [(1, 1), (1, 1024), (3, 1500), (7, 3000)])
def test_the_noise_over_the_vocabulary_is_the_reference_bit_for_bit(rows: int, width: int) -> None:
    seeds = _seeds(rows, torch.Generator().manual_seed(width))
    got = triton_noise.uniform_hash(seeds, None, width)
    want = uniform_hash(seeds[:, None], torch.arange(width, device=DEVICE)[None, :])
    assert got.dtype == torch.float32 and got.shape == (rows, width)
    assert torch.equal(got, want)


@pytest.mark.parametrize("rows,width", [(1, 5), (4, 1024), (6, 1100)])
def test_the_noise_of_given_ids_is_the_reference_bit_for_bit(rows: int, width: int) -> None:
    """Random and extreme ids, read through a non-contiguous view (a column slice)."""
    gen = torch.Generator().manual_seed(rows * width)
    seeds = _seeds(rows, gen)
    wide = torch.randint(0, 2**31, (rows, width + 3), generator=gen)
    wide[:, 0], wide[:, -4] = 0, 2**31 - 1
    ids = wide.to(DEVICE)[:, :width]
    got = triton_noise.uniform_hash(seeds, ids, 0)
    assert got.shape == (rows, width)
    assert torch.equal(got, uniform_hash(seeds[:, None], ids))


def test_no_rows_or_no_columns_give_an_empty_result() -> None:
    seeds = torch.zeros(0, dtype=torch.long, device=DEVICE)
    assert triton_noise.uniform_hash(seeds, None, 7).shape == (0, 7)
    assert triton_noise.uniform_hash(_seeds(2, torch.Generator()), None, 0).shape == (2, 0)


@pytest.mark.parametrize("rows", [3, CANDIDATE_ROWS + 2])
def test_the_sampler_with_the_kernel_draws_the_references_tokens(monkeypatch, rows: int) -> None:
    """Below CANDIDATE_ROWS every row races the whole vocabulary; from there the candidates (the
    given-ids form), and the flat rows they cannot cover the whole vocabulary again. Top-p and top-k
    rows, a vocabulary past CANDIDATES."""
    vocab = CANDIDATES + 500
    torch.manual_seed(rows)
    logits = (torch.randn(rows, vocab) * 2).to(DEVICE)
    logits[:, :20] += 6
    logits[1] = 0.0  # flat: not covered by the candidates
    params = [SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=1.1, top_k=40),
              SamplingParams(temperature=0.7, top_p=0.9, top_k=300)]
    sampled = [SamplingRow(i, params[i % 3], sample_key(11, i), i) for i in range(rows)]
    calls = []
    real = triton_noise.uniform_hash

    def counted(seeds, token_ids, width):
        calls.append(token_ids is None)
        return real(seeds, token_ids, width)

    monkeypatch.setattr(triton_noise, "uniform_hash", counted)
    got = Sampler((), triton_noise=True)(logits, sampled).tokens
    assert got == Sampler(())(logits, sampled).tokens
    # rows past CANDIDATE_ROWS: the candidates, then the flat row over the vocabulary
    assert calls == ([False, True] if rows >= CANDIDATE_ROWS else [True])


def test_the_device_check_passes_the_kernel_and_names_a_wrong_one(monkeypatch) -> None:
    from engine.fast_paths import noise_problem

    assert noise_problem(DEVICE) is None
    real = triton_noise.uniform_hash
    one_ulp = lambda seeds, ids, width: torch.nextafter(real(seeds, ids, width), torch.tensor(2.0))  # noqa: E731
    monkeypatch.setattr(triton_noise, "uniform_hash", one_ulp)
    problem = noise_problem(DEVICE)
    assert problem is not None and "differs from the reference" in problem
    only_given_ids = lambda seeds, ids, width: (real if ids is None else one_ulp)(seeds, ids, width)  # noqa: E731
    monkeypatch.setattr(triton_noise, "uniform_hash", only_given_ids)
    assert noise_problem(DEVICE) == "the noise of given token ids differs from the reference"
    monkeypatch.setattr(triton_noise, "uniform_hash", lambda *args: 1 / 0)
    assert noise_problem(DEVICE) == "ZeroDivisionError: division by zero"
