"""Anthropic's Messages API, for the clients that speak only it: Claude Code (ANTHROPIC_BASE_URL)
and the `anthropic` client. POST /v1/messages is /v1/chat/completions in Anthropic's shapes
(api/anthropic_schemas.py: what is read; api/anthropic_stream.py: the answers); POST
/v1/messages/count_tokens gives the prompt's length.

Messages reach the chat template as OpenAI's do: `system` first; a system message within the
conversation (Claude Code's, beta mid-conversation-system) as a system message where it stands (a
template that takes a system message only first gets it in the next user turn: fold_late_system in
api/chat_template.py); a user turn's tool_result blocks
as tool messages (named by the tool_use they answer), its text blocks as one user message; an
assistant turn's tool_use blocks as its tool_calls (input objects as arguments), its thinking
blocks as its reasoning_content (Qwen3's template writes it back within a tool-calling turn). tool_choice auto,
any (required), tool (a named function) and none map to OpenAI's. Sampling: temperature (default
1), top_p, top_k, stop_sequences, and `seed` (an extension); output_config.format (a JSON schema) as response_format
json_schema. `thinking` enabled turns a thinking model's thinking on where its template can (Qwen3's
enable_thinking; off otherwise, Anthropic's default), and its reasoning comes back as a thinking block
(api/reasoning.py) with an empty signature; budget_tokens and output_config.effort are ignored."""
from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from api.anthropic_schemas import AnthropicCount, AnthropicRequest, AnthropicTool, AnthropicToolChoice
from api.anthropic_stream import MessageStream, Reply
from api.chat import build_chat_plan
from api.chat_schemas import ChatMessage, ChatRequest, JsonSchemaFormat, NamedToolChoice, ResponseFormat, Tool
from api.completions import CompletionPlan
from api.errors import bad_request
from api.generation import CLIENT, answer, read_request, state_of
from api.state import AppState
from api.tool_calls import ToolCalling


def add_anthropic_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)


async def messages(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, AnthropicRequest)
        plan, calls = await _plan(req, state, request[CLIENT])
        reply = Reply(req.model, calls, tuple(req.stop_sequences or ()), plan.thinking)
        del req
        return await answer(request, plan, arrival, lambda p, finals: reply.whole(finals[0]),
                            lambda: MessageStream(request, reply))
    finally:
        state.memory.after_request(request.content_length)


