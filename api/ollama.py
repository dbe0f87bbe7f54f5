"""Ollama's API, for the editors that speak it: Continue's and Twinny's `ollama` providers,
llama-coder, Zed, Cody, CodeCompanion, gen.nvim and the `ollama` client (api/ollama_schemas.py:
what they send; api/ollama_lines.py: the answers).

POST /api/generate builds its prompt so:
- with `suffix` (Continue, where /api/show's template names .Suffix): the model's own infilling
  format, as /v1/completions with a suffix;
- `raw`, or a prompt already holding the model's infilling tokens (Twinny's and Cody's templates,
  sent without raw), or a checkpoint without a chat template of its own (a base model): the
  prompt as it is, as Ollama's base code models' templates pass it;
- otherwise (an instruct model asked in words, gen.nvim): `system` and the prompt as a user
  message through the checkpoint's chat template, as Ollama's instruct models' templates do.
`context` (the ids an earlier answer gave back) goes before the prompt. POST /api/chat is
/v1/chat/completions in Ollama's shapes. An empty prompt, or no messages, only "loads" the model.

Names: a model name without a tag is name:latest, as Ollama's are. Errors are {"error": "..."}
(api/server.py renders them so for every /api/ path).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from api.chat import build_chat_plan, constrained, response_schema, shown_tags, think_first
from api.chat_schemas import ChatMessage, ChatRequest, JsonSchemaFormat, ResponseFormat
from api.chat_template import ChatTemplate, ChatTemplateError
from api.completions import CompletionPlan, build_plan
from api.errors import APIError, bad_request
from api.generation import CLIENT, answer, read_request, state_of
from api.ollama_lines import Answer, LineStream, created_at, line
from api.ollama_schemas import (DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, OllamaChatRequest,
                                OllamaGenerateRequest, OllamaGeneration, OllamaMessage, OllamaModelRequest,
                                OllamaOptions)
from api.reasoning import Thinking
from api.schemas import CompletionRequest
from api.state import AppState
from engine.tokenizer import Tokenizer

# The Ollama release whose API these handlers follow (clients may gate features on it).
OLLAMA_VERSION = "0.12.11"
LATEST = ":latest"
FAR_FUTURE = "2318-01-01T00:00:00Z"  # /api/ps: the model is never unloaded


def add_ollama_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", running)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    for path in ("/api/embed", "/api/embeddings"):
        app.router.add_post(path, embeddings)
    for path in ("/api/create", "/api/copy", "/api/push", "/api/delete"):
        app.router.add_route("*", path, manage)


# ---------------------------------------------------------------------- generating


async def generate(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, OllamaGenerateRequest, check_model=False)
        served_name(state, req.model)
        _refuse_unsupported(req, state, images=bool(req.images))
        if req.raw and (req.template or req.system or req.context):
            raise bad_request("raw mode does not support template, system, or context", param="raw")
        if req.template:
            raise bad_request("template: Ollama's Go templates are not rendered here; send raw prompts (raw: true) "
                              "or leave the template to the model's own.", param="template")
        if not req.prompt and not req.suffix:
            return _loaded(req, {"response": ""})
        plan = await _generate_plan(req, state, request[CLIENT])
        return await _respond(request, plan, Answer(req.model, arrival, chat=False, context=not req.raw,
                                                    logprobs=_logprobs(req), engine=state.engine,
                                                    thinking=plan.thinking))
    finally:
        state.memory.after_request(request.content_length)


async def chat(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, OllamaChatRequest, check_model=False)
        served_name(state, req.model)
        _refuse_unsupported(req, state, images=any(m.images for m in req.messages))
        if not req.messages:
            return _loaded(req, {"message": {"role": "assistant", "content": ""}})
        num_predict = (req.options or OllamaOptions()).num_predict
        asked = ChatRequest.model_construct(
            messages=[ChatMessage.model_validate(_template_message(m, i)) for i, m in enumerate(req.messages)],
            tools=req.tools or None, tool_choice=None, parallel_tool_calls=None, logprobs=bool(req.logprobs),
            top_logprobs=req.top_logprobs if req.logprobs else None,
            response_format=_response_format(req.format),
            max_tokens=_at_most(num_predict, state), max_completion_tokens=None,
            chat_template_kwargs=_thinking_options(req), separate_reasoning=None, **sampling_fields(req))
        plan, calls = await build_chat_plan(asked, state, request[CLIENT])
        del asked
        return await _respond(request, plan, Answer(req.model, arrival, chat=True, calls=calls,
                                                    logprobs=_logprobs(req), engine=state.engine,
                                                    thinking=plan.thinking))
    finally:
        state.memory.after_request(request.content_length)


async def _respond(request: web.Request, plan: CompletionPlan, job: Answer) -> web.StreamResponse:
    plan.request_id = f"ollama-{uuid.uuid4().hex}"
    return await answer(request, plan, job.arrival, lambda p, finals: job.whole(finals[0]),
                        lambda: LineStream(request, job))


async def _generate_plan(req: OllamaGenerateRequest, state: AppState, client: str) -> CompletionPlan:
    tokenizer = state.engine.tokenizer
    infill = req.suffix is not None and (req.suffix != "" or tokenizer.fim is not None)
    if infill and tokenizer.fim is None:
        raise bad_request(f"{req.model} does not support insert: the model has no fill-in-the-middle tokens",
                          param="suffix")
    texts = [req.prompt, req.suffix or "", req.system or ""]
    state.prompts.check_length(texts, extra_tokens=len(req.context or ()))
    template = None if req.raw else _own_template(state)
    try:
        text, ids = await state.prompts.run(sum(map(len, texts)),
                                            lambda: prompt(req, tokenizer, template, infill))
    except ChatTemplateError as e:
        raise bad_request(f"The model's chat template refused the prompt: {e}", param="prompt") from None
    state.prompts.check_ids(ids)
    num_predict = (req.options or OllamaOptions()).num_predict
    room = max(1, min(state.engine.max_model_len - len(ids), state.config.max_request_tokens))
    completion = CompletionRequest.model_construct(
        prompt=ids, suffix=None, max_tokens=min(_at_most(num_predict, state) or room, room),
        logprobs=(req.top_logprobs or 0) if req.logprobs else None, best_of=None, echo=False, extra=None,
        **sampling_fields(req))
    plan = await build_plan(completion, state.engine, state.prompts, state.config.model_name, client,
                            state.config.max_request_tokens)
    shaped = _response_format(req.format)
    if shaped is not None:
        schema = await response_schema(shaped, state, "format") if shaped.type == "json_schema" else None
        plan.params = constrained(plan.params, schema, "format")
    first = think_first(template, tokenizer, text) if text is not None and shaped is not None else None
    if first is not None:  # a thinking model's reasoning first, then the format, as in chat
        plan.params = dataclasses.replace(plan.params, think_first=first)
    if text is not None and template.thinks and (shaped is None or first is not None):
        plan.thinking = Thinking.of(text, template.think_tags)
        tags = shown_tags(template)
        if tags:
            plan.params = dataclasses.replace(plan.params, special_texts=tags)
    return plan


def _own_template(state: AppState) -> ChatTemplate | None:
    """The checkpoint's own chat template (not the default a Llama tokenizer gets for chat)."""
    template = state.chat_template
    return template if template is not None and template.checkpoints_own else None


def prompt(req: OllamaGenerateRequest, tokenizer: Tokenizer, template: ChatTemplate | None,
           infill: bool) -> tuple[str | None, list[int]]:
    """The ids /api/generate feeds the model (the rules in the module's docstring), and the text
    the chat template rendered (None where it rendered none)."""
    text = None
    if infill:
        ids = tokenizer.fim_prompt(req.prompt, req.suffix or "")
    elif template is None or any(marker in req.prompt for marker in tokenizer.markers):
        ids = tokenizer.encode_prompt(req.prompt)
    else:
        system = [{"role": "system", "content": req.system}] if req.system else []
        text, ids = template.prompt(tokenizer, [*system, {"role": "user", "content": req.prompt}],
                                    options=_thinking_options(req))
    if not req.context:
        return text, ids
    if ids and ids[0] == tokenizer.bos_id:  # the context starts the text already
        ids = ids[1:]
    return text, [*req.context, *ids]


def _logprobs(req: OllamaGeneration) -> int | None:
    """The likeliest tokens each position's log probability comes with (None: no logprobs asked)."""
    return (req.top_logprobs or 0) if req.logprobs else None


def _thinking_options(req: OllamaGeneration) -> dict[str, Any] | None:
    """`think` as the template option Qwen3's template reads (absent: the template's default)."""
    return None if req.think is None else {"enable_thinking": req.think}


