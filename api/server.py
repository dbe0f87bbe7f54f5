"""The app factory (create_app), the engine it serves (build_engine) and the process (serve).

Shutdown on SIGTERM or SIGINT: the listening socket closes, new requests on open connections
get 503, in-flight requests get `shutdown_grace` seconds to finish; then the engine shuts down
and what is left ends with a clean error (503, or an SSE error event); the process exits 0.

Sockets are accepted through a ConnectionGate (api/connections.py): caps, idle eviction and a
header timeout; aiohttp's own keep-alive timeout and header size limits apply on top.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from dataclasses import replace
from typing import Awaitable, Callable

from aiohttp import web

from engine import EngineConfig
from engine.async_engine import AsyncEngine

from api import errors
from api.config import ServerConfig
from api.connections import GatedTCPSite, connection_cap, open_file_limit, raise_open_file_limit
from api.logs import ProtocolLogger
from api.generation import CLIENT
from api.routes import add_routes
from api.state import STATE, AppState
from fastcodellama.drafting import SpecConfig, build_proposer

log = logging.getLogger("api")

PUBLIC_PATHS = frozenset({"/health", "/"})  # no API key needed (liveness probes)
HANDLER_DRAIN_S = 5.0  # after the grace period: time for handlers to write their error and return
MAX_HEADER_LINE = 8190  # bytes of the request line or one header (aiohttp's default, stated here)
LINGERING_S = 2.0  # reading the rest of a body the handler did not want (a 401, a 413) before closing


# ---------------------------------------------------------------------- the engine


def build_engine(config: EngineConfig, spec: SpecConfig | None = SpecConfig()) -> AsyncEngine:
    """The engine the server runs; `spec` None serves without copy drafting."""
    return AsyncEngine(config, proposer=build_proposer(spec) if spec is not None else None)


# ---------------------------------------------------------------------- the app


def create_app(engine: AsyncEngine, config: ServerConfig) -> web.Application:
    """An app over a (not yet started) engine; the app starts it and, on cleanup, shuts it down."""
    state = AppState(engine, config)
    middlewares = [_connection_middleware, _error_middleware]
    if config.cors_origins:
        middlewares.append(_cors_preflight_middleware)
    if config.api_key is not None:
        middlewares.append(_auth_middleware)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    app[STATE] = state
    add_routes(app)
    if config.cors_origins:
        app.on_response_prepare.append(_add_cors_headers)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    await state.engine.start()
    await state.prompts.start()
    await state.load_chat_template()
    warn_if_kv_cache_short(state.engine)


def warn_if_kv_cache_short(engine: AsyncEngine) -> None:
    """A cache that cannot hold one full-length sequence ends long requests early."""
    blocks = engine.stats().num_blocks_total
    tokens = blocks * engine.config.block_size
    if tokens < engine.max_model_len:
        log.warning("the KV cache holds %d tokens (%d blocks of %d), less than one sequence of the model's "
                    "context (%d tokens): a request that outgrows it ends early; give more KV memory "
                    "(--kv-cache-memory-gb, --num-kv-blocks) or a shorter --max-model-len", tokens, blocks,
                    engine.config.block_size, engine.max_model_len)


async def _on_shutdown(app: web.Application) -> None:
    """Stop admitting, let in-flight requests finish within the grace period, then end the rest."""
    state = app[STATE]
    state.admission.begin_shutdown()
    grace = state.config.shutdown_grace
    if not await state.admission.wait_idle(grace):
        log.warning("%d requests still running after %.0f s: aborting them", state.admission.requests, grace)
    await state.stop_engine()  # what is left ends with EngineDeadError -> 503 / SSE error event
    await state.admission.wait_idle(HANDLER_DRAIN_S)


async def _on_cleanup(app: web.Application) -> None:
    await app[STATE].stop_engine()
    app[STATE].prompts.close()
    app[STATE].memory.close()


# ---------------------------------------------------------------------- middlewares

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While a request runs its connection is busy: not idle, so never closed to make room."""
    with request.app[STATE].connections.busy(request.transport):
        return await handler(request)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as an error object; counts every response by endpoint and status."""
    state = request.app[STATE]
    dialect = error_dialect(request.path)
    try:
        response = await handler(request)
    except errors.APIError as e:
        response = e.response(dialect)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = errors.from_http_exception(e).response(dialect)
    except Exception:  # noqa: BLE001 - the request fails alone; the server goes on
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = errors.internal("internal server error").response(dialect)
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "unmatched"
    state.metrics.requests.labels(endpoint, str(response.status)).inc()
    client = request.get(CLIENT)
    if client is not None:
        state.metrics.client_requests.labels(state.client_labels(client), str(response.status)).inc()
    return response


def error_dialect(path: str) -> str:
    """Whose API a path is, so whose error shape it answers in: Ollama's (api/ollama.py),
    Anthropic's (api/anthropic.py), else OpenAI's."""
    if path.startswith("/api/"):
        return "ollama"
    return "anthropic" if path.startswith("/v1/messages") else "openai"


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.method == "OPTIONS":
        return await handler(request)
    keys = request.app[STATE].config.api_keys
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if "x-api-key" in request.headers and not given:  # Anthropic's clients send the key so
        scheme, given = "bearer", request.headers["x-api-key"]
    # Copilot sends "token <t>" to its token endpoint, "Bearer <t>" elsewhere.
    given_bytes = given.strip().encode("utf-8", "surrogateescape")  # header bytes aiohttp could not decode
    matches = [hmac.compare_digest(given_bytes, key.encode()) for key in keys]  # every key: time says nothing
    if scheme.lower() not in ("bearer", "token") or not any(matches):
        raise errors.unauthorized()
    return await handler(request)


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    origins = request.app[STATE].config.cors_origins
    if origin is None:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


@web.middleware
async def _cors_preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if _allowed_origin(request) is None:
            raise errors.APIError(403, "CORS origin not allowed", code="cors_origin_not_allowed")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, x-api-key, anthropic-version",
            "Access-Control-Max-Age": "600"})
    return await handler(request)


async def _add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        if origin != "*":
            response.headers["Vary"] = "Origin"


# ---------------------------------------------------------------------- the process


async def start_site(app: web.Application, host: str, port: int,
                     access_log: bool = True) -> tuple[web.AppRunner, str, int]:
    """Starts `app` on host:port (0: any free port); returns the runner and the bound address."""
    state = app[STATE]
    config = state.config
    gate = state.connections
    cap = connection_cap(config.max_connections, open_file_limit())
    if cap < config.max_connections:
        log.warning("at most %d connections (not %d): the open-file limit is %s", cap, config.max_connections,
                    open_file_limit())
    gate.limits = replace(gate.limits, max_connections=cap)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=HANDLER_DRAIN_S,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None,
                           keepalive_timeout=config.keepalive_timeout, max_line_size=MAX_HEADER_LINE,
                           max_field_size=MAX_HEADER_LINE, lingering_time=LINGERING_S,
                           logger=ProtocolLogger(logging.getLogger("aiohttp.server")))
    await runner.setup()
    try:
        site = GatedTCPSite(runner, host, port, gate)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, bound_host, bound_port


async def serve(engine: AsyncEngine, config: ServerConfig, access_log: bool = True,
                ready: Callable[[str, int], None] | None = None) -> int:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully; returns the exit code."""
    raise_open_file_limit()  # idle sockets must not be what runs out
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner, host, port = await start_site(create_app(engine, config), config.host, config.port, access_log)
        try:
            log.info("listening on http://%s:%d (model %s)", host, port, config.model_name)
            if ready is not None:
                ready(host, port)
            await stop.wait()
            log.info("shutting down: finishing in-flight requests (grace %.0f s)", config.shutdown_grace)
        finally:
            await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def run_server(engine_config: EngineConfig, config: ServerConfig, spec: SpecConfig | None = SpecConfig(),
               access_log: bool = True) -> int:
    engine = build_engine(engine_config, spec)
    return asyncio.run(serve(engine, config, access_log=access_log))
