"""Ollama's answers: one JSON object for a whole answer, or (streaming, Ollama's default) one
object per line as the text grows (application/x-ndjson), then a last line with done true, why
generation ended, the token counts and the times in nanoseconds. Every line, the last one included,
ends with a newline: Continue's and ollama-js's readers drop a last line without one.

/api/generate writes its text in `response`, /api/chat in `message.content`; a chat answer's tool
calls (arguments as objects, Ollama's shape) go out each as soon as it is whole, as Ollama's do,
the text around them as it is written (api/call_stream.py); a thinking model's reasoning goes in `thinking` (message.thinking in
a chat), as Ollama's do. An error after the first line is one line {"error": ...}."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.outputs import RequestOutput

from api.chat_output import chat_logprobs
from api.completions import LogprobsBuilder, new_logprobs
from api.errors import APIError
from api.streaming import AnswerDeltas, OpenedOnWrite, OpensOnWrite
from api.reasoning import Thinking
from api.tool_calls import ToolCall, ToolCalling

if TYPE_CHECKING:
    from engine.async_engine import AsyncEngine

NDJSON_HEADERS = {"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def created_at() -> str:
    """Now, as Ollama writes it: RFC 3339 in UTC with a Z."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class Answer:
    """What an answer's lines say besides the engine's output."""

    model: str  # the name the client asked for
    arrival: float  # time.monotonic() when the request arrived
    chat: bool  # /api/chat (message) or /api/generate (response)
    calls: ToolCalling | None = None  # chat with tools: how calls are read from the text
    context: bool = False  # /api/generate without raw: the last line gives the ids to continue from
    thinking: Thinking | None = None  # a thinking model's answer: its reasoning goes in `thinking`
    logprobs: int | None = None  # asked: the likeliest tokens that come with each token's log probability
    engine: "AsyncEngine | None" = None  # whose tokenizer names the tokens of logprobs

    def part(self, text: str, calls: list[ToolCall] = (), thinking: str = "",
             logprobs: list[dict[str, Any]] | None = None, first_call: int = 0) -> dict[str, Any]:
        """A line of text that is not the last (or a whole answer's body, before `last`); `calls`
        from the answer's call `first_call` on."""
        body: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if logprobs is not None:
            body["logprobs"] = logprobs
        if not self.chat:
            return {**body, "response": text, **({"thinking": thinking} if thinking else {}), "done": False}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [ollama_call(call, i) for i, call in enumerate(calls, first_call)]
        return {**body, "message": message, "done": False}

    def last(self, out: RequestOutput, body: dict[str, Any]) -> dict[str, Any]:
        """`body` (a part) as the last line: done, why, the counts and times (and the context)."""
        c = out.outputs[0]
        now = time.monotonic()
        first = out.first_token_time or now
        extra: dict[str, Any] = {
            "done": True, "done_reason": c.finish_reason or "stop",
            "total_duration": _ns(now - self.arrival), "load_duration": 0,
            "prompt_eval_count": len(out.prompt_token_ids), "prompt_eval_duration": _ns(first - out.arrival_time),
            "eval_count": len(c.token_ids), "eval_duration": _ns((out.finish_time or now) - first)}
        if self.context:
            extra["context"] = [*out.prompt_token_ids, *c.token_ids]
        return {**body, **extra}

    def whole(self, out: RequestOutput) -> dict[str, Any]:
        """The answer as one object (stream false)."""
        thinking, read = AnswerDeltas(self.calls, self.thinking).new(out.outputs[0])
        text, calls = read.content, read.made
        return self.last(out, self.part(text, calls, thinking, self.token_logprobs(self.builder(out), out, 0)))

    def builder(self, out: RequestOutput) -> LogprobsBuilder | None:
        return LogprobsBuilder(self.engine, out.prompt_token_ids) if self.logprobs is not None else None

    def token_logprobs(self, builder: LogprobsBuilder | None, out: RequestOutput, sent: int) -> list[dict] | None:
        """The entries of the tokens past the first `sent`, as Ollama writes them (None: not asked)."""
        if builder is None:
            return None
        lp = new_logprobs(builder, out.outputs[0], sent)
        return [] if lp is None else [entry.model_dump() for entry in chat_logprobs(lp, self.logprobs).content]


def ollama_call(call: ToolCall, index: int) -> dict[str, Any]:
    """A tool call as Ollama writes it: its arguments an object, not JSON text."""
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": call.argument_object()}}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass
class LineStream(OpensOnWrite):
    """An answer's lines, written to one client as the engine's outputs arrive (api/streaming.py
    OpensOnWrite: the headers go with the first output)."""

    request: web.Request
    answer: Answer
    _deltas: AnswerDeltas | None = None
    _logprobs: LogprobsBuilder | None = None
    _sent: int = 0  # tokens whose log probabilities went out
    _ended: list[ToolCall] = field(default_factory=list)  # the calls completed so far
    _calls_sent: int = 0

    def __post_init__(self) -> None:
        self._out = OpenedOnWrite(self.request, NDJSON_HEADERS)
        self._deltas = AnswerDeltas(self.answer.calls, self.answer.thinking)

    async def add(self, prompt_index: int, out: RequestOutput) -> None:
        if self._deltas.last is None:
            self._logprobs = self.answer.builder(out)
        thinking, read = self._deltas.take(out)
        self._ended += read.ended
        every = read.made or self._ended  # each call as soon as it is whole, as Ollama sends them
        calls, first = every[self._calls_sent:], self._calls_sent
        self._calls_sent = len(every)
        logprobs = self.answer.token_logprobs(self._logprobs, out, self._sent)
        self._sent = len(out.outputs[0].token_ids)
        if read.content or calls or thinking or logprobs:
            await self._out.write(line(self.answer.part(read.content, calls, thinking, logprobs, first)))

    async def finish(self) -> None:
        if self._deltas.last is not None:
            await self._out.write(line(self.answer.last(self._deltas.last, self.answer.part(""))))

    async def fail(self, error: APIError) -> None:
        await self._out.write(line({"error": error.message}))
