"""From a CompletionRequest to engine requests and back to OpenAI choices.

A request with k prompts becomes k engine requests of n samples each; choice i * n + j is
sample j of prompt i, as OpenAI numbers them. Prompts reach the engine as token ids, tokenized
in the server's own threads (api/prompts.py) and checked against the context there; the engine
validates the rest of what it owns (token ids, sampling settings) and its ValueErrors become 400s.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Sequence

from engine import SamplingParams
from engine.async_engine import AsyncEngine
from engine.outputs import CompletionOutput, RequestOutput
from engine.tokenizer import IncrementalDetokenizer, Tokenizer

from api import guided
from api.errors import APIError, bad_request
from api.indent import dedent_limits
from api.predictions import prediction_details, prediction_ids
from api.prompts import PromptTokenizer
from api.reasoning import Thinking
from api.schemas import (CompletionChoice, CompletionRequest, CompletionResponse, Logprobs, PromptTokensDetails,
                         Usage)

if sys.version_info >= (3, 11):
    deadline = asyncio.timeout  # raises TimeoutError (== asyncio.TimeoutError)
else:  # aiohttp depends on async-timeout before 3.11
    from async_timeout import timeout as deadline

DEFAULT_MAX_TOKENS = 16
_PARAM_NAMES = ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                "frequency_penalty", "max_tokens", "min_tokens", "stop", "seed")


@dataclass
class CompletionPlan:
    request_id: str
    created: int
    model: str
    prompts: list[list[int]]  # token ids, one list per engine request
    echo_texts: list[str]  # prepended to each choice when echo is on
    params: SamplingParams
    client: str = "unknown"  # who asks: the engine shares its slots fairly by it
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    echo_only: bool = False  # max_tokens 0: the prompts come back, nothing is generated
    prompt_logprobs: bool = False  # echo only: with the prompts' own log probabilities
    prediction: list[int] | None = None  # the client's predicted output (token ids): drafts for every prompt
    stop_at_dedent: tuple[int | None, ...] = ()  # per prompt, where given (n_indent, Copilot's trim_by_indentation)
    thinking: Thinking | None = None  # a thinking model's chat: how its answers hold reasoning (api/reasoning.py)

    @property
    def n(self) -> int:
        return self.params.n

    @property
    def num_seqs(self) -> int:
        """Sequences the engine runs for this plan (what admission counts)."""
        if self.echo_only:
            return len(self.prompts) if self.prompt_logprobs else 0
        return len(self.prompts) * self.params.n


async def build_plan(req: CompletionRequest, engine: AsyncEngine, tokens: PromptTokenizer, model: str,
                     client: str, max_request_tokens: int) -> CompletionPlan:
    """Checks what is cheap first (settings, size bounds), then tokenizes off the event loop."""
    prompts = _prompt_list(req.prompt)
    fim = engine.tokenizer.fim
    # An empty suffix is what editors send at the end of a file: infill when the model can, else plain.
    use_fim = req.suffix is not None and (req.suffix != "" or fim is not None)
    echo_only = req.max_tokens == 0
    if echo_only and not req.echo:
        raise bad_request("max_tokens 0 generates nothing: it needs echo (to return the prompt and, with "
                          "logprobs, its log probabilities)", param="max_tokens", code="invalid_value")
    if req.echo and use_fim:
        raise bad_request("echo cannot be combined with suffix", param="echo")
    if req.echo and req.logprobs is not None and not echo_only:
        raise bad_request("echo with logprobs needs max_tokens 0 (the prompt's log probabilities alone); "
                          "with generation they are not computed", param="echo")
    if use_fim and fim is None:
        raise fim_not_supported("suffix")
    if use_fim and not all(isinstance(p, str) for p in prompts):
        raise bad_request("suffix needs a text prompt, not token ids", param="suffix")
    if echo_only:  # the other settings are still checked; max_tokens 1 stands in for the 0
        params = sampling_params(req.model_copy(update={"max_tokens": 1, "min_tokens": None}), engine.max_model_len)
    else:
        params = sampling_params(req, engine.max_model_len, stop_token_ids=fim.stop_ids if use_fim else ())
        check_request_tokens(len(prompts), params, max_request_tokens)
    if echo_only and req.prediction is not None:
        raise bad_request("prediction needs generation: max_tokens 0 generates nothing", param="prediction")
    held = await guided.constraint(req, tokens)
    if held is not None:
        try:
            params = replace(params, json_object=held[0], json_schema=held[1])
        except ValueError as e:  # with ignore_eos
            raise bad_request(str(e), param="structured_outputs") from None
    ids = await _prompt_ids(prompts, req.suffix if use_fim else None, engine, tokens)
    params = with_marked_stops(params, engine.tokenizer, ids)
    predicted = await prediction_ids(req.prediction, tokens, params.max_tokens)
    if echo_only and req.logprobs is not None:
        replayed = sum(len(p) - 1 for p in ids)  # what the prompt logprobs cost the engine
        if replayed > max_request_tokens:
            raise bad_request(f"The prompts' log probabilities take {replayed} engine tokens; this server allows "
                              f"at most {max_request_tokens} per request (max_request_tokens).",
                              param="prompt", code="request_too_large")
    echo_texts = [""] * len(prompts)
    if req.echo:
        echo_texts = [p if isinstance(p, str) else engine.tokenizer.decode(p) for p in prompts]
    return CompletionPlan(
        request_id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model, prompts=ids,
        echo_texts=echo_texts, params=params, client=client, stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage), echo=bool(req.echo),
        echo_only=echo_only, prompt_logprobs=echo_only and req.logprobs is not None, prediction=predicted,
        stop_at_dedent=dedent_limits(req, prompts))


def with_marked_stops(params: SamplingParams, tokenizer: Tokenizer, prompts: list[list[int]]) -> SamplingParams:
    """Stops the text cannot show: a stop string naming one of the model's infilling tokens
    ("<EOT>": the detokenizer leaves it out of the text) stops at that token, and a prompt already
    in the model's infilling format (a client's own template) ends where the middle ends, as a
    suffix's does."""
    fim = tokenizer.fim
    if fim is None:
        return params
    stops = [tokenizer.markers[s] for s in params.stop if s in tokenizer.markers]
    if any(fim.prefix in p and fim.suffix in p for p in prompts):
        stops += fim.stop_ids
    if not stops:
        return params
    return replace(params, stop_token_ids=tuple(dict.fromkeys((*params.stop_token_ids, *stops))))


