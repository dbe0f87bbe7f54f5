"""What every generating endpoint does around its own formats: read and validate the body, admit
the request, run its plan through the engine, answer in full or as a stream, and turn failures
into error objects."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any, AsyncIterator, Callable, Protocol, TypeVar

import pydantic
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from engine.async_engine import EngineDeadError
from engine.outputs import RequestOutput

from api import errors
from api.completions import CompletionPlan, deadline, engine_value_error, merged_outputs
from api.errors import APIError, bad_request
from api.metrics import GenerationTracker
from api.schemas import strict_json
from api.state import STATE, AppState

log = logging.getLogger(__name__)

CLIENT = web.RequestKey("client", str)  # who asks (api/clients.py), set by the generating handlers
Body = TypeVar("Body", bound=pydantic.BaseModel)
Outputs = AsyncIterator[tuple[int, RequestOutput]]


class Stream(Protocol):
    response: web.StreamResponse | None

    @property
    def started(self) -> bool: ...

    async def add(self, prompt_index: int, out: RequestOutput) -> None: ...

    async def finish(self) -> None: ...

    async def fail(self, error: APIError) -> None: ...


FullBody = Callable[[CompletionPlan, dict[int, RequestOutput]], "pydantic.BaseModel | dict"]


def state_of(request: web.Request) -> AppState:
    return request.app[STATE]


async def read_request(request: web.Request, schema: type[Body], check_model: bool = True) -> Body:
    """The validated body; sets the request's client. `check_model`: a `model` field must name
    the served model."""
    state = state_of(request)
    request[CLIENT] = state.clients.client_of(request.headers.get("Authorization"), request.remote)
    body = await read_json(request, state.config.body_timeout)
    try:
        req = schema.model_validate(body)
    except pydantic.ValidationError as e:
        raise errors.from_validation_error(e) from None
    names = list(state.config.served_model_names)
    model = getattr(req, "model", None)
    if check_model and model is not None and model not in names:
        raise errors.model_not_found(model, names)
    if state.admission.shutting_down:
        raise errors.shutting_down(state.config.retry_after)
    return req


async def answer(request: web.Request, plan: CompletionPlan, arrival: float, full: FullBody,
                 stream: Callable[[], Stream], outputs: Callable[[], Outputs] | None = None) -> web.StreamResponse:
    """Admits the plan, runs it and answers: `full(plan, finals)` as one JSON body, or (plan.stream)
    through `stream()`. `outputs` replaces the plan's engine outputs (to end them early)."""
    state = state_of(request)
    source = outputs or (lambda: merged_outputs(state.engine, plan))
    with state.admission.reserve(plan.num_seqs, plan.client):
        tracker = GenerationTracker(state.metrics, arrival, state.client_labels(plan.client))
        if plan.stream:
            return await _stream(state, plan, tracker, stream(), source)
        return await _full(state, plan, tracker, full, source)


async def _full(state: AppState, plan: CompletionPlan, tracker: GenerationTracker, full: FullBody,
                source: Callable[[], Outputs]) -> web.Response:
    finals = {}
    try:
        async with deadline(state.config.request_timeout):
            async with contextlib.aclosing(source()) as outputs:
                async for i, out in outputs:
                    tracker.observe(i, out, time.monotonic())
                    if out.finished:
                        finals[i] = out
    except Exception as e:  # noqa: BLE001 - every failure becomes an error object
        raise generation_error(e, state) from None
    body = full(plan, finals)
    text = body.model_dump_json() if isinstance(body, pydantic.BaseModel) else json.dumps(body)
    return web.Response(text=text, content_type="application/json")


async def _stream(state: AppState, plan: CompletionPlan, tracker: GenerationTracker, stream: Stream,
                  source: Callable[[], Outputs]) -> web.StreamResponse:
    interval, sent = state.config.stream_interval, {}  # tokens each prompt's output had at its last event
    try:
        async with deadline(state.config.request_timeout):
            async with contextlib.aclosing(source()) as outputs:
                async for i, out in outputs:
                    tracker.observe(i, out, time.monotonic())
                    tokens = out.num_generated_tokens
                    if out.finished or i not in sent or tokens - sent[i] >= interval:
                        sent[i] = tokens
                        await stream.add(i, out)
        await stream.finish()
    except ConnectionError:
        log.info("%s: client went away", plan.request_id)  # the engine requests are already aborted
    except Exception as e:  # noqa: BLE001
        error = generation_error(e, state)
        if not stream.started:
            raise error from None
        with contextlib.suppress(ConnectionError):
            await stream.fail(error)
    return stream.response or web.Response(status=204)


def generation_error(e: Exception, state: AppState) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return errors.request_timeout(state.config.request_timeout or 0)
    if isinstance(e, EngineDeadError):
        return errors.shutting_down(state.config.retry_after)
    if isinstance(e, ValueError):
        return engine_value_error(e)
    log.error("generation failed: %r", e, exc_info=e)
    return errors.internal(f"generation failed: {e}")


async def read_json(request: web.Request, timeout: float | None = None) -> dict:
    """The body as a JSON object; 408 if it does not arrive within `timeout` seconds."""
    try:
        async with deadline(timeout):
            raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
    except (TimeoutError, asyncio.TimeoutError):  # one class from 3.11 on
        raise APIError(408, f"The request body did not arrive within {timeout:g} s.", code="body_timeout") from None
    except RequestPayloadError as e:  # e.g. a Content-Encoding the body is not in; the connection cannot go on
        reason = str(e).split("message:", 1)[-1].strip()
        raise APIError(400, f"The request body could not be read: {reason}", code="invalid_encoding",
                       headers={"Connection": "close"}) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"The request body is not valid UTF-8 ({e.reason} at byte {e.start}).",
                          code="invalid_encoding") from None
    try:
        body = strict_json(text)
    except (ValueError, RecursionError) as e:
        raise bad_request(f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    where = _unpaired_surrogate(body)
    if where is not None:
        raise bad_request(f"The request body is not valid Unicode: {where} holds an unpaired surrogate "
                          "(a \\ud800-\\udfff escape that is not half of a pair).",
                          param=re.split(r"[.\[]", where)[0], code="invalid_encoding")
    return body


def _unpaired_surrogate(body: Any) -> str | None:
    """Where a decoded body's first string (or key) that is not valid Unicode lies, as a path
    (`messages[0].content`); None where every one is. JSON may escape half a surrogate pair, which
    decodes to a string that nothing downstream (the tokenizer, a template, the output) can take."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not _encodes(value):
                return path or "the body"
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _encodes(key):
                    return f"{path}.<key>" if path else "<key>"
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack += [(item, f"{path}[{i}]") for i, item in enumerate(value)]
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
