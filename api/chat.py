"""POST /v1/chat/completions: messages through the model's chat template (api/chat_template.py),
then generation as for /v1/completions, answered as chat completions (api/chat_output.py)."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid

from aiohttp import web

from engine import SamplingParams
from engine.json_schema import JsonSchema, compile_schema

from api.chat_output import ChatChunks, chat_response
from api.chat_schemas import ChatRequest, NamedToolChoice, ResponseFormat
from api.chat_template import ChatTemplate, ChatTemplateError
from api.completions import CompletionPlan, build_plan
from api import guided
from api.errors import bad_request
from api.generation import CLIENT, answer, read_request, state_of
from api.reasoning import Thinking
from api.schemas import SAMPLING_FIELDS, CompletionRequest
from api.state import AppState
from api.streaming import CompletionStream
from api.tool_calls import ToolCalling, arguments_as_objects, call_schema, forced_opening, markers, xml_call

log = logging.getLogger(__name__)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, ChatRequest)
        top = req.top_logprobs or 0
        plan, calls = await build_chat_plan(req, state, request[CLIENT])
        del req
        return await answer(request, plan, arrival,
                            lambda p, finals: chat_response(p, finals, state.engine, top, calls),
                            lambda: CompletionStream(request, plan, state.engine, ChatChunks(top, calls)))
    finally:
        state.memory.after_request(request.content_length)


async def build_chat_plan(req: ChatRequest, state: AppState,
                          client: str) -> tuple[CompletionPlan, ToolCalling | None]:
    """The plan, and how to read tool calls out of its outputs (None: the request has no tools)."""
    template = state.chat_template
    if template is None:
        raise bad_request(f"This model cannot chat: {state.chat_template_error}. Use /v1/completions.",
                          param="messages", code="chat_template_missing")
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    shape = req.response_format.type if req.response_format is not None else "text"
    schema = await response_schema(req.response_format, state) if shape == "json_schema" else None
    calls = tool_calling(req, template)
    if shape != "text" and calls is not None:
        raise bad_request(f"response_format {shape} and tools cannot both shape the answer.",
                          param="response_format")
    if guided.asked(req) and (shape != "text" or calls is not None):
        raise bad_request("structured_outputs (guided_*) and response_format or tools cannot both shape the answer.",
                          param="structured_outputs")
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if calls is not None else None
    messages = arguments_as_objects([m.template_dict() for m in req.messages])
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    texts += [json.dumps(tools)] if tools else []
    state.prompts.check_length(texts)
    tokenizer = state.engine.tokenizer
    try:
        opening = calls.forced if calls is not None else ""
        text, ids = await state.prompts.run(sum(map(len, texts)), lambda: template.prompt(
            tokenizer, messages, tools, opening, req.chat_template_kwargs))
    except ChatTemplateError as e:
        raise bad_request(f"The model's chat template refused the messages: {e}", param="messages",
                          code="invalid_messages") from None
    if not ids:
        raise bad_request("The chat template rendered an empty prompt.", param="messages", code="empty_prompt")
    n = req.n or 1
    room = max(1, min(state.engine.max_model_len - len(ids), state.config.max_request_tokens // n))
    completion = CompletionRequest.model_construct(
        **{name: getattr(req, name) for name in SAMPLING_FIELDS}, prompt=ids,
        max_tokens=req.max_completion_tokens or req.max_tokens or room, logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        suffix=None, best_of=None, echo=False, extra=None)
    plan = await build_plan(completion, state.engine, state.prompts, state.config.model_name, client,
                            state.config.max_request_tokens)
    plan.request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if shape == "text" and template.thinks and req.separate_reasoning is not False:
        plan.thinking = Thinking.of(text, template.think_tags)
    # Markers that are special tokens (a call format's, think tags where a tokenizer marks them so): the text must show them.
    kept = (calls.kept if calls is not None else ()) + shown_tags(template)
    if kept:
        plan.params = dataclasses.replace(plan.params, special_texts=kept)
    if shape != "text":
        plan.params = constrained(plan.params, schema, "response_format")
        first = think_first(template, tokenizer, text) if req.separate_reasoning is not False else None
        if first is not None:
            plan.params = dataclasses.replace(plan.params, think_first=first)
            plan.thinking = Thinking.of(text, template.think_tags)
    elif calls is not None and calls.forced:
        plan.params = await _held_to_call(plan.params, calls, req, state)
    return plan, calls


def shown_tags(template: ChatTemplate) -> tuple[tuple[int, str], ...]:
    """Think tags that are special tokens where a tokenizer marks them so: (id, text) for the
    engine's special_texts, since decoding would leave them out of the text the reasoning is cut from."""
    return tuple((template.special_ids[tag], tag) for tag in template.think_tags or () if tag in template.special_ids)