def sampling_fields(req: OllamaGeneration) -> dict[str, Any]:
    """The request's options as the OpenAI-shaped requests' sampling fields, Ollama's defaults filled in."""
    o = req.options or OllamaOptions()
    return dict(n=1, stream=req.stream is not False,
                temperature=_or(o.temperature, DEFAULT_TEMPERATURE), top_p=_or(o.top_p, DEFAULT_TOP_P),
                top_k=max(0, _or(o.top_k, DEFAULT_TOP_K)), min_p=o.min_p,
                seed=o.seed if o.seed is not None and o.seed >= 0 else None,
                stop=[o.stop] if isinstance(o.stop, str) else o.stop, repetition_penalty=o.repeat_penalty,
                presence_penalty=o.presence_penalty, frequency_penalty=o.frequency_penalty)


def _at_most(num_predict: int | None, state: AppState) -> int | None:
    """num_predict as a bound (None: up to the context); past the context or the server's
    max_request_tokens it is what they allow, as Ollama stops where its context ends."""
    if num_predict is None or num_predict <= 0:
        return None
    return min(num_predict, state.engine.max_model_len, state.config.max_request_tokens)


def _or(value, default):
    return default if value is None else value


def _refuse_unsupported(req: OllamaGeneration, state: AppState, images: bool) -> None:
    if images:
        raise bad_request("images: this server runs text models only.", param="images")
    if isinstance(req.think, str):
        raise bad_request(f"think: levels ({req.think!r}) are not supported here; send true or false.", param="think")
    if req.think and "thinking" not in capabilities(state):
        raise bad_request(f"{req.model!r} does not support thinking (its chat template writes no think blocks).",
                          param="think")


def _response_format(fmt: str | dict | None) -> ResponseFormat | None:
    """`format` as OpenAI's response_format: "json" one JSON object, a schema JSON it accepts."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return ResponseFormat(type="json_object")
    if isinstance(fmt, dict):
        return ResponseFormat.model_construct(type="json_schema", json_schema=JsonSchemaFormat.model_construct(
            name=None, description=None, schema_=fmt, strict=None))
    raise bad_request(f"invalid format: {fmt!r}; expected \"json\" or a valid JSON Schema object", param="format")


def _template_message(m: OllamaMessage, index: int) -> dict[str, Any]:
    """An Ollama message as the chat template reads an OpenAI one: its calls' arguments stay
    objects (the templates write them out so), a tool's answer names its tool, its thinking is its
    reasoning_content."""
    message: dict[str, Any] = {"role": m.role.lower(), "content": m.content or ""}
    if m.tool_calls:
        message["tool_calls"] = [_template_call(call, index) for call in m.tool_calls]
    if m.tool_name:
        message["name"] = m.tool_name
    if m.thinking:
        message["reasoning_content"] = m.thinking  # as OpenAI's clients send it back (Qwen3's template reads it)
    return message


def _template_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"messages[{index}].tool_calls: each call needs function.name", param="messages")
    body = {"name": function["name"], "arguments": function.get("arguments") or {}}
    return {"id": call.get("id") or f"call_{uuid.uuid4().hex[:8]}", "type": "function", "function": body}


def _loaded(req: OllamaGeneration, body: dict[str, Any]) -> web.Response:
    """Ollama's answer to a request with nothing to generate: the model is (already) loaded."""
    reason = "unload" if req.keep_alive in (0, "0", "0s", "0m") else "load"
    return web.json_response({"model": req.model, "created_at": created_at(), **body, "done": True,
                              "done_reason": reason})


# ---------------------------------------------------------------------- the model


def served_name(state: AppState, name: str, why: str = "") -> None:
    """404 unless `name` is a served name (name and name:latest are one)."""
    names = state.config.served_model_names
    if name not in names and name.removesuffix(LATEST) not in names:
        raise APIError(404, f"{why or f'model {name!r} not found'}; this server serves '{tagged(names[0])}' (more "
                            f"names: --served-model-name)", param="model", code="model_not_found")


def tagged(name: str) -> str:
    return name if ":" in name else name + LATEST


