"""From a CompletionRequest to engine requests and back to OpenAI choices.

A request with k prompts becomes k engine requests of n samples each; choice i * n + j is
sample j of prompt i, as OpenAI numbers them. Everything here is translation: the engine
validates what it owns (prompt length, token ids, sampling settings) and its ValueErrors
become 400s.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from engine import SamplingParams
from engine.async_engine import AsyncEngine
from engine.outputs import CompletionOutput, RequestOutput
from engine.tokenizer import IncrementalDetokenizer

from api.errors import APIError, bad_request
from api.schemas import CompletionChoice, CompletionRequest, CompletionResponse, Logprobs, Usage

if sys.version_info >= (3, 11):
    deadline = asyncio.timeout  # raises TimeoutError (== asyncio.TimeoutError)
else:  # aiohttp depends on async-timeout before 3.11
    from async_timeout import timeout as deadline

DEFAULT_MAX_TOKENS = 16
_PARAM_NAMES = ("n", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
                "frequency_penalty", "max_tokens", "min_tokens", "stop", "seed")


@dataclass
class CompletionPlan:
    request_id: str
    created: int
    model: str
    prompts: list[str | list[int]]  # what the engine gets, one per engine request
    echo_texts: list[str]  # prepended to each choice when echo is on
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    echo: bool = False

    @property
    def n(self) -> int:
        return self.params.n

    @property
    def num_seqs(self) -> int:
        return len(self.prompts) * self.params.n


async def build_plan(req: CompletionRequest, engine: AsyncEngine, model: str) -> CompletionPlan:
    prompts = _prompt_list(req.prompt)
    fim = engine.tokenizer.fim
    # An empty suffix is what editors send at the end of a file: infill when the model can, else plain.
    use_fim = req.suffix is not None and (req.suffix != "" or fim is not None)
    if req.echo and (use_fim or req.logprobs is not None):
        raise bad_request("echo cannot be combined with suffix or logprobs (prompt logprobs are not computed)",
                          param="echo")
    if use_fim:
        if fim is None:
            raise bad_request("This model has no fill-in-the-middle tokens (<PRE>, <SUF>, <MID>, <EOT>); "
                              "suffix is not supported.", param="suffix", code="fim_not_supported")
        if not all(isinstance(p, str) for p in prompts):
            raise bad_request("suffix needs a text prompt, not token ids", param="suffix")
        _check_text(req.suffix, "suffix")
        prompts = await asyncio.to_thread(_fim_prompts, engine, prompts, req.suffix)
    else:
        for p in prompts:
            if isinstance(p, str) and not p:
                raise bad_request("prompt is empty", param="prompt", code="empty_prompt")
    echo_texts = [""] * len(prompts)
    if req.echo:
        echo_texts = [p if isinstance(p, str) else engine.tokenizer.decode(p) for p in prompts]
    params = sampling_params(req, engine.max_model_len, stop_token_ids=(fim.eot,) if use_fim else ())
    return CompletionPlan(
        request_id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model, prompts=prompts,
        echo_texts=echo_texts, params=params, stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage), echo=bool(req.echo))


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
        if isinstance(p, str):
            _check_text(p, "prompt")
    return prompts


def _check_text(text: str, param: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{param} is not valid Unicode (unpaired surrogate)", param=param) from None


def _fim_prompts(engine: AsyncEngine, prefixes: list[str], suffix: str) -> list[list[int]]:
    """CodeLlama infilling: [BOS, PRE] prefix [SUF] suffix [MID]; the model ends the middle with EOT."""
    tok, fim = engine.tokenizer, engine.tokenizer.fim
    bos = [tok.bos_id] if tok.bos_id is not None else []
    suffix_ids = tok.encode(suffix, add_bos=False)
    return [bos + [fim.prefix] + tok.encode(prefix, add_bos=False) + [fim.suffix] + suffix_ids + [fim.middle]
            for prefix in prefixes]


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
            repetition_penalty=_or(req.repetition_penalty, 1.0),
            presence_penalty=_or(req.presence_penalty, 0.0),
            frequency_penalty=_or(req.frequency_penalty, 0.0),
            max_tokens=max_tokens,
            min_tokens=_or(req.min_tokens, 0),
            seed=req.seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            logprobs=req.logprobs is not None,
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


async def merged_outputs(engine: AsyncEngine, plan: CompletionPlan) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, cumulative output) from every engine request of the plan, as they come.

    Closing this generator (or cancelling its consumer) cancels every engine request that has
    not finished, so the engine frees their KV blocks at its next step boundary.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, prompt: str | list[int]) -> None:
        try:
            async with contextlib.aclosing(engine.generate(prompt, plan.params, f"{plan.request_id}-{i}")) as gen:
                async for out in gen:
                    queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which decides what the client sees
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, p), name=f"{plan.request_id}-{i}") for i, p in enumerate(plan.prompts)]
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


def usage(plan: CompletionPlan, outputs: dict[int, RequestOutput]) -> Usage:
    prompt = sum(len(o.prompt_token_ids) for o in outputs.values())
    completion = sum(o.num_generated_tokens for o in outputs.values())
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def full_response(plan: CompletionPlan, outputs: dict[int, RequestOutput], engine: AsyncEngine) -> CompletionResponse:
    choices = []
    for i in sorted(outputs):
        out = outputs[i]
        for c in sorted(out.outputs, key=lambda c: c.index):
            logprobs = None
            if c.logprobs is not None:
                logprobs = LogprobsBuilder(engine, out.prompt_token_ids).add(c.token_ids, c.logprobs, c.finished)
            choices.append(CompletionChoice(index=i * plan.n + c.index, text=plan.echo_texts[i] + c.text,
                                            logprobs=logprobs, finish_reason=c.finish_reason))
    return CompletionResponse(id=plan.request_id, created=plan.created, model=plan.model, choices=choices,
                              usage=usage(plan, outputs))


@dataclass
class LogprobsBuilder:
    """OpenAI's logprobs object for one sample; tokens are the text pieces the detokenizer released
    for each token (an empty piece while a character spans several byte tokens)."""

    engine: AsyncEngine
    prompt_token_ids: list[int]
    offset: int = 0
    _detok: IncrementalDetokenizer | None = field(default=None, repr=False)

    def add(self, token_ids: list[int], logprobs: list[float], finished: bool) -> Logprobs:
        if self._detok is None:
            self._detok = IncrementalDetokenizer(self.engine.tokenizer, self.prompt_token_ids)
        tokens, offsets = [], []
        for k, t in enumerate(token_ids):
            piece = self._detok.add(t)
            if finished and k == len(token_ids) - 1:
                piece += self._detok.flush()  # as the engine does with the text
            tokens.append(piece)
            offsets.append(self.offset)
            self.offset += len(piece)
        return Logprobs(tokens=tokens, token_logprobs=list(logprobs[:len(token_ids)]), top_logprobs=None,
                        text_offset=offsets)


def new_logprobs(builder: LogprobsBuilder, c: CompletionOutput, sent_tokens: int) -> Logprobs | None:
    if c.logprobs is None or len(c.token_ids) <= sent_tokens:
        return None
    return builder.add(c.token_ids[sent_tokens:], c.logprobs[sent_tokens:], c.finished)
