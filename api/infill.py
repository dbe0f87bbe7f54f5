"""llama.cpp's POST /infill (llama.vscode, llama.vim): fill in at the cursor, in the model's own
infilling format (api/infill_prompt.py), answered in llama.cpp's shape (api/infill_schemas.py).

How its fields act here:
- n_predict: tokens to generate; -1 up to the end of the context; 0 only reads the prompt into the
  prefix cache (llama.vscode's warm-up after each edit) and answers with empty content.
- samplers: top_k, top_p, min_p and temperature apply only when named (llama.cpp builds its sampler
  chain from this list and then samples); without the field all four apply.
- n_indent: SamplingParams.stop_at_dedent; the text ends before the first dedented line.
- t_max_predict_ms: once this long has passed since the first token and the text has a newline,
  the completion ends at its last complete line (stop_type "limit"). A stream then sends whole
  lines only, so that what it sent is never more than the answer.
- cache_prompt: prompts are always cached. `model` is not checked (llama.cpp serves one model).
"""
from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field, replace

from aiohttp import web

from engine import SamplingParams
from engine.outputs import RequestOutput
from engine.stop_checker import DEDENT

from api.completions import (CompletionPlan, check_request_tokens, engine_value_error, fim_not_supported,
                             merged_outputs)
from api.errors import APIError
from api.generation import CLIENT, Outputs, answer, read_request, state_of
from api.infill_prompt import InfillParts, fit_infill
from api.infill_schemas import InfillChunkEvent, InfillRequest, InfillResponse, InfillTimings
from api.state import AppState
from api.streaming import SSE_HEADERS, OpenedOnWrite, OpensOnWrite, sse

TIME_LIMIT = "t_max_predict_ms"  # stop_reason of a completion ended by the time limit
DEFAULT_ROOM = 4  # with n_predict -1, a quarter of the context is kept for the output when cutting the input
_SAMPLER_LETTERS = {"k": "top_k", "p": "top_p", "m": "min_p", "t": "temperature"}


@dataclass(frozen=True)
class InfillJob:
    """What the answer needs besides the engine output."""

    model: str
    params: SamplingParams
    truncated: bool
    warm_only: bool  # n_predict 0
    time_limit_s: float | None
    return_tokens: bool
    settings: dict = field(default_factory=dict)
    response_fields: tuple[str, ...] | None = None


async def infill(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, InfillRequest, check_model=False)
        plan, job = await _plan(req, state, request[CLIENT])
        del req
        return await answer(request, plan, arrival, lambda p, finals: infill_answer(job, finals[0]),
                            lambda: InfillStream(request, job),
                            lambda: time_limited(merged_outputs(state.engine, plan), job.time_limit_s))
    finally:
        state.memory.after_request(request.content_length)