async def count_tokens(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        req = await read_request(request, AnthropicCount)
        plan, _ = await _plan(AnthropicRequest.model_construct(**dict(req), max_tokens=1, stream=False,
                                                               temperature=None, top_p=None, top_k=None,
                                                               stop_sequences=None, thinking=None, seed=None,
                                                               output_config=None), state, request[CLIENT])
        return web.json_response({"input_tokens": len(plan.prompts[0])})
    finally:
        state.memory.after_request(request.content_length)


async def _plan(req: AnthropicRequest, state: AppState, client: str) -> tuple[CompletionPlan, ToolCalling | None]:
    choice, parallel = _tool_choice(req.tool_choice)
    shaped = req.output_config.format if req.output_config is not None else None
    asked = ChatRequest.model_construct(
        messages=[ChatMessage.model_validate(m) for m in chat_messages(req)],
        tools=[_tool(t, i) for i, t in enumerate(req.tools)] if req.tools else None, tool_choice=choice,
        parallel_tool_calls=parallel, logprobs=False, top_logprobs=None, n=1,
        response_format=None if shaped is None else ResponseFormat.model_construct(
            type="json_schema", json_schema=JsonSchemaFormat.model_construct(schema_=shaped.schema_)),
        # max_tokens is required and large (Claude Code asks for 32,000): a bound, as the context and the
        # server's max_request_tokens are.
        max_tokens=min(req.max_tokens, state.engine.max_model_len, state.config.max_request_tokens),
        max_completion_tokens=None, stream=bool(req.stream),
        temperature=1.0 if req.temperature is None else req.temperature, top_p=req.top_p, top_k=req.top_k,
        stop=list(req.stop_sequences or ()), seed=req.seed, separate_reasoning=None,
        chat_template_kwargs={"enable_thinking": _thinks(req.thinking)})
    return await build_chat_plan(asked, state, client)


def _thinks(thinking: dict[str, Any] | None) -> bool:
    """Whether the request turns thinking on (Anthropic's default is off): the template option
    Qwen3's template reads; a model that always thinks still does, and its reasoning comes back
    as a thinking block either way."""
    kind = (thinking or {}).get("type")
    if kind not in (None, "enabled", "adaptive", "disabled"):
        raise bad_request(f"thinking.type: {kind!r} is not one of enabled, adaptive, disabled", param="thinking")
    return kind in ("enabled", "adaptive")


def chat_messages(req: AnthropicCount) -> list[dict[str, Any]]:
    """The conversation as the chat template reads OpenAI's (the module's docstring)."""
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": _texts(req.system, "system")})
    names: dict[str, str] = {}  # tool_use id -> the tool's name
    for i, m in enumerate(req.messages):
        if m.role == "system":
            out.append({"role": "system", "content": _texts(m.content, f"messages[{i}]")})
            continue
        blocks = [{"type": "text", "text": m.content}] if isinstance(m.content, str) else m.content
        texts, calls, results, thoughts = [], [], [], []
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise bad_request(f"messages[{i}]: a text block needs its text (a string)", param="messages")
                texts.append(block["text"])
            elif kind == "tool_use" and m.role == "assistant":
                calls.append(_call(block, i))
                names[calls[-1]["id"]] = calls[-1]["function"]["name"]
            elif kind == "tool_result" and m.role == "user":
                use = str(block.get("tool_use_id", ""))
                results.append({"role": "tool", "tool_call_id": use, "name": names.get(use, ""),
                                "content": _texts(block.get("content") or "", f"messages[{i}].tool_result")})
            elif kind == "thinking" and m.role == "assistant":
                thoughts.append(str(block.get("thinking") or ""))
            elif kind != "redacted_thinking":
                raise bad_request(f"messages[{i}]: a {m.role} content block of type {kind!r} is not supported here "
                                  "(text, tool_use in assistant turns, tool_result in user turns).", param="messages")
        if m.role == "user":
            out += results + ([{"role": "user", "content": "\n".join(texts)}] if texts else [])
        else:
            out.append({"role": "assistant", "content": "".join(texts), **({"tool_calls": calls} if calls else {}),
                        **({"reasoning_content": "\n".join(thoughts)} if thoughts else {})})
    return out


def _texts(content: str | list, where: str) -> str:
    """A system prompt's or tool result's text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or any(not isinstance(b, dict) or b.get("type") != "text" for b in content):
        raise bad_request(f"{where}: only text blocks are supported here.", param="messages")
    return "\n".join(str(b.get("text", "")) for b in content)


def _call(block: dict, index: int) -> dict[str, Any]:
    if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
        raise bad_request(f"messages[{index}]: a tool_use block needs a name and an input object", param="messages")
    return {"id": str(block.get("id", "")), "type": "function",
            "function": {"name": block["name"], "arguments": block.get("input") or {}}}


def _tool(tool: AnthropicTool, index: int) -> Tool:
    if tool.type not in (None, "custom"):
        raise bad_request(f"tools[{index}]: Anthropic's server tool {tool.type!r} does not run here; only tools "
                          "with an input_schema (the client runs them).", param="tools")
    return Tool.model_validate({"type": "function", "function": {
        "name": tool.name, "description": tool.description, "parameters": tool.input_schema}})


def _tool_choice(choice: AnthropicToolChoice | None) -> tuple[Any, bool | None]:
    """(OpenAI's tool_choice, parallel_tool_calls) for Anthropic's tool_choice."""
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name:
            raise bad_request("tool_choice of type tool needs the tool's name", param="tool_choice")
        return NamedToolChoice.model_validate({"type": "function", "function": {"name": choice.name}}), parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel
