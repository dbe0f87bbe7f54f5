"""The Responses API's answers: a whole response object, or its server-sent events
(response.created and response.in_progress; per output item output_item.added, its deltas and its
done events, output_item.done; then response.completed with the whole response, or
response.incomplete where max_output_tokens cut it). Each event has its sequence_number.

Output items, in order: a thinking model's reasoning (a reasoning item, its text as reasoning_text
content, api/reasoning.py), the text (a message item with one output_text part), and function calls
(function_call items, each opened once its name is written, its arguments streamed as they are
written: api/call_stream.py), in the order the answer has them."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.outputs import RequestOutput

from api.completions import CompletionPlan
from api.errors import APIError
from api.reasoning import Thinking
from api.responses_schemas import ResponsesRequest
from api.streaming import SSE_HEADERS, AnswerDeltas, OpenedOnWrite, OpensOnWrite
from api.tool_calls import ToolCall, ToolCalling


def event(kind: str, number: int, body: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": number, **body}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode("utf-8")


@dataclass(frozen=True)
class Outcome:
    """What a response says besides the engine's output: its id, the request's settings it echoes."""

    id: str
    model: str
    created_at: int
    settings: dict[str, Any]  # the request's fields a response object repeats
    calls: ToolCalling | None = None
    thinking: Thinking | None = None
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # a call's name -> (namespace, name)

    @classmethod
    def of(cls, req: ResponsesRequest, plan: CompletionPlan, calls: ToolCalling | None, arrival: float,
           namespaced: dict[str, tuple[str, str]] | None = None) -> "Outcome":
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else None
        settings = {
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": None,
            "temperature": 1.0 if req.temperature is None else req.temperature, "top_p": req.top_p,
            "tool_choice": req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else (
                req.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or ()], "reasoning": req.reasoning,
            "text": {"format": fmt or {"type": "text"}}, "store": False, "truncation": "disabled", "metadata": {}}
        return cls(plan.request_id, req.model, int(time.time()), settings, calls, plan.thinking, namespaced or {})

    def head(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
             out: RequestOutput | None = None) -> dict[str, Any]:
        """The response object with this status and output."""
        cut = out is not None and out.outputs[0].finish_reason == "length"
        return {"id": self.id, "object": "response", "created_at": self.created_at, "model": self.model,
                "status": "incomplete" if cut else status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "output": output, "usage": usage, **self.settings}

    def whole(self, out: RequestOutput) -> dict[str, Any]:
        """The whole response: its items in the order the answer wrote them, as a stream gives them
        (text after a call is a message of its own)."""
        reasoning, read = AnswerDeltas(self.calls, self.thinking).new(out.outputs[0])
        items = Items(self.namespaced)
        output = [items.reasoning(reasoning, "completed")] if reasoning else []
        if not read.made:
            text = read.content
            output += [items.message(text, "completed")] if text else []
        for piece in read.written if read.made else ():
            if isinstance(piece, ToolCall):
                output.append(items.call(piece))
                continue
            if any(item["type"] == "message" for item in output):
                items.message_id = f"msg_{uuid.uuid4().hex}"
            output.append(items.message(piece, "completed"))
        return self.head("completed", output, usage_of(out), out)


def usage_of(out: RequestOutput) -> dict[str, Any]:
    prompt, generated = len(out.prompt_token_ids), len(out.outputs[0].token_ids)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": out.cached_prompt_tokens},
            "output_tokens": generated, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + generated}


@dataclass
class Items:
    """One response's output items, each with an id of its own that its events repeat."""

    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # Outcome.namespaced
    reasoning_id: str = field(default_factory=lambda: f"rs_{uuid.uuid4().hex}")
    message_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")

    def reasoning(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [{"type": "reasoning_text", "text": text}]
        return {"type": "reasoning", "id": self.reasoning_id, "summary": [], "content": content, "status": status}

    def message(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [output_text(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def call(self, call: ToolCall, status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
        """A function_call item; a namespaced function's names its namespace and its own name."""
        namespace, name = self.namespaced.get(call.name, (None, call.name))
        return {"type": "function_call", "id": f"fc_{call.id.removeprefix('call_')}", "call_id": call.id,
                "name": name, **({"namespace": namespace} if namespace else {}),
                "arguments": call.arguments if arguments is None else arguments, "status": status}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


@dataclass
class ResponseStream(OpensOnWrite):
    """A response's events, written to one client as the engine's outputs arrive (api/streaming.py
    OpensOnWrite: the headers go with the first output)."""

    request: web.Request
    outcome: Outcome
    _items: Items = field(init=False)
    _deltas: AnswerDeltas | None = None
    _number: int = 0
    _open: str | None = None  # the kind of the item open: "reasoning", "message", "call" or None
    _call: ToolCall | None = None  # the function call open (its arguments so far: _texts["call"])
    _texts: dict[str, str] = field(default_factory=dict)  # each item's text so far, by kind
    _output: list[dict[str, Any]] = field(default_factory=list)  # the items done

    def __post_init__(self) -> None:
        self._items = Items(self.outcome.namespaced)
        self._out = OpenedOnWrite(self.request, SSE_HEADERS)
        self._deltas = AnswerDeltas(self.outcome.calls, self.outcome.thinking)

    def _event(self, kind: str, body: dict[str, Any]) -> bytes:
        self._number += 1
        return event(kind, self._number - 1, body)

    async def add(self, prompt_index: int, out: RequestOutput) -> None:
        first = self._deltas.last is None
        reasoning, read = self._deltas.take(out)
        data = b""
        if first:
            for kind in ("response.created", "response.in_progress"):
                data += self._event(kind, {"response": self.outcome.head("in_progress", [])})
        if reasoning:
            data += self._opened("reasoning") + self._delta("reasoning", reasoning)
        for part in read.parts:
            if isinstance(part, str):
                data += self._opened("message") + self._delta("message", part)
            elif part.call is not None:
                data += self._closed() + self._call_opened(part.call)
            else:
                self._texts["call"] += part.arguments
                data += self._event("response.function_call_arguments.delta",
                                    {**self._where("call"), "delta": part.arguments})
        await self._out.write(data)

    def _call_opened(self, call: ToolCall) -> bytes:
        self._open, self._call, self._texts["call"] = "call", call, ""
        return self._event("response.output_item.added", {"output_index": len(self._output),
                                                          "item": self._items.call(call, "in_progress", "")})

    def _opened(self, kind: str) -> bytes:
        """The events that close the open item unless it is of this kind, and open one of it."""
        if self._open == kind:
            return b""
        data = self._closed()
        if kind == "message" and kind in self._texts:  # a message after a call: an item of its own
            self._items.message_id = f"msg_{uuid.uuid4().hex}"
        self._open, self._texts[kind] = kind, ""
        index = len(self._output)
        item = self._items.reasoning(None, "in_progress") if kind == "reasoning" else self._items.message(
            None, "in_progress")
        data += self._event("response.output_item.added", {"output_index": index, "item": item})
        part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else output_text("")
        return data + self._event("response.content_part.added", {**self._where(kind), "part": part})

    def _where(self, kind: str) -> dict[str, Any]:
        if kind == "call":
            return {"item_id": self._items.call(self._call)["id"], "output_index": len(self._output)}
        item_id = self._items.reasoning_id if kind == "reasoning" else self._items.message_id
        return {"item_id": item_id, "output_index": len(self._output), "content_index": 0}

    def _delta(self, kind: str, delta: str) -> bytes:
        self._texts[kind] += delta
        if kind == "reasoning":
            return self._event("response.reasoning_text.delta", {**self._where(kind), "delta": delta})
        return self._event("response.output_text.delta", {**self._where(kind), "delta": delta, "logprobs": []})

    def _closed(self) -> bytes:
        """The events that finish the open item, if one is open."""
        kind = self._open
        if kind is None:
            return b""
        text, where = self._texts[kind], self._where(kind)
        if kind == "call":
            item = self._items.call(self._call, arguments=text)
            data = self._event("response.function_call_arguments.done", {**where, "arguments": text})
        elif kind == "reasoning":
            item = self._items.reasoning(text, "completed")
            data = self._event("response.reasoning_text.done", {**where, "text": text})
            data += self._event("response.content_part.done", {**where, "part": item["content"][0]})
        else:
            item = self._items.message(text, "completed")
            data = self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
            data += self._event("response.content_part.done", {**where, "part": item["content"][0]})
        data += self._event("response.output_item.done", {"output_index": where["output_index"], "item": item})
        self._output.append(item)
        self._open = None
        return data

    async def finish(self) -> None:
        last = self._deltas.last
        if last is None:
            return
        data = self._closed()
        response = self.outcome.head("completed", self._output, usage_of(last), last)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        await self._out.write(data + self._event(kind, {"response": response}))

    async def fail(self, error: APIError) -> None:
        failed = {**self.outcome.head("failed", self._output), "error": {"code": error.code or "server_error",
                                                                          "message": error.message}}
        await self._out.write(self._event("response.failed", {"response": failed}))