async def _plan(req: InfillRequest, state: AppState, client: str) -> tuple[CompletionPlan, InfillJob]:
    engine, tokens = state.engine, state.prompts
    if engine.tokenizer.fim is None:
        raise fim_not_supported("input_prefix")
    context = engine.max_model_len
    room = req.n_predict if req.n_predict > 0 else (1 if req.n_predict == 0 else context // DEFAULT_ROOM)
    parts = InfillParts(req.input_prefix, req.input_suffix,
                        tuple((c.filename or "tmp", c.text) for c in req.input_extra), req.prompt)
    tokens.check_length([req.prompt], extra_tokens=3)
    chars = len(parts.prefix) + len(parts.suffix) + len(parts.middle) + sum(len(t) for _, t in parts.files)
    built = await tokens.run(chars, lambda: fit_infill(engine.tokenizer, parts, max(1, context - room - 1),
                                                       tokens.max_token_bytes))
    tokens.check_ids(built.ids)
    max_tokens = req.n_predict if req.n_predict > 0 else (
        1 if req.n_predict == 0 else min(context - len(built.ids), state.config.max_request_tokens))
    params = infill_params(req, max_tokens, engine.tokenizer.fim.stop_ids)
    check_request_tokens(1, params, state.config.max_request_tokens)
    plan = CompletionPlan(request_id=f"infill-{uuid.uuid4().hex}", created=int(time.time()),
                          model=state.config.model_name, prompts=[built.ids], echo_texts=[""], params=params,
                          client=client, stream=req.stream)
    job = InfillJob(state.config.model_name, params, built.truncated, req.n_predict == 0,
                    req.t_max_predict_ms / 1000 if req.t_max_predict_ms and req.n_predict != 0 else None,
                    req.return_tokens, _settings(req, params),
                    tuple(req.response_fields) if req.response_fields is not None else None)
    return plan, job


def infill_params(req: InfillRequest, max_tokens: int, stop_ids: tuple[int, ...]) -> SamplingParams:
    names = sampler_names(req.samplers)
    applies = (lambda name: names is None or name in names)  # noqa: E731
    try:
        return SamplingParams(
            temperature=req.temperature if applies("temperature") else 1.0,
            top_k=min(req.top_k, 1 << 30) if applies("top_k") and req.top_k > 0 else 0,
            top_p=req.top_p if applies("top_p") else 1.0, min_p=req.min_p if applies("min_p") else 0.0,
            repetition_penalty=req.repeat_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, max_tokens=max_tokens,
            seed=req.seed if 0 <= req.seed < 0xFFFFFFFF else None, stop=tuple(req.stop), stop_token_ids=stop_ids,
            stop_at_dedent=req.n_indent or None, ignore_eos=req.ignore_eos,
            speculate=False if req.n_predict == 0 else None)
    except ValueError as e:
        raise engine_value_error(e) from None


def sampler_names(samplers: list[str] | str | None) -> set[str] | None:
    """The samplers named (a list of names, or llama.cpp's letters); None: all."""
    if samplers is None:
        return None
    if isinstance(samplers, str):
        return {_SAMPLER_LETTERS[ch] for ch in samplers if ch in _SAMPLER_LETTERS}
    return set(samplers)


def _settings(req: InfillRequest, params: SamplingParams) -> dict:
    return {"n_predict": req.n_predict, "temperature": params.temperature, "top_k": params.top_k,
            "top_p": params.top_p, "min_p": params.min_p, "seed": req.seed, "stop": list(params.stop), "n_indent": req.n_indent,
            "t_max_predict_ms": req.t_max_predict_ms, "samplers": sorted(sampler_names(req.samplers) or ()),
            "stream": req.stream, "cache_prompt": True}


# ---------------------------------------------------------------------- the time limit


async def time_limited(outputs: Outputs, limit_s: float | None) -> Outputs:
    """The outputs, ended early by the time limit: once `limit_s` has passed since the first token
    and the text has a newline, a last output ends at its last complete line (the rest is aborted)."""
    async with contextlib.aclosing(outputs) as source:
        async for i, out in source:
            c = out.outputs[0]
            late = (limit_s is not None and not out.finished and out.first_token_time is not None
                    and time.monotonic() - out.first_token_time >= limit_s)
            if late and "\n" in c.text:
                cut = replace(c, text=c.text[:c.text.rfind("\n") + 1], finish_reason="stop", stop_reason=TIME_LIMIT)
                yield i, replace(out, outputs=[cut], finished=True, finish_time=time.monotonic())
                return
            yield i, out


# ---------------------------------------------------------------------- answers


def stop_type(out: RequestOutput, params: SamplingParams) -> tuple[str, str]:
    """llama.cpp's stop_type and stopping_word."""
    c = out.outputs[0]
    if c.finish_reason == "stop" and isinstance(c.stop_reason, int):
        return "eos", ""
    if c.finish_reason == "stop" and c.stop_reason in params.stop and c.stop_reason not in (DEDENT, TIME_LIMIT):
        return "word", str(c.stop_reason)
    return ("limit", "") if c.finish_reason is not None else ("none", "")


def timings(out: RequestOutput) -> InfillTimings:
    prompt_n, predicted_n = len(out.prompt_token_ids), len(out.outputs[0].token_ids)
    first = out.first_token_time if out.first_token_time is not None else out.arrival_time
    end = out.finish_time if out.finish_time is not None else time.monotonic()
    prompt_ms, predicted_ms = max(0.0, (first - out.arrival_time) * 1000), max(0.0, (end - first) * 1000)
    return InfillTimings(
        prompt_n=prompt_n, prompt_ms=prompt_ms, prompt_per_token_ms=prompt_ms / max(1, prompt_n),
        prompt_per_second=prompt_n / prompt_ms * 1000 if prompt_ms else 0.0,
        predicted_n=predicted_n, predicted_ms=predicted_ms, predicted_per_token_ms=predicted_ms / max(1, predicted_n),
        predicted_per_second=predicted_n / predicted_ms * 1000 if predicted_ms else 0.0)


def infill_body(job: InfillJob, out: RequestOutput, streamed: bool) -> InfillResponse:
    c = out.outputs[0]
    text = "" if job.warm_only else c.text
    predicted = 0 if job.warm_only else len(c.token_ids)
    kind, word = stop_type(out, job.params)
    return InfillResponse(
        content="" if streamed else text, tokens=list(c.token_ids) if job.return_tokens and not job.warm_only else [],
        model=job.model, tokens_predicted=predicted, tokens_evaluated=len(out.prompt_token_ids),
        generation_settings=job.settings, has_new_line="\n" in text, truncated=job.truncated,
        stop_type="limit" if job.warm_only else kind, stopping_word=word,
        tokens_cached=len(out.prompt_token_ids) + predicted, timings=timings(out))


def infill_answer(job: InfillJob, out: RequestOutput, streamed: bool = False) -> dict:
    """The answer as a JSON object: whole, or only the response_fields asked for."""
    body = infill_body(job, out, streamed).model_dump(mode="json")
    return body if job.response_fields is None else select_fields(body, job.response_fields)


def select_fields(body: dict, paths: tuple[str, ...]) -> dict:
    """Each path ("timings/prompt_n") found in `body`, under the path as its name; paths not found are left out."""
    out = {}
    for path in paths:
        value = body
        for key in path.split("/"):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            out[path] = value
    return out


@dataclass
class InfillStream(OpensOnWrite):
    """llama.cpp's stream: `data: {"content": ..., "stop": false}` events, then the last with the
    whole answer's fields (its content already sent); no [DONE]."""

    request: web.Request
    job: InfillJob
    _sent: int = 0
    _last: RequestOutput | None = None

    def __post_init__(self) -> None:
        self._out = OpenedOnWrite(self.request, SSE_HEADERS)

    async def add(self, prompt_index: int, out: RequestOutput) -> None:
        self._last = out
        c = out.outputs[0]
        text = "" if self.job.warm_only else c.text
        if not out.finished and self.job.time_limit_s is not None:
            text = text[:text.rfind("\n") + 1]  # whole lines: the time limit may end at the last one
        delta, self._sent = text[self._sent:], max(self._sent, len(text))
        event = InfillChunkEvent(content=delta, tokens_predicted=len(c.token_ids),
                                 tokens_evaluated=len(out.prompt_token_ids))
        await self._out.write(sse(event.model_dump_json()) if delta else b"")

    async def finish(self) -> None:
        await self._out.write(sse(infill_answer(self.job, self._last, streamed=True)))

    async def fail(self, error: APIError) -> None:
        await self._out.write(sse(error.body()))
