"""HTTP handlers. Each reads and validates its input, then hands over to completions/streaming;
the other generating endpoints have their own modules (chat, fim, infill, ollama, anthropic)."""
from __future__ import annotations

import secrets
import time

from aiohttp import web

from api import chat, echo, fim, infill, tokenize
from api.completions import build_plan, deadline, full_response
from api.errors import APIError
from api.generation import CLIENT, answer, generation_error, read_request, state_of
from api.metrics import CONTENT_TYPE_LATEST
from api.ollama import add_ollama_routes
from api.anthropic import add_anthropic_routes
from api.responses import add_responses_routes
from api.schemas import CompletionRequest, CopilotToken, CopilotUser, Health, ModelCard, ModelList
from api.streaming import CompletionStream

TEN_YEARS = 10 * 365 * 24 * 3600


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/engines/{engine}/completions", engine_completions)
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/fim/completions", fim.fim_completions)
    app.router.add_post("/infill", infill.infill)
    app.router.add_post("/tokenize", tokenize.tokenize)
    app.router.add_post("/detokenize", tokenize.detokenize)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/copilot_internal/v2/token", copilot_token)
    app.router.add_get("/copilot_internal/user", copilot_user)
    app.router.add_get("/openapi.json", openapi)
    add_ollama_routes(app)
    add_anthropic_routes(app)
    add_responses_routes(app)


# ---------------------------------------------------------------------- completions


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, engine_name=None)


# The engine the common FauxPilot recipe asks for, served whatever the model's name (Copilot's
# are told by their names' pattern: is_copilot_engine).
FAUXPILOT_ENGINE = "codegen"


def is_copilot_engine(name: str) -> bool:
    """The engine names Copilot's clients pick themselves (copilot-codex; its language server's model
    of the day, gpt-4o-copilot, gpt-41-copilot, ...) and FauxPilot's codegen: each is the served model."""
    return name == FAUXPILOT_ENGINE or name.startswith("copilot-") or name.endswith("-copilot")


async def engine_completions(request: web.Request) -> web.StreamResponse:
    """Copilot / FauxPilot: /v1/engines/{engine}/completions, the engine naming the served model."""
    return await _complete(request, engine_name=request.match_info["engine"])


async def _complete(request: web.Request, engine_name: str | None) -> web.StreamResponse:
    try:
        return await _complete_request(request, engine_name)
    finally:
        state_of(request).memory.after_request(request.content_length)


async def _complete_request(request: web.Request, engine_name: str | None) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    names = list(state.config.served_model_names)
    if engine_name is not None and engine_name not in names and not is_copilot_engine(engine_name):
        request[CLIENT] = state.clients.client_of(request.headers.get("Authorization"), request.remote)
        raise APIError(404, f"The engine {engine_name!r} does not exist; this server serves {names[0]!r}: restart "
                            f"it with --served-model-name {names[0]} {engine_name}", param="engine",
                       code="model_not_found")
    req = await read_request(request, CompletionRequest)
    plan = await build_plan(req, state.engine, state.prompts, state.config.model_name, request[CLIENT],
                            state.config.max_request_tokens)
    del req  # a large prompt's text is held by `req` alone until it is tokenized
    if plan.echo_only:
        with state.admission.reserve(plan.num_seqs, plan.client):
            try:
                async with deadline(state.config.request_timeout):
                    return await echo.respond(request, plan, state.engine)
            except Exception as e:  # noqa: BLE001
                raise generation_error(e, state) from None
    return await answer(request, plan, arrival, lambda p, finals: full_response(p, finals, state.engine),
                        lambda: CompletionStream(request, plan, state.engine))


# ---------------------------------------------------------------------- the rest


async def models(request: web.Request) -> web.Response:
    state = state_of(request)
    # root names the served model, never its folder on this machine.
    cards = [ModelCard(id=name, created=state.created, root=state.config.model_name,
                       max_model_len=state.engine.max_model_len) for name in state.config.served_model_names]
    return web.Response(text=ModelList(data=cards).model_dump_json(), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    state = state_of(request)
    stats = state.engine.stats()
    ok = state.engine.is_running and not state.admission.shutting_down
    body = Health(ok=ok, model=state.config.model_name, kv_blocks_total=stats.num_blocks_total,
                  kv_blocks_free=stats.num_blocks_free, kv_blocks_used=stats.num_blocks_total - stats.num_blocks_free,
                  kv_block_size=state.engine.config.block_size,
                  running=stats.num_running, waiting=stats.num_waiting,
                  in_flight_sequences=state.admission.in_flight, shutting_down=state.admission.shutting_down)
    return web.Response(status=200 if ok else 503, text=body.model_dump_json(), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    state = state_of(request)
    data = state.metrics.render(state.engine.stats(), state.admission.in_flight, state.client_in_flight(),
                                state.connections.open)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def copilot_token(request: web.Request) -> web.Response:
    """Copilot asks for a session token first; it then sends it as the bearer of each completion."""
    state = state_of(request)
    # With keys, the caller passed auth with one of them: that one is its session token.
    given = request.headers.get("Authorization", "").partition(" ")[2].strip()
    token = given if state.config.api_keys else f"fastcodellama-{secrets.token_hex(16)}"
    body = CopilotToken(token=token, expires_at=int(time.time()) + TEN_YEARS, refresh_in=1500,
                        endpoints=_copilot_endpoints(request))
    return _as_github(body.model_dump_json())


async def copilot_user(request: web.Request) -> web.Response:
    """The signed-in user as Copilot's language server asks after its token (a plan, where its
    requests go)."""
    return _as_github(CopilotUser(endpoints=_copilot_endpoints(request)).model_dump_json())


def _copilot_endpoints(request: web.Request) -> dict[str, str]:
    base = f"{request.scheme}://{request.host}"
    return {"api": base, "proxy": base}


def _as_github(text: str) -> web.Response:
    """A JSON answer with the request-id header every GitHub API answer has: Copilot's language
    server takes an answer without it for a proxy's and refuses it."""
    return web.Response(text=text, content_type="application/json",
                        headers={"x-github-request-id": secrets.token_hex(8)})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).openapi)
