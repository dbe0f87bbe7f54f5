"""POST /tokenize and /detokenize: the served model's tokenizer, for clients that count tokens.

Both spellings clients use are read: vLLM's (`prompt`, or chat `messages` through the model's
chat template; `add_special_tokens`) and llama.cpp's (`content`, `add_special`, `with_pieces`).
The answers carry both spellings' fields: `tokens`, `count` and `max_model_len` (vLLM; llama.cpp
reads `tokens`), and for /detokenize `prompt` and `content`.
"""
from __future__ import annotations

from aiohttp import web

from api.chat_template import ChatTemplateError
from api.errors import bad_request
from api.generation import read_request, state_of
from api.tokenize_schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse


async def tokenize(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await read_request(request, TokenizeRequest)
    tokenizer = state.engine.tokenizer
    if req.messages is not None:
        ids = await _chat_ids(state, req)
    else:
        text = req.prompt if req.prompt is not None else req.content
        ids = await state.prompts.run(len(text), lambda: tokenizer.encode(text, add_bos=req.bos))
    tokens: list = ids
    if req.with_pieces:
        pieces = await state.prompts.run(len(ids), lambda: [tokenizer.decode([i]) for i in ids])
        tokens = [{"id": i, "piece": p} for i, p in zip(ids, pieces)]
    body = TokenizeResponse(tokens=tokens, count=len(ids), max_model_len=state.engine.max_model_len)
    return web.Response(text=body.model_dump_json(), content_type="application/json")


async def _chat_ids(state, req: TokenizeRequest) -> list[int]:
    template = state.chat_template
    if template is None:
        raise bad_request(f"This model cannot chat: {state.chat_template_error}.", param="messages",
                          code="chat_template_missing")
    messages = [m.template_dict() for m in req.messages]
    chars = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
    try:
        text = template.render(messages, add_generation_prompt=req.add_generation_prompt,
                               options=req.chat_template_kwargs)
    except ChatTemplateError as e:
        raise bad_request(f"The model's chat template refused the messages: {e}", param="messages",
                          code="invalid_messages") from None
    return await state.prompts.run(chars, lambda: template.encode(state.engine.tokenizer, text))


async def detokenize(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await read_request(request, DetokenizeRequest)
    vocab = state.engine.tokenizer.vocab_size
    bad = [t for t in req.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token ids out of range [0, {vocab}): {bad[:5]}", param="tokens")
    text = await state.prompts.run(len(req.tokens), lambda: state.engine.tokenizer.decode(req.tokens))
    body = DetokenizeResponse(prompt=text, content=text)
    return web.Response(text=body.model_dump_json(), content_type="application/json")