def fim_not_supported(param: str) -> APIError:
    return bad_request("This model has no fill-in-the-middle tokens; infilling is not supported.", param=param,
                       code="fim_not_supported")


async def _prompt_ids(prompts: list[str | list[int]], suffix: str | None, engine: AsyncEngine,
                      tokens: PromptTokenizer) -> list[list[int]]:
    """Each prompt's token ids (infilling ones when `suffix` is given), tokenized off the event
    loop after the length bound has turned away texts too long for the context."""
    if suffix is not None:
        texts = [str(p) for p in prompts]
        for p in texts:
            tokens.check_length([p, suffix], extra_tokens=3)
        chars = sum(len(p) for p in texts) + len(texts) * len(suffix)
        ids = await tokens.run(chars, lambda: _fim_prompts(engine, texts, suffix))
        for p in ids:
            tokens.check_ids(p)
        return ids
    for p in prompts:
        if isinstance(p, str) and not p:
            raise bad_request("prompt is empty", param="prompt", code="empty_prompt")
        if isinstance(p, str):
            tokens.check_length([p])
        else:
            tokens.check_ids(p)
    texts = [p for p in prompts if isinstance(p, str)]
    encoded = iter(await tokens.encode(texts) if texts else [])
    return [next(encoded) if isinstance(p, str) else p for p in prompts]


def check_request_tokens(num_prompts: int, params: SamplingParams, limit: int) -> None:
    """One request may not ask for more than `limit` tokens: n x max_tokens is what it can hold."""
    asked = num_prompts * params.n * params.max_tokens
    if asked > limit:
        raise bad_request(f"The request asks for up to {asked} tokens (prompts {num_prompts} x n {params.n} x "
                          f"max_tokens {params.max_tokens}); this server allows at most {limit} per request "
                          f"(max_request_tokens). Lower n or max_tokens, or split the request.",
                          param="n" if params.n > 1 else "max_tokens", code="request_too_large")


