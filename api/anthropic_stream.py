"""Anthropic's answers: a whole message, or its server-sent events (message_start, then per
content block content_block_start / _delta / _stop, then message_delta with the stop reason and
message_stop). Tool calls are tool_use blocks whose input is an object; streamed, each block opens once
the call's name is written, its input going out as input_json_delta pieces as it is written
(api/call_stream.py). A
thinking model's reasoning is a thinking block before the text (api/reasoning.py); no signature is
made (an empty one), and earlier turns' thinking blocks are not the model's to read again."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.outputs import RequestOutput

from api.errors import APIError
from api.reasoning import Thinking
from api.streaming import SSE_HEADERS, AnswerDeltas, OpenedOnWrite, OpensOnWrite
from api.tool_calls import ToolCall, ToolCalling


def event(kind: str, body: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **body}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode("utf-8")


@dataclass(frozen=True)
class Reply:
    """What a message says besides the engine's output."""

    model: str
    calls: ToolCalling | None = None
    stop_sequences: tuple[str, ...] = ()
    thinking: Thinking | None = None  # a thinking model's answer: its reasoning is a thinking block
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex[:24]}")

    def whole(self, out: RequestOutput) -> dict[str, Any]:
        reasoning, read = AnswerDeltas(self.calls, self.thinking).new(out.outputs[0])
        text, made = read.content, read.made
        content = ([{"type": "thinking", "thinking": reasoning, "signature": ""}] if reasoning else [])
        content += ([{"type": "text", "text": text}] if text else []) + [tool_use(call) for call in made]
        return {**self.head(), "content": content, **self.ending(out, bool(made)),
                "usage": {**input_usage(out), "output_tokens": len(out.outputs[0].token_ids)}}

    def head(self) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model}

    def ending(self, out: RequestOutput, called: bool) -> dict[str, Any]:
        """stop_reason and stop_sequence, as Anthropic names why a message ended."""
        c = out.outputs[0]
        stop = c.stop_reason if isinstance(c.stop_reason, str) and c.stop_reason in self.stop_sequences else None
        reason = ("tool_use" if called else "max_tokens" if c.finish_reason == "length"
                  else "stop_sequence" if stop is not None else "end_turn")
        return {"stop_reason": reason, "stop_sequence": stop}


def input_usage(out: RequestOutput) -> dict[str, int]:
    """The prompt's tokens as Anthropic counts them: those computed (input_tokens), and those the
    prefix cache held (cache_read_input_tokens; nothing is written to a cache on request here)."""
    cached = out.cached_prompt_tokens
    return {"input_tokens": len(out.prompt_token_ids) - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached}


def tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.argument_object()}


@dataclass
class MessageStream(OpensOnWrite):
    """A message's events, written to one client as the engine's outputs arrive (api/streaming.py
    OpensOnWrite: the headers go with the first output)."""

    request: web.Request
    reply: Reply
    _deltas: AnswerDeltas | None = None
    _open: str | None = None  # the kind of the block open: "thinking", "text", "tool_use" or None
    _blocks: int = 0  # content blocks started

    def __post_init__(self) -> None:
        self._out = OpenedOnWrite(self.request, SSE_HEADERS)
        self._deltas = AnswerDeltas(self.reply.calls, self.reply.thinking)

    async def add(self, prompt_index: int, out: RequestOutput) -> None:
        first = self._deltas.last is None
        reasoning, read = self._deltas.take(out)
        data = b""
        if first:
            message = {**self.reply.head(), "content": [], "stop_reason": None, "stop_sequence": None,
                       "usage": {**input_usage(out), "output_tokens": 0}}
            data += event("message_start", {"message": message})
        if reasoning:
            data += self._in_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            data += event("content_block_delta", {"index": self._blocks - 1, "delta": {"type": "thinking_delta",
                                                                                     "thinking": reasoning}})
        for part in read.parts:
            if isinstance(part, str):
                data += self._in_block("text", {"type": "text", "text": ""})
                delta = {"type": "text_delta", "text": part}
            elif part.call is not None:
                data += self._closed() + self._in_block("tool_use", {**tool_use(part.call), "input": {}})
                continue
            else:
                delta = {"type": "input_json_delta", "partial_json": part.arguments}
            data += event("content_block_delta", {"index": self._blocks - 1, "delta": delta})
        await self._out.write(data)

    def _in_block(self, kind: str, start: dict[str, Any]) -> bytes:
        """The events that close the open block unless it is of this kind, and open one of it."""
        if self._open == kind:
            return b""
        data = self._closed()
        self._open, self._blocks = kind, self._blocks + 1
        return data + event("content_block_start", {"index": self._blocks - 1, "content_block": start})

    def _closed(self) -> bytes:
        """The events that close the open block (a thinking block's signature first), if one is open."""
        if self._open is None:
            return b""
        data = b""
        if self._open == "thinking":
            data = event("content_block_delta", {"index": self._blocks - 1, "delta": {"type": "signature_delta",
                                                                                    "signature": ""}})
        self._open = None
        return data + event("content_block_stop", {"index": self._blocks - 1})

    async def finish(self) -> None:
        last, made = self._deltas.last, self._deltas.made
        if last is None:
            return
        data = self._closed()
        ending = self.reply.ending(last, bool(made))
        data += event("message_delta", {"delta": ending,
                                        "usage": {"output_tokens": len(last.outputs[0].token_ids)}})
        await self._out.write(data + event("message_stop", {}))

    async def fail(self, error: APIError) -> None:
        await self._out.write(event("error", error.anthropic_body()))
