"""Echo without generation (max_tokens 0): each prompt comes back as its choices' text.

With logprobs, the prompt's own log probabilities: the engine replays the prompt after its first
token, each token forced and its log probability under the model recorded, which gives
log p(t_k | t_<k) for every token but the first (null, as OpenAI returns it). The replay takes one
engine step per prompt token.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

from aiohttp import web

from engine import SamplingParams
from engine.async_engine import AsyncEngine

from api.completions import CompletionPlan, LogprobsBuilder, merged_outputs
from api.schemas import CompletionChoice, CompletionResponse, Logprobs, Usage
from api.streaming import DONE, SSE_HEADERS, sse


def replay_params(ids: Sequence[int]) -> SamplingParams:
    """Forces ids[1:] after ids[:1], recording each one's log probability."""
    return SamplingParams(temperature=0.0, max_tokens=len(ids) - 1, logprobs=True, ignore_eos=True,
                          speculate=False, replay_token_ids=(tuple(ids[1:]),))


async def prompt_logprobs(engine: AsyncEngine, plan: CompletionPlan) -> list[list[float | None]]:
    """Per prompt, one log probability per token (None for the first)."""
    replayed = [i for i, ids in enumerate(plan.prompts) if len(ids) > 1]
    jobs = [(plan.prompts[i][:1], replay_params(plan.prompts[i])) for i in replayed]
    found: dict[int, list[float]] = {}
    async with contextlib.aclosing(merged_outputs(engine, plan, jobs)) as outputs:
        async for job, out in outputs:
            if out.finished:
                found[replayed[job]] = list(out.outputs[0].logprobs or [])
    return [[None, *found.get(i, [])][:len(ids)] for i, ids in enumerate(plan.prompts)]


def choices(plan: CompletionPlan, engine: AsyncEngine,
            logprobs: list[list[float | None]] | None) -> list[CompletionChoice]:
    out = []
    for i, ids in enumerate(plan.prompts):
        lp = _logprobs(engine, ids, logprobs[i]) if logprobs is not None else None
        for j in range(plan.n):
            out.append(CompletionChoice(index=i * plan.n + j, text=plan.echo_texts[i], logprobs=lp,
                                        finish_reason="length"))
    return out


def _logprobs(engine: AsyncEngine, ids: list[int], values: list[float | None]) -> Logprobs:
    return LogprobsBuilder(engine, []).add(ids, values, finished=True)


def echo_usage(plan: CompletionPlan) -> Usage:
    prompt = sum(len(ids) for ids in plan.prompts)
    return Usage(prompt_tokens=prompt, completion_tokens=0, total_tokens=prompt)


async def respond(request: web.Request, plan: CompletionPlan, engine: AsyncEngine) -> web.StreamResponse:
    """The whole echo: one JSON body, or (streaming) one chunk per choice, usage, [DONE]."""
    logprobs = await prompt_logprobs(engine, plan) if plan.prompt_logprobs else None
    every = choices(plan, engine, logprobs)
    if not plan.stream:
        body = CompletionResponse(id=plan.request_id, created=plan.created, model=plan.model, choices=every,
                                  usage=echo_usage(plan))
        return web.Response(text=body.model_dump_json(), content_type="application/json")
    chunks = [sse(CompletionResponse(id=plan.request_id, created=plan.created, model=plan.model,
                                     choices=[c]).model_dump_json()) for c in every]
    if plan.include_usage:
        chunks.append(sse(CompletionResponse(id=plan.request_id, created=plan.created, model=plan.model, choices=[],
                                             usage=echo_usage(plan)).model_dump_json()))
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await response.prepare(request)
    await response.write(b"".join(chunks) + DONE)
    return response
