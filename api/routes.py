"""HTTP handlers. Each reads and validates its input, then hands over to completions/streaming."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time

import pydantic
from aiohttp import web

from engine.async_engine import EngineDeadError

from api import errors
from api.completions import (CompletionPlan, build_plan, deadline, engine_value_error, full_response,
                             merged_outputs)
from api.errors import APIError, bad_request
from api.metrics import CONTENT_TYPE_LATEST, GenerationTracker
from api.schemas import CompletionRequest, CopilotToken, Health, ModelCard, ModelList
from api.state import STATE, AppState
from api.streaming import CompletionStream


log = logging.getLogger(__name__)

TEN_YEARS = 10 * 365 * 24 * 3600


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/engines/{engine}/completions", engine_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/copilot_internal/v2/token", copilot_token)
    app.router.add_get("/openapi.json", openapi)


def state_of(request: web.Request) -> AppState:
    return request.app[STATE]


# ---------------------------------------------------------------------- completions


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, engine_name=None)


async def engine_completions(request: web.Request) -> web.StreamResponse:
    """Copilot / FauxPilot: /v1/engines/{engine}/completions, the engine naming the served model."""
    return await _complete(request, engine_name=request.match_info["engine"])


async def _complete(request: web.Request, engine_name: str | None) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    names = list(state.config.served_model_names)
    if engine_name is not None and engine_name not in names:
        raise APIError(404, f"The engine {engine_name!r} does not exist; this server serves {names[0]!r}.",
                       param="engine", code="model_not_found")
    body = await read_json(request)
    try:
        req = CompletionRequest.model_validate(body)
    except pydantic.ValidationError as e:
        raise errors.from_validation_error(e) from None
    if req.model is not None and req.model not in names:
        raise errors.model_not_found(req.model, names)
    if state.admission.shutting_down:
        raise errors.shutting_down(state.config.retry_after)
    plan = await build_plan(req, state.engine, state.config.model_name)
    with state.admission.reserve(plan.num_seqs):
        tracker = GenerationTracker(state.metrics, arrival)
        if plan.stream:
            return await _stream(request, state, plan, tracker)
        return await _full(state, plan, tracker)


async def _full(state: AppState, plan: CompletionPlan, tracker: GenerationTracker) -> web.Response:
    finals = {}
    try:
        async with deadline(state.config.request_timeout):
            async with contextlib.aclosing(merged_outputs(state.engine, plan)) as outputs:
                async for i, out in outputs:
                    tracker.observe(i, out, time.monotonic())
                    if out.finished:
                        finals[i] = out
    except Exception as e:  # noqa: BLE001 - every failure becomes an error object
        raise _generation_error(e, state) from None
    body = full_response(plan, finals, state.engine)
    return web.Response(text=body.model_dump_json(), content_type="application/json")


async def _stream(request: web.Request, state: AppState, plan: CompletionPlan,
                  tracker: GenerationTracker) -> web.StreamResponse:
    stream = CompletionStream(request, plan, state.engine)
    try:
        async with deadline(state.config.request_timeout):
            async with contextlib.aclosing(merged_outputs(state.engine, plan)) as outputs:
                async for i, out in outputs:
                    tracker.observe(i, out, time.monotonic())
                    await stream.add(i, out)
        await stream.finish()
    except ConnectionError:
        log.info("%s: client went away", plan.request_id)  # the engine requests are already aborted
    except Exception as e:  # noqa: BLE001
        error = _generation_error(e, state)
        if not stream.started:
            raise error from None
        with contextlib.suppress(ConnectionError):
            await stream.fail(error)
    return stream.response or web.Response(status=204)


def _generation_error(e: Exception, state: AppState) -> APIError:
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


async def read_json(request: web.Request) -> dict:
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"The request body is not valid UTF-8 ({e.reason} at byte {e.start}).",
                          code="invalid_encoding") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise bad_request(f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


# ---------------------------------------------------------------------- the rest


async def models(request: web.Request) -> web.Response:
    state = state_of(request)
    cards = [ModelCard(id=name, created=state.created, root=state.engine.model_name,
                       max_model_len=state.engine.max_model_len) for name in state.config.served_model_names]
    return web.Response(text=ModelList(data=cards).model_dump_json(), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    state = state_of(request)
    stats = state.engine.stats()
    ok = state.engine.is_running and not state.admission.shutting_down
    body = Health(ok=ok, model=state.config.model_name, kv_blocks_total=stats.num_blocks_total,
                  kv_blocks_free=stats.num_blocks_free, kv_blocks_used=stats.num_blocks_total - stats.num_blocks_free,
                  running=stats.num_running, waiting=stats.num_waiting,
                  in_flight_sequences=state.admission.in_flight, shutting_down=state.admission.shutting_down)
    return web.Response(status=200 if ok else 503, text=body.model_dump_json(), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    state = state_of(request)
    data = state.metrics.render(state.engine.stats(), state.admission.in_flight)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def copilot_token(request: web.Request) -> web.Response:
    """Copilot asks for a session token first; it then sends it as the bearer of each completion."""
    state = state_of(request)
    token = state.config.api_key or f"fastcodellama-{secrets.token_hex(16)}"
    body = CopilotToken(token=token, expires_at=int(time.time()) + TEN_YEARS, refresh_in=1500)
    return web.Response(text=body.model_dump_json(), content_type="application/json")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).openapi)
