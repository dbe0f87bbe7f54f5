"""Offline generation: `LLM(model=None).generate(prompts, SamplingParams(...))`."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

from tqdm.auto import tqdm

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.proposer import Proposer
from engine.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str | EngineConfig | None = None, proposer: Proposer | None = None,
                 **config) -> None:
        """`model`: a checkpoint folder (None: the embedded model) with engine options as keywords,
        or a whole EngineConfig."""
        if isinstance(model, EngineConfig):
            if config:
                raise TypeError("give an EngineConfig or engine options, not both")
            self.config = model
        else:
            fields = {f.name for f in dataclasses.fields(EngineConfig)}
            unknown = set(config) - fields
            if unknown:
                raise TypeError(f"unknown engine options: {', '.join(sorted(unknown))}")
            self.config = EngineConfig(model=model, **config)
        self.engine = LLMEngine(self.config, proposer=proposer)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: str | Sequence[str] | Sequence[list[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool | None = None) -> list[RequestOutput]:
        """Outputs in the order of `prompts`. A prompt is text or a list of token ids."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        param_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(param_list) != len(prompts):
            raise ValueError("give one SamplingParams, or one per prompt")
        order: dict[str, int] = {}
        try:
            for i, (prompt, p) in enumerate(zip(prompts, param_list)):
                request_id = f"offline-{next(self._ids)}"
                self.engine.add_request(request_id, prompt, p)
                order[request_id] = i
        except Exception:
            for request_id in order:
                self.engine.abort(request_id)
            raise
        show = use_tqdm if use_tqdm is not None else len(prompts) > 1
        results: list[RequestOutput | None] = [None] * len(prompts)
        with tqdm(total=len(prompts), desc="generate", unit="req", disable=not show) as bar:
            try:
                while any(r is None for r in results):
                    for out in self.engine.step(collect="finished"):
                        results[order[out.request_id]] = out
                        bar.update(1)
                    if not self.engine.has_unfinished():
                        break
            except BaseException:
                for request_id in order:
                    self.engine.abort(request_id)
                raise
        return results  # type: ignore[return-value]
