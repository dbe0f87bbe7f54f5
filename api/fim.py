"""POST /v1/fim/completions, Mistral's (Codestral's) fill-in-the-middle API, which Continue's and
Twinny's Mistral providers use: `prompt` (the text before the cursor) and `suffix` (after it),
answered as a chat completion (streamed: chat.completion.chunk deltas).

The prompt is built in the model's own infilling format (engine/tokenizer.py fim_prompt), as for
/v1/completions with a suffix; without a suffix it is a plain completion of `prompt`."""
from __future__ import annotations

import time
import uuid

from aiohttp import web

from api.chat_output import ChatChunks, chat_response
from api.completions import build_plan
from api.generation import CLIENT, answer, read_request, state_of
from api.schemas import SAMPLING_FIELDS, CompletionRequest, FimRequest
from api.streaming import CompletionStream


async def fim_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    arrival = time.monotonic()
    try:
        req = await read_request(request, FimRequest)
        fields = {name: getattr(req, name) for name in SAMPLING_FIELDS}
        fields["seed"] = req.seed if req.seed is not None else req.random_seed
        completion = CompletionRequest.model_construct(**fields, prompt=req.prompt, suffix=req.suffix,
                                                       max_tokens=req.max_tokens, logprobs=None, best_of=None,
                                                       echo=False, extra=None)
        del req
        plan = await build_plan(completion, state.engine, state.prompts, state.config.model_name, request[CLIENT],
                                state.config.max_request_tokens)
        plan.request_id = f"fim-{uuid.uuid4().hex}"
        return await answer(request, plan, arrival, lambda p, finals: chat_response(p, finals, state.engine),
                            lambda: CompletionStream(request, plan, state.engine, ChatChunks()))
    finally:
        state.memory.after_request(request.content_length)