def think_first(template: ChatTemplate, tokenizer, prompt: str) -> tuple[bool, int | None, int] | None:
    """A thinking model's structured answer: its reasoning first, then the constraint (as vLLM's
    reasoning with structured outputs). Where the prompt leaves a think block open, or the block's
    tags are single tokens the model may open it with; None otherwise (the constraint from the
    first token, as for any model)."""
    tags = template.think_tags
    if tags is None:
        return None
    open_id, close_id = (_tag_id(template, tokenizer, tag) for tag in tags)
    inside = Thinking.of(prompt, tags).inside
    if close_id is None or (not inside and open_id is None):
        return None
    return inside, open_id, close_id


def _tag_id(template: ChatTemplate, tokenizer, tag: str) -> int | None:
    """A think tag's token: the tokenizer's own piece, else a special token the template names."""
    i = tokenizer.token_id(tag)
    return template.special_ids.get(tag) if i is None else i


async def _held_to_call(params: SamplingParams, calls: ToolCalling, req: ChatRequest,
                        state: AppState) -> SamplingParams:
    """A forced call held to its function's parameters where they can be enforced (tool_calls.call_schema,
    or xml_call for Qwen3-Coder's); else as it was: an opening the model goes on from freely."""
    name = req.tool_choice.function.name if isinstance(req.tool_choice, NamedToolChoice) else None
    parameters = {t.function.name: t.function.parameters for t in req.tools}
    shaped = call_schema(calls.format, parameters, name)
    if shaped is None and calls.format != "qwen3_coder":
        return params
    try:
        if shaped is None:
            machine = await state.prompts.run(len(json.dumps(parameters)), lambda: xml_call(parameters, name))
        else:
            machine = (await _compiled(shaped[0], state)).after(shaped[1])
    except (ValueError, RecursionError) as e:
        log.info("tool call not constrained: %s", e)
        return params
    try:
        return dataclasses.replace(params, json_object=True, json_schema=machine)
    except ValueError as e:  # ignore_eos: the held call ends where it closes
        raise bad_request(f"tool_choice {'required' if name is None else 'of a named function'}: {e}",
                          param="tool_choice") from None


async def response_schema(response_format: ResponseFormat, state: AppState,
                          param: str = "response_format") -> JsonSchema:
    """The compiled schema of a json_schema response format; a 400 for one it cannot enforce."""
    given = response_format.json_schema
    if given is None or given.schema_ is None:
        raise bad_request(f"{param} json_schema needs json_schema.schema", param=param)
    try:
        return await _compiled(given.schema_, state)
    except (ValueError, RecursionError) as e:
        raise bad_request(f"{param}: {e}", param=param, code="schema_unsupported") from None


async def _compiled(schema: dict, state: AppState) -> JsonSchema:
    """compile_schema in the server's worker threads: a large schema takes a while, never the event loop's."""
    return await state.prompts.run(len(json.dumps(schema)), lambda: compile_schema(schema))


def constrained(params: SamplingParams, schema: JsonSchema | None, param: str) -> SamplingParams:
    """The params with the answer held to one JSON object, or (`schema`) to JSON the schema accepts."""
    try:
        return dataclasses.replace(params, json_object=True, json_schema=schema)
    except ValueError as e:  # with ignore_eos
        raise bad_request(str(e), param=param) from None


def tool_calling(req: ChatRequest, template: ChatTemplate) -> ToolCalling | None:
    """The request's tool calling, or None (no tools, or tool_choice none); a 400 for tools of a
    model whose template writes no call format this server reads, or a named function that is not
    among the tools. A call forced (required, or a named function) opens the answer."""
    choice = req.tool_choice
    if choice == "none" or (not req.tools and choice in (None, "auto")):
        return None
    if not req.tools:
        raise bad_request("tool_choice names a call but no tools were given.", param="tool_choice")
    names = [t.function.name for t in req.tools]
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise bad_request(f"tool_choice names {choice.function.name!r}, which is not among the tools "
                          f"({', '.join(map(repr, names))}).", param="tool_choice")
    fmt = template.tool_format
    if fmt is None:
        raise bad_request("This model's chat template writes no tool-call format this server reads (Hermes "
                          "<tool_call> blocks as Qwen2.5 and Qwen3 do, Qwen3-Coder's <function=...>, Llama 3.1's "
                          "JSON, or Mistral's [TOOL_CALLS]).", param="tools", code="tools_unsupported")
    missing = [m for m in markers(fmt) if m not in template.special_ids]
    if missing:
        raise bad_request(f"This model's chat template writes {', '.join(missing)}, which its tokenizer has no special "
                          "token for.", param="tools", code="tools_unsupported")
    schemas = {t.function.name: (t.function.parameters or {}).get("properties") or {} for t in req.tools}
    forced = "" if choice in (None, "auto") else forced_opening(
        fmt, choice.function.name if isinstance(choice, NamedToolChoice) else None)
    kept = tuple((template.special_ids[m], m) for m in markers(fmt))
    return ToolCalling(fmt, parallel=req.parallel_tool_calls is not False, schemas=schemas, forced=forced, kept=kept)
