"""OpenAI's Responses API, for the clients that speak only it: the Codex CLI (a model provider
with wire_api "responses" and base_url this server's /v1) and the `openai` client's
`responses`. POST /v1/responses is /v1/chat/completions in the Responses API's shapes
(api/responses_schemas.py: what is read; api/responses_stream.py: the answers).

Input items reach the chat template as OpenAI's chat messages do: `instructions` first as the
system message; a message item by its role (developer as system), its text parts joined; a
function_call item as a call of the assistant turn before it (or of a turn of its own), its
function_call_output as a tool message naming that call's function; a reasoning item's text as
the next assistant turn's reasoning_content (Qwen3's template writes it back within a
tool-calling turn). Images and files are a 400; nothing is stored, so previous_response_id is a
400 too. Function tools, and the function tools of a namespace (the Codex CLI sends its sub-agent
tools so), which the model calls as "namespace.name" and whose calls come back as function_call
items naming both; OpenAI's hosted tools (web_search, file_search, ...) are left out of what the
model is offered, as they run on OpenAI's servers (the Codex CLI sends web_search with every turn).
tool_choice (auto, none, required, a named function), parallel_tool_calls, text.format (text,
json_object, json_schema), max_output_tokens as a bound, temperature, top_p and `seed` (an
extension) act as in chat.
"""
from __future__ import annotations

import collections
import time
import uuid
from typing import Any

from aiohttp import web

from api.chat import build_chat_plan
from api.chat_schemas import ChatMessage, ChatRequest, JsonSchemaFormat, NamedToolChoice, ResponseFormat, Tool
from api.completions import CompletionPlan
from api.errors import bad_request
from api.generation import CLIENT, answer, read_request, state_of
from api.responses_schemas import ResponsesRequest, ResponsesTool, TextFormat
from api.responses_stream import Outcome, ResponseStream
from api.state import AppState
from api.tool_calls import ToolCalling


# OpenAI's hosted tools: they run on OpenAI's servers, so none is offered to the model here.
HOSTED = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
                    "file_search", "code_interpreter", "image_generation", "mcp", "tool_search"})


def add_responses_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", responses)


async def responses(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, ResponsesRequest)
        tools, namespaced = offered_tools(req.tools)
        plan, calls = await _plan(req, tools, state, request[CLIENT])
        outcome = Outcome.of(req, plan, calls, arrival, namespaced)
        del req
        return await answer(request, plan, arrival, lambda p, finals: outcome.whole(finals[0]),
                            lambda: ResponseStream(request, outcome))
    finally:
        state.memory.after_request(request.content_length)


async def _plan(req: ResponsesRequest, tools: list[Tool], state: AppState,
                client: str) -> tuple[CompletionPlan, ToolCalling | None]:
    if req.previous_response_id:
        raise bad_request("previous_response_id: no response is stored here; send the whole conversation in input.",
                          param="previous_response_id")
    asked = ChatRequest.model_construct(
        messages=[ChatMessage.model_validate(m) for m in chat_messages(req)],
        tools=tools or None,
        tool_choice=_tool_choice(req.tool_choice), parallel_tool_calls=req.parallel_tool_calls, logprobs=False,
        top_logprobs=None, n=1, response_format=_response_format(req.text.format if req.text else None),
        max_tokens=min(req.max_output_tokens or state.engine.max_model_len, state.engine.max_model_len,
                       state.config.max_request_tokens),
        max_completion_tokens=None, stream=bool(req.stream),
        temperature=1.0 if req.temperature is None else req.temperature, top_p=req.top_p, seed=req.seed,
        chat_template_kwargs=None, separate_reasoning=None)
    plan, calls = await build_chat_plan(asked, state, client)
    plan.request_id = f"resp_{uuid.uuid4().hex}"
    return plan, calls


def chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation as the chat template reads OpenAI's chat messages (the module's docstring)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    names: dict[str, str] = {}  # call_id -> the function's name
    thought: list[str] = []  # reasoning items' text, for the next assistant turn
    for i, item in enumerate(req.items()):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"input[{i}]: role must be user, assistant, system or developer", param="input")
            message = {"role": "system" if role == "developer" else role, "content": _text(item.get("content"), i)}
            if role == "assistant" and thought:
                message["reasoning_content"], thought = "\n".join(thought), []
            out.append(message)
        elif kind == "function_call":
            call = _call(item, i)
            names[call["id"]] = call["function"]["name"]
            if not out or out[-1]["role"] != "assistant":
                out.append({"role": "assistant", "content": "",
                            **({"reasoning_content": "\n".join(thought)} if thought else {})})
                thought = []
            out[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            use = str(item.get("call_id", ""))
            out.append({"role": "tool", "tool_call_id": use, "name": names.get(use, ""),
                        "content": _text(item.get("output"), i)})
        elif kind == "reasoning":
            parts = [item.get("content") or [], item.get("summary") or []]
            if not all(isinstance(p, list) for p in parts):
                raise bad_request(f"input[{i}]: a reasoning item's content and summary are lists of parts",
                                  param="input")
            thought += [str(p.get("text", "")) for p in parts[0] + parts[1] if isinstance(p, dict)]
        else:
            raise bad_request(f"input[{i}]: an item of type {kind!r} is not supported here (message, function_call, "
                              "function_call_output, reasoning).", param="input")
    return out


def _text(content: Any, index: int) -> str:
    """A message's or a function output's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"input[{index}]: content must be a string or a list of parts", param="input")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") or not isinstance(
                part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad_request(f"input[{index}]: a content part of type {kind!r} is not supported here (text parts "
                              "only).", param="input")
        texts.append(part["text"])
    return "\n".join(texts)


def _call(item: dict, index: int) -> dict[str, Any]:
    name, arguments, namespace = item.get("name"), item.get("arguments", "{}"), item.get("namespace")
    if not isinstance(name, str) or not isinstance(arguments, str) or not isinstance(namespace, (str, type(None))):
        raise bad_request(f"input[{index}]: a function_call needs a name and its arguments as JSON text", param="input")
    name = f"{namespace}.{name}" if namespace else name
    call_id = str(item.get("call_id") or item.get("id") or f"call_{uuid.uuid4().hex[:8]}")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def offered_tools(tools: list[ResponsesTool] | None) -> tuple[list[Tool], dict[str, tuple[str, str]]]:
    """The function tools the model is offered, and the (namespace, name) of each namespaced one by
    the name the model calls it by (the module's docstring)."""
    offered: list[Tool] = []
    namespaced: dict[str, tuple[str, str]] = {}
    for i, tool in enumerate(tools or ()):
        if tool.type in HOSTED:
            continue
        if tool.type != "namespace":
            offered.append(_function(tool, tool.name, f"tools[{i}]"))
            continue
        if not tool.name or not tool.tools:
            raise bad_request(f"tools[{i}]: a namespace needs a name and its tools", param="tools")
        for j, inner in enumerate(tool.tools):
            called = f"{tool.name}.{inner.name}"
            offered.append(_function(inner, called, f"tools[{i}].tools[{j}]"))
            namespaced[called] = (tool.name, inner.name)
    counts = collections.Counter(t.function.name for t in offered)
    if len(counts) < len(offered):
        twice = sorted(name for name, n in counts.items() if n > 1)
        raise bad_request(f"tools: more than one tool is called {', '.join(map(repr, twice))}", param="tools")
    return offered, namespaced


def _function(tool: ResponsesTool, name: str | None, where: str) -> Tool:
    if tool.type != "function" or not tool.name:
        raise bad_request(f"{where}: a tool of type {tool.type!r} does not run here; only function tools with a "
                          "name (the client runs them), namespaces of them, and OpenAI's hosted tools (left out).",
                          param="tools")
    return Tool.model_validate({"type": "function", "function": {
        "name": name, "description": tool.description, "parameters": tool.parameters}})


def _tool_choice(choice) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    name = f"{choice.namespace}.{choice.name}" if choice.namespace else choice.name
    return NamedToolChoice.model_validate({"type": "function", "function": {"name": name}})


def _response_format(fmt: TextFormat | None) -> ResponseFormat | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.schema_ is None:
        raise bad_request("text.format json_schema needs its schema", param="text.format")
    return ResponseFormat.model_construct(type="json_schema", json_schema=JsonSchemaFormat.model_construct(
        name=fmt.name, description=None, schema_=fmt.schema_, strict=fmt.strict))