def _prompt_list(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise bad_request("prompt is empty", param="prompt", code="empty_prompt")
    for p in prompts:
        if isinstance(p, list) and not p:
            raise bad_request("prompt is empty (no token ids)", param="prompt", code="empty_prompt")
    return prompts


def _fim_prompts(engine: AsyncEngine, prefixes: list[str], suffix: str) -> list[list[int]]:
    """Each prefix with the suffix in the model's own infilling format (engine/tokenizer.py)."""
    return [engine.tokenizer.fim_prompt(prefix, suffix) for prefix in prefixes]


def sampling_params(req: CompletionRequest, max_model_len: int, stop_token_ids: tuple[int, ...] = ()) -> SamplingParams:
    n = req.n if req.n is not None else 1
    if req.best_of is not None and req.best_of != n:
        raise bad_request(f"best_of must equal n ({n}): samples are not ranked", param="best_of")
    max_tokens = req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS
    if max_tokens > max_model_len:
        raise bad_request(f"max_tokens is {max_tokens}; the model's context is {max_model_len} tokens",
                          param="max_tokens", code="max_tokens_too_large")
    stop = req.stop if req.stop is not None else ()
    top_k = req.top_k if req.top_k is not None and req.top_k > 0 else 0
    try:
        return SamplingParams(
            n=n,
            temperature=_or(req.temperature, 1.0),
            top_p=_or(req.top_p, 1.0),
            top_k=min(top_k, 1 << 31),  # anything above the vocabulary is no top-k
            min_p=_or(req.min_p, 0.0),
            repetition_penalty=_or(req.repetition_penalty, 1.0),
            presence_penalty=_or(req.presence_penalty, 0.0),
            frequency_penalty=_or(req.frequency_penalty, 0.0),
            max_tokens=max_tokens,
            min_tokens=_or(req.min_tokens, 0),
            seed=req.seed,
            stop=stop,
            stop_token_ids=(*stop_token_ids, *(req.stop_token_ids or ())),
            ignore_eos=bool(req.ignore_eos),
            logprobs=req.logprobs is not None,
            top_logprobs=req.logprobs or 0,
            logit_bias=tuple((int(k), v) for k, v in (req.logit_bias or {}).items()),
        )
    except ValueError as e:
        raise engine_value_error(e) from None


def _or(value, default):
    return default if value is None else value


def engine_value_error(e: ValueError) -> APIError:
    """An engine ValueError as a 400, naming the parameter when the message starts with one."""
    message = str(e)
    first = message.split(" ", 1)[0].rstrip(":")
    param = first if first in _PARAM_NAMES else ("prompt" if "prompt" in message else None)
    return bad_request(message, param=param)


# ---------------------------------------------------------------------- running


def plan_jobs(plan: CompletionPlan) -> list[tuple[list[int], SamplingParams]]:
    """One engine request per prompt, with the indentation stop of its own cursor where it has one."""
    jobs = []
    for i, p in enumerate(plan.prompts):
        dedent = plan.stop_at_dedent[i] if i < len(plan.stop_at_dedent) else None
        jobs.append((p, replace(plan.params, stop_at_dedent=dedent) if dedent else plan.params))
    return jobs


async def merged_outputs(engine: AsyncEngine, plan: CompletionPlan,
                         jobs: Sequence[tuple[list[int], SamplingParams]] | None = None,
                         ) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(job index, cumulative output) from every engine request of the plan (by default one job
    per prompt with the plan's settings), as they come.

    Each engine request fails alone: its error ends this request, never another. Closing this
    generator (or cancelling its consumer) cancels every engine request that has not finished,
    so the engine frees their KV blocks at its next step boundary.
    """
    jobs = jobs if jobs is not None else plan_jobs(plan)
    extra = {"prediction": plan.prediction} if plan.prediction is not None else {}
    if len(jobs) == 1:  # most requests: the engine's outputs as they come, no task between
        prompt, params = jobs[0]
        async with contextlib.aclosing(engine.generate(prompt, params, f"{plan.request_id}-0", client=plan.client,
                                                       **extra)) as gen:
            async for out in gen:
                yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, prompt: list[int], params: SamplingParams) -> None:
        request_id = f"{plan.request_id}-{i}"
        try:
            generation = engine.generate(prompt, params, request_id, client=plan.client, **extra)
            async with contextlib.aclosing(generation) as gen:
                async for out in gen:
                    queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which decides what the client sees
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, p, params), name=f"{plan.request_id}-{i}")
             for i, (p, params) in enumerate(jobs)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------- responses

_FINISH_REASONS = frozenset({"stop", "length", "abort"})


def finish_reason(reason: str | None) -> str | None:
    """The engine's finish reason as a client knows it: any other reason (a sequence the engine
    had to end early, say) reads as "length", the sequence ended before it chose to."""
    return reason if reason is None or reason in _FINISH_REASONS else "length"



def usage(plan: CompletionPlan, outputs: dict[int, RequestOutput]) -> Usage:
    prompt = sum(len(o.prompt_token_ids) for o in outputs.values())
    completion = sum(o.num_generated_tokens for o in outputs.values())
    details = prediction_details(outputs.values()) if plan.prediction is not None else None
    cached = PromptTokensDetails(cached_tokens=sum(o.cached_prompt_tokens for o in outputs.values()))
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=cached, completion_tokens_details=details)


def full_response(plan: CompletionPlan, outputs: dict[int, RequestOutput], engine: AsyncEngine) -> CompletionResponse:
    choices = []
    for i in sorted(outputs):
        out = outputs[i]
        for c in sorted(out.outputs, key=lambda c: c.index):
            logprobs = None
            if c.logprobs is not None:
                logprobs = LogprobsBuilder(engine, out.prompt_token_ids).add(c.token_ids, c.logprobs, c.finished,
                                                                             c.top_logprobs)
            choices.append(CompletionChoice(index=i * plan.n + c.index, text=plan.echo_texts[i] + c.text,
                                            logprobs=logprobs, finish_reason=finish_reason(c.finish_reason)))
    return CompletionResponse(id=plan.request_id, created=plan.created, model=plan.model, choices=choices,
                              usage=usage(plan, outputs))


@dataclass
class LogprobsBuilder:
    """OpenAI's logprobs object for one sample; tokens are the text pieces the detokenizer released
    for each token (an empty piece while a character spans several byte tokens). An alternative's
    text is what it would have added after the tokens before it."""

    engine: AsyncEngine
    prompt_token_ids: list[int]
    offset: int = 0
    _detok: IncrementalDetokenizer | None = field(default=None, repr=False)
    _recent: list[int] = field(default_factory=list, repr=False)  # the last tokens, for alternatives' text

    def add(self, token_ids: list[int], logprobs: list[float], finished: bool,
            top: Sequence[tuple[tuple[int, float], ...]] | None = None) -> Logprobs:
        if self._detok is None:
            self._detok = IncrementalDetokenizer(self.engine.tokenizer, self.prompt_token_ids)
            self._recent = list(self.prompt_token_ids[-CONTEXT_TOKENS:])
        tokens, offsets, alternatives = [], [], []
        for k, t in enumerate(token_ids):
            if top is not None:
                texts: dict[str, float] = {}
                for i, value in top[k]:  # likeliest first: two tokens of one text keep the likelier
                    texts.setdefault(self._alternative_text(i), value)
                alternatives.append(texts)
            piece = self._detok.add(t)
            if finished and k == len(token_ids) - 1:
                piece += self._detok.flush()  # as the engine does with the text
            tokens.append(piece)
            offsets.append(self.offset)
            self.offset += len(piece)
            self._recent = (self._recent + [t])[-CONTEXT_TOKENS:]
        return Logprobs(tokens=tokens, token_logprobs=list(logprobs[:len(token_ids)]),
                        top_logprobs=alternatives if top is not None else None, text_offset=offsets)

    def _alternative_text(self, token_id: int) -> str:
        decode = self.engine.tokenizer.decode
        before = decode(self._recent)
        after = decode(self._recent + [token_id])
        # A token that completes or breaks a character leaves no clean difference: its text alone.
        return after[len(before):] if after.startswith(before) else decode([token_id])


CONTEXT_TOKENS = 4  # tokens before an alternative that its text is decoded after (leading spaces, bytes)


def new_logprobs(builder: LogprobsBuilder, c: CompletionOutput, sent_tokens: int) -> Logprobs | None:
    if c.logprobs is None or len(c.token_ids) <= sent_tokens:
        return None
    top = c.top_logprobs[sent_tokens:] if c.top_logprobs is not None else None
    return builder.add(c.token_ids[sent_tokens:], c.logprobs[sent_tokens:], c.finished, top)
