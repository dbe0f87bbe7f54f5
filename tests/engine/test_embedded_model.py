"""The shipped model: loads in both engines, same greedy tokens, same tokenizer ids."""
from __future__ import annotations

import pytest

from engine import DEFAULT_MODEL, LLM, SamplingParams
from fastcodellama.job.tasks import load_tasks
from tests.engine.helpers import assert_no_leaks, hf_greedy

PROMPTS = [t["prompt"] for t in load_tasks(None, 4)] + [
    "import os\n\ndef list_files(path):\n",
    "class Point:\n    def __init__(self, x, y):\n",
    "x = [i * i for i in range(10)]\n",
]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(DEFAULT_MODEL)


def test_greedy_batch_matches_transformers_generate(llm):
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ids = llm.tokenizer.encode(prompt)
        assert out.outputs[0].token_ids == hf_greedy(DEFAULT_MODEL, ids, 32), prompt[:40]
    assert_no_leaks(llm.engine)


def test_engine_tokenizer_equals_transformers_tokenizer(llm):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    for prompt in PROMPTS:
        assert llm.tokenizer.encode(prompt) == hf(prompt)["input_ids"]


def test_model_has_infilling_tokens(llm):
    fim = llm.tokenizer.fim
    assert fim is not None and len({fim.prefix, fim.suffix, fim.middle, fim.eot}) == 4
