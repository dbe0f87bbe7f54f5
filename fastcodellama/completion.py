"""The one-line Python API: `complete(...)`, and `LLM`, engine.LLM with copy drafting on.

Defaults suit code completion: greedy, at most 256 tokens, stopping where the next top-level
statement would start (the Codex stops: the end of the function), drafts copied from the prompt,
the sample and its siblings.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

from engine import LLM as EngineLLM
from engine import RequestOutput, SamplingParams
from engine.proposer import Proposer
from fastcodellama.drafting import SpecConfig, build_proposer
from fastcodellama.job.types import CODEX_STOPS

MAX_TOKENS = 256
_COPY_DRAFTS = object()  # LLM's default proposer: the copy proposer of SpecConfig


def code_params(n: int = 1, temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = MAX_TOKENS,
                stop: Sequence[str] = CODEX_STOPS, seed: int | None = None, **more) -> SamplingParams:
    """SamplingParams with code-completion defaults (greedy, up to the end of the function)."""
    return SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop),
                          seed=seed, **more)


class LLM(EngineLLM):
    """engine.LLM drafting by default: `proposer` defaults to the copy proposer of `spec`
    (None: plain decoding); `generate` without params uses `code_params()`."""

    def __init__(self, model=None, proposer: Proposer | None | object = _COPY_DRAFTS,
                 spec: SpecConfig | None = None, **config) -> None:
        if proposer is _COPY_DRAFTS:
            proposer = build_proposer(spec)
        super().__init__(model, proposer=proposer, **config)

    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool | None = None) -> list[RequestOutput]:
        return super().generate(prompts, params if params is not None else code_params(), use_tqdm)


@functools.cache
def _shared_llm(model: str | None) -> LLM:
    return LLM(model)


def complete(prompt: str | Sequence[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
             max_tokens: int = MAX_TOKENS, stop: Sequence[str] = CODEX_STOPS, seed: int | None = None,
             model: str | None = None, speculate: bool = True) -> str | list[str] | list[list[str]]:
    """Completions of `prompt` (text). One prompt and n=1 gives a str; n > 1 a list of n strs; a list
    of prompts gives a list with one such result per prompt. The model (default: the embedded
    one) loads once per process and stays loaded for later calls."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    params = code_params(n, temperature, top_p, max_tokens, stop, seed, speculate=None if speculate else False)
    outputs = _shared_llm(model).generate(prompts, params, use_tqdm=False)
    results: list = []
    for out in outputs:
        texts = [c.text for c in sorted(out.outputs, key=lambda c: c.index)]
        results.append(texts[0] if n == 1 else texts)
    return results[0] if single else results
