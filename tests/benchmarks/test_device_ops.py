"""benchmarks/device_ops.py: the torch ops a decode step dispatches outside the forward, counted
by phase, with the sampler's reference ops or its Triton kernels."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton's own kernels are decorated: before its first import
pytest.importorskip("triton", reason="triton is not installed")

import device_ops  # noqa: E402
from engine import DEFAULT_MODEL  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402


def test_the_noise_kernel_takes_the_hash_ops_off_a_sampled_step(tmp_path):
    tokenizer = Tokenizer(DEFAULT_MODEL)
    greedy = device_ops.run(1, "greedy", "torch", 3, tokenizer)
    torch_noise = device_ops.run(1, "sampled", "torch", 3, tokenizer)
    triton_noise = device_ops.run(1, "sampled", "noise", 3, tokenizer)
    # the stub's forward is not counted; the step's inputs are the same whatever is sampled
    assert greedy["ops_per_step"]["step inputs"] == torch_noise["ops_per_step"]["step inputs"] > 0
    assert greedy["ops_per_step"]["sampler"] < 10 < torch_noise["ops_per_step"]["sampler"]
    # the hash's few dozen 32-bit ops become one kernel launch a step
    assert triton_noise["kernel_launches_per_step"] == 1.0 and torch_noise["kernel_launches_per_step"] == 0.0
    assert triton_noise["ops_per_step"]["sampler"] <= torch_noise["ops_per_step"]["sampler"] - 40
    device_ops.write({"machine": "test", "date": "2026-12-05T00:00:00+00:00", "args": {},
                      "rows": [greedy, triton_noise]}, str(tmp_path))
    text = next(tmp_path.glob("device_ops_*.md")).read_text()
    assert "| 1 | sampled | noise |" in text and "| 1 | greedy | torch |" in text


def test_the_race_kernel_takes_the_candidates_ops_off_a_step_of_many_rows():
    """From CANDIDATE_ROWS rows the sampler races each row's likeliest tokens: their filters, the
    race and its noise become one launch after the top-k (the other launch: the noise of the few
    rows raced again over the whole vocabulary at launch, as a GPU's queued steps have it)."""
    tokenizer = Tokenizer(DEFAULT_MODEL)
    noise = device_ops.run(16, "sampled", "noise", 2, tokenizer)
    race = device_ops.run(16, "sampled", "noise+race", 2, tokenizer)
    assert noise["kernel_launches_per_step"] == 2.0 and race["kernel_launches_per_step"] == 2.0  # the race's own noise
    assert race["ops_per_step"]["sampler"] <= noise["ops_per_step"]["sampler"] - 30
    assert race["ops_per_step"]["step inputs"] == noise["ops_per_step"]["step inputs"]
