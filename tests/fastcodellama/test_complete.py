"""The one-line Python API on the embedded model: `complete(...)` and `fastcodellama.LLM`."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fastcodellama.job.types import CODEX_STOPS

PROMPT = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n"


@pytest.fixture(scope="module")
def complete():
    from fastcodellama import complete

    return complete


def test_one_prompt_is_greedy_and_ends_with_the_function(complete):
    from engine import SamplingParams
    from fastcodellama import LLM
    from fastcodellama.completion import _shared_llm

    text = complete(PROMPT, max_tokens=64)
    assert isinstance(text, str) and text
    assert not any(stop in text for stop in CODEX_STOPS)  # cut where the next top-level statement starts
    assert complete(PROMPT, max_tokens=64) == text  # greedy: the same every time
    llm = _shared_llm(None)
    assert isinstance(llm, LLM) and llm.engine.proposer is not None  # copy drafting on by default
    plain = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=64, stop=CODEX_STOPS, speculate=False))
    assert plain[0].outputs[0].text == text  # drafting never changes the output
    out = llm.generate(PROMPT)[0].outputs[0]  # LLM's own defaults: greedy, the function's end, not 16 tokens
    assert out.text.startswith(text) and (out.finish_reason == "stop" or len(out.token_ids) > 16)


def test_samples_and_several_prompts_give_lists(complete):
    samples = complete(PROMPT, n=3, temperature=0.8, seed=1, max_tokens=16)
    assert isinstance(samples, list) and len(samples) == 3 and all(isinstance(s, str) for s in samples)
    assert complete(PROMPT, n=3, temperature=0.8, seed=1, max_tokens=16) == samples  # seeded
    several = complete([PROMPT, "def mul(a, b):\n"], max_tokens=8)
    assert isinstance(several, list) and len(several) == 2 and all(isinstance(s, str) for s in several)
    nested = complete([PROMPT, "def mul(a, b):\n"], n=2, temperature=0.8, max_tokens=8)
    assert [len(s) for s in nested] == [2, 2]


def test_plain_llm_can_still_turn_drafting_off():
    from fastcodellama import LLM

    assert LLM(proposer=None, num_kv_blocks=64).engine.proposer is None


def test_import_stays_light():
    code = "import sys, fastcodellama; assert 'torch' not in sys.modules; print(fastcodellama.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
