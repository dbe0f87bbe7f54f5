"""Server-sent events: `data: {json}\n\n` per chunk, `data: [DONE]\n\n` at the end.

Headers go out only once every prompt of the request has its first token, so that a request
the engine rejects (a prompt too long, say) still gets a plain 4xx JSON error. An error after
that goes out as `data: {"error": {...}}` followed by `data: [DONE]`.

What one chunk looks like is the endpoint's (a ChunkFormat): text completions here, chat
deltas in api/chat_output.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from engine.outputs import CompletionOutput, RequestOutput

from api.completions import CompletionPlan, LogprobsBuilder, finish_reason, new_logprobs, usage
from api.errors import APIError
from api.reasoning import ReasoningDeltas, Thinking
from api.schemas import CompletionChoice, CompletionResponse, Logprobs, Usage
from api.call_stream import CallStream, Read, read_whole
from api.tool_calls import ToolCall, ToolCalling

if TYPE_CHECKING:
    from engine.async_engine import AsyncEngine

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


@dataclass
class OpenedOnWrite:
    """A streamed response whose status and headers go out with its first write, so that a request
    that fails before its first output still gets a plain 4xx error."""

    request: web.Request
    headers: dict[str, str]
    response: web.StreamResponse | None = None

    async def write(self, data: bytes) -> None:
        if self.response is None:
            self.response = web.StreamResponse(status=200, headers=self.headers)
            await self.response.prepare(self.request)
        if data:
            await self.response.write(data)


class OpensOnWrite:
    """A stream whose response opens with its first write (api/generation.py Stream): its
    `_out`, set when it is made, and what the handler asks of it."""

    _out: OpenedOnWrite

    @property
    def response(self) -> web.StreamResponse | None:
        return self._out.response

    @property
    def started(self) -> bool:
        return self._out.response is not None


@dataclass
class AnswerDeltas:
    """One answer's new text at each output (what came since the last): a thinking model's
    reasoning apart (api/reasoning.py), and where the request has tools, its calls read as they are
    written (api/call_stream.py). Given a finished output first, the whole answer (read_calls)."""

    calls: ToolCalling | None = None
    thinking: Thinking | None = None
    last: RequestOutput | None = field(default=None, repr=False)  # the output taken last (take)
    made: list[ToolCall] = field(default_factory=list)  # the calls made (take): once the answer has finished
    _sent: int = 0
    _stream: CallStream | None = None
    _reasoning: ReasoningDeltas | None = None

    def __post_init__(self) -> None:
        if self.calls is not None:
            self._stream = CallStream(self.calls)
        if self.thinking is not None:
            self._reasoning = ReasoningDeltas(self.thinking)

    def new(self, c: CompletionOutput, streamed: bool = False) -> tuple[str, Read]:
        """(the new reasoning, the answer's new content and call deltas; its calls once it has
        finished). A finished output given first is read whole unless `streamed`: a stream's events
        are built from the call deltas, which reading it whole does not give."""
        whole = self._sent == 0 and c.finished and not streamed
        text = c.text[self._sent:]
        self._sent = max(self._sent, len(c.text))
        reasoning = ""
        if self._reasoning is not None:
            reasoning, text = self._reasoning.add(text, c.finished)
        if self._stream is None:
            return reasoning, Read([text] if text else [])
        if whole:
            return reasoning, read_whole(self.calls.forced + text, self.calls)
        return reasoning, self._stream.add(text, c.finished)

    def take(self, out: RequestOutput) -> tuple[str, Read]:
        """new() of a stream's output, kept as `last`, its calls added to `made`."""
        self.last = out
        reasoning, read = self.new(out.outputs[0], streamed=True)
        self.made += read.made
        return reasoning, read


class ChunkFormat(Protocol):
    def choice(self, plan: CompletionPlan, index: int, text: str, logprobs: Logprobs | None,
               finish: str | None, first: bool) -> bytes:
        """One choice's chunk: its new text and logprobs, its finish reason once finished."""

    def usage(self, plan: CompletionPlan, used: Usage) -> bytes:
        """The last chunk, with the usage of the whole request."""


@dataclass(frozen=True)
class TextChunks:
    """OpenAI text completion chunks."""

    def choice(self, plan: CompletionPlan, index: int, text: str, logprobs: Logprobs | None,
               finish: str | None, first: bool) -> bytes:
        chunk = CompletionResponse(id=plan.request_id, created=plan.created, model=plan.model,
                                   choices=[CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                             finish_reason=finish)])
        return sse(chunk.model_dump_json())

    def usage(self, plan: CompletionPlan, used: Usage) -> bytes:
        return sse(CompletionResponse(id=plan.request_id, created=plan.created, model=plan.model, choices=[],
                                      usage=used).model_dump_json())


@dataclass
class _ChoiceState:
    sent_chars: int = 0
    sent_tokens: int = 0
    finished: bool = False
    logprobs: LogprobsBuilder | None = None


@dataclass
class CompletionStream(OpensOnWrite):
    """Turns cumulative engine outputs into SSE chunks and writes them to one client."""

    request: web.Request
    plan: CompletionPlan
    engine: "AsyncEngine"  # its tokenizer names the tokens of logprobs
    format: ChunkFormat = field(default_factory=TextChunks)
    _pending: list[bytes] = field(default_factory=list)
    _started: set[int] = field(default_factory=set)
    _choices: dict[int, _ChoiceState] = field(default_factory=dict)
    _last: dict[int, RequestOutput] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._out = OpenedOnWrite(self.request, SSE_HEADERS)

    async def add(self, prompt_index: int, out: RequestOutput) -> None:
        self._last[prompt_index] = out
        self._started.add(prompt_index)
        for c in out.outputs:
            chunk = self._chunk(prompt_index, out, c)
            if chunk is not None:
                self._pending.append(chunk)
        if self.response is None and len(self._started) < len(self.plan.prompts):
            return
        await self._flush()

    async def finish(self) -> None:
        if self.plan.include_usage:
            self._pending.append(self.format.usage(self.plan, usage(self.plan, self._last)))
        self._pending.append(DONE)
        await self._flush()

    async def fail(self, error: APIError) -> None:
        """An error once the stream has started: an SSE error event, then [DONE]."""
        self._pending = [sse(error.body()), DONE]
        await self._flush()

    def _chunk(self, i: int, out: RequestOutput, c: CompletionOutput) -> bytes | None:
        index = i * self.plan.n + c.index
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState()
            if c.logprobs is not None:
                state.logprobs = LogprobsBuilder(self.engine, out.prompt_token_ids)
        if state.finished:
            return None
        text = c.text[state.sent_chars:] if len(c.text) > state.sent_chars else ""
        if state.sent_chars == 0 and state.sent_tokens == 0 and self.plan.echo:
            text = self.plan.echo_texts[i] + text
        logprobs = new_logprobs(state.logprobs, c, state.sent_tokens) if state.logprobs else None
        if not text and logprobs is None and not c.finished:
            return None
        first = state.sent_chars == 0 and state.sent_tokens == 0
        state.sent_chars = max(state.sent_chars, len(c.text))
        state.sent_tokens = len(c.token_ids)
        state.finished = c.finished
        return self.format.choice(self.plan, index, text, logprobs, finish_reason(c.finish_reason), first)

    async def _flush(self) -> None:
        data, self._pending = b"".join(self._pending), []
        await self._out.write(data)
