"""benchmarks/device_ops.py: the torch ops a decode step dispatches outside the forward, counted
by phase, with the sampler's noise from the reference or from the Triton kernel."""
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
    greedy = device_ops.run(1, "greedy", False, 3, tokenizer)
    torch_noise = device_ops.run(1, "sampled", False, 3, tokenizer)
    triton_noise = device_ops.run(1, "sampled", True, 3, tokenizer)
    # the stub's forward is not counted; the step's inputs are the same whatever is sampled
    assert greedy["ops_per_step"]["step inputs"] == torch_noise["ops_per_step"]["step inputs"] > 0
    assert greedy["ops_per_step"]["sampler"] < 10 < torch_noise["ops_per_step"]["sampler"]
    # the hash's few dozen 32-bit ops become one kernel launch a step
    assert triton_noise["noise_launches_per_step"] == 1.0 and torch_noise["noise_launches_per_step"] == 0.0
    assert triton_noise["ops_per_step"]["sampler"] <= torch_noise["ops_per_step"]["sampler"] - 40
    device_ops.write({"machine": "test", "date": "2026-12-05T00:00:00+00:00", "args": {},
                      "rows": [greedy, triton_noise]}, str(tmp_path))
    text = next(tmp_path.glob("device_ops_*.md")).read_text()
    assert "| 1 | sampled | triton |" in text and "| 1 | greedy | torch |" in text
