"""POST /v1/chat/completions: messages through the model's chat template (api/chat_template.py),
then generation as for /v1/completions, answered as chat completions (api/chat_output.py)."""
from __future__ import annotations

import time
import uuid

from aiohttp import web

from api.chat_output import ChatChunks, chat_response
from api.chat_schemas import ChatRequest
from api.chat_template import ChatTemplateError
from api.completions import CompletionPlan, build_plan
from api.errors import bad_request
from api.generation import CLIENT, answer, read_request, state_of
from api.schemas import SAMPLING_FIELDS, CompletionRequest
from api.state import AppState
from api.streaming import CompletionStream


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, ChatRequest)
        top = req.top_logprobs or 0
        plan = await build_chat_plan(req, state, request[CLIENT])
        del req
        return await answer(request, plan, arrival, lambda p, finals: chat_response(p, finals, state.engine, top),
                            lambda: CompletionStream(request, plan, state.engine, ChatChunks(top)))
    finally:
        state.memory.after_request(request.content_length)


async def build_chat_plan(req: ChatRequest, state: AppState, client: str) -> CompletionPlan:
    template = state.chat_template
    if template is None:
        raise bad_request(f"This model cannot chat: {state.chat_template_error}. Use /v1/completions.",
                          param="messages", code="chat_template_missing")
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    messages = [m.template_dict() for m in req.messages]
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    state.prompts.check_length(texts)
    tokenizer = state.engine.tokenizer
    try:
        ids = await state.prompts.run(sum(map(len, texts)), lambda: template.prompt_ids(tokenizer, messages))
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
    return plan