@dataclass(frozen=True)
class ModelFacts:
    """What Ollama's model endpoints say of the served model, gathered once per request."""

    parameters: int
    details: dict[str, Any]
    size: int  # bytes of the model's folder
    folder: str
    modified: str

    @classmethod
    def of(cls, state: AppState) -> "ModelFacts":
        engine = state.engine.engine
        family = engine.model_config.family
        count = sum(p.numel() for p in engine.runner.model.parameters())
        dtype = str(engine.runner.dtype).removeprefix("torch.")  # bfloat16 -> BF16, float32 -> F32
        details = {"parent_model": "", "format": "safetensors", "family": family, "families": [family],
                   "parameter_size": f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.1f}M",
                   "quantization_level": dtype.upper().replace("FLOAT", "F")}
        folder = state.engine.config.model
        size = sum(e.stat().st_size for e in os.scandir(folder) if e.is_file()) if os.path.isdir(folder) else 0
        modified = datetime.fromtimestamp(state.created, timezone.utc).isoformat().replace("+00:00", "Z")
        return cls(count, details, size, os.path.realpath(folder), modified)

    def card(self, name: str) -> dict[str, Any]:
        """A served name as /api/tags and /api/ps list it."""
        digest = hashlib.sha256(f"{self.folder}\0{name}".encode()).hexdigest()
        return {"name": tagged(name), "model": tagged(name), "modified_at": self.modified, "size": self.size,
                "digest": digest, "details": self.details}


def go_template(tokenizer: Tokenizer, chat: bool) -> str:
    """What /api/generate does with a prompt, as an Ollama (Go) template: Continue sends `suffix`
    only to a model whose template names .Suffix."""
    fim = tokenizer.fim
    rest = "{{ .Prompt }}" if not chat else (
        "{{/* the model's chat template: .System, then .Prompt as the user's message */}}{{ .Prompt }}")
    if fim is None:
        return rest
    text = {i: t for t, i in tokenizer.markers.items()}
    pre, suf = text.get(fim.prefix, ""), text.get(fim.suffix, "")
    if fim.middle is None:  # Mistral's: suffix first
        middle = f"{suf}{{{{ .Suffix }}}}{pre}{{{{ .Prompt }}}}"
    else:
        middle = f"{pre}{{{{ .Prompt }}}}{suf}{{{{ .Suffix }}}}{text.get(fim.middle, '')}"
    return f"{{{{- if .Suffix }}}}{middle}{{{{- else }}}}{rest}{{{{- end }}}}"


def capabilities(state: AppState) -> list[str]:
    template = state.chat_template
    caps = ["completion"]
    caps += ["insert"] if state.engine.tokenizer.fim is not None else []
    caps += ["tools"] if template is not None and template.tool_format is not None else []
    caps += ["thinking"] if template is not None and template.thinks else []
    return caps


# ---------------------------------------------------------------------- the other endpoints


async def root(request: web.Request) -> web.Response:
    return web.Response(text="fastcodellama is running (Ollama's API under /api, OpenAI's under /v1)")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION})


async def tags(request: web.Request) -> web.Response:
    state = state_of(request)
    facts = ModelFacts.of(state)
    return web.json_response({"models": [facts.card(name) for name in state.config.served_model_names]})


async def running(request: web.Request) -> web.Response:
    state = state_of(request)
    on_gpu = state.engine.config.torch_device().type == "cuda"
    facts = ModelFacts.of(state)
    models = [{**facts.card(name), "expires_at": FAR_FUTURE, "size_vram": facts.size if on_gpu else 0,
               "context_length": state.engine.max_model_len} for name in state.config.served_model_names]
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await read_request(request, OllamaModelRequest, check_model=False)
    if not req.target:
        raise bad_request("model is required", param="model")
    served_name(state, req.target)
    facts = ModelFacts.of(state)
    family, context = facts.details["family"], state.engine.max_model_len
    body = {"license": "", "modelfile": "", "parameters": f"{'num_ctx':<30} {context}",
            "template": go_template(state.engine.tokenizer, _own_template(state) is not None),
            "details": facts.details,
            "model_info": {"general.architecture": family, "general.parameter_count": facts.parameters,
                           f"{family}.context_length": context},
            "capabilities": capabilities(state), "modified_at": facts.modified}
    return web.json_response(body)


async def pull(request: web.Request) -> web.StreamResponse:
    """Nothing to download for a served name (llama-coder pulls a model /api/tags does not list)."""
    state = state_of(request)
    req = await read_request(request, OllamaModelRequest, check_model=False)
    served_name(state, req.target, why=f"pull {req.target!r}: this server downloads no models")
    if req.stream is False:
        return web.json_response({"status": "success"})
    return web.Response(body=line({"status": "success"}), headers={"Content-Type": "application/x-ndjson"})


async def embeddings(request: web.Request) -> web.Response:
    raise APIError(501, "embeddings: this server generates text; it computes no embeddings.", code="not_implemented")


async def manage(request: web.Request) -> web.Response:
    raise APIError(501, "this server serves the model of its folder; it does not create, copy, push or delete "
                        "models.", code="not_implemented")
