"""Engine outputs as chat completions: the whole response, or chat.completion.chunk deltas.

Log probabilities: one entry per generated token; its text is the piece the detokenizer released
for it (empty while a character spans several tokens), `bytes` that piece's UTF-8; `top_logprobs`
the likeliest tokens at that position (as many as asked), each with the text it would have added.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.async_engine import AsyncEngine
from engine.outputs import RequestOutput

from api.chat_schemas import (AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatResponse,
                              ChoiceLogprobs, TokenLogprob, TopLogprob)
from api.completions import CompletionPlan, LogprobsBuilder, finish_reason, usage
from api.reasoning import ReasoningDeltas
from api.schemas import Logprobs, Usage
from api.streaming import sse
from api.call_stream import CallDelta, CallStream, read_calls
from api.tool_calls import ToolCalling


def chat_logprobs(lp: Logprobs | None, top: int) -> ChoiceLogprobs | None:
    if lp is None:
        return None
    entries = []
    tops = lp.top_logprobs or [{}] * len(lp.tokens)
    for token, value, alternatives in zip(lp.tokens, lp.token_logprobs, tops):
        value = float(value if value is not None else 0.0)
        listed = [TopLogprob(token=text, logprob=v, bytes=list(text.encode("utf-8")))
                  for text, v in list(alternatives.items())[:top]]
        entries.append(TokenLogprob(token=token, logprob=value, bytes=list(token.encode("utf-8")), top_logprobs=listed))
    return ChoiceLogprobs(content=entries)


def chat_response(plan: CompletionPlan, outputs: dict[int, RequestOutput], engine: AsyncEngine,
                  top_logprobs: int = 0, calls: ToolCalling | None = None) -> ChatResponse:
    choices = []
    for i in sorted(outputs):
        out = outputs[i]
        for c in sorted(out.outputs, key=lambda c: c.index):
            lp = None
            if c.logprobs is not None:
                lp = LogprobsBuilder(engine, out.prompt_token_ids).add(c.token_ids, c.logprobs, c.finished,
                                                                       c.top_logprobs)
            reasoning, text = plan.thinking.split(c.text) if plan.thinking is not None else (None, c.text)
            thought = {"reasoning_content": reasoning, "reasoning": reasoning}
            message, finish = AssistantMessage(content=text, **thought), finish_reason(c.finish_reason)
            if calls is not None:
                answer = calls.forced + text  # a forced opening is the answer's, call or not
                message = AssistantMessage(content=answer, **thought)
                content, made = read_calls(answer, calls)
                if made:
                    message = AssistantMessage(content=content, **thought, tool_calls=[call.api() for call in made])
                    finish = "tool_calls"
            choices.append(ChatChoice(index=i * plan.n + c.index, message=message,
                                      logprobs=chat_logprobs(lp, top_logprobs), finish_reason=finish))
    return ChatResponse(id=plan.request_id, created=plan.created, model=plan.model, choices=choices,
                        usage=usage(plan, outputs))


@dataclass
class ChatChunks:
    """chat.completion.chunk events: a choice's first chunk carries the role, each its new text.
    A thinking model's reasoning goes in reasoning_content and reasoning (the fields clients read:
    DeepSeek's and the AI SDK's, vLLM's later one), the rest in content (api/reasoning.py).
    With tools, calls go out as they are written (api/call_stream.py): a call's first delta has
    its id and name, the next ones more of its arguments."""

    top_logprobs: int = 0
    calls: ToolCalling | None = None
    _calls: dict[int, CallStream] = field(default_factory=dict)  # with tool calls: each choice's
    _reasoning: dict[int, ReasoningDeltas] = field(default_factory=dict)  # a thinking model's: each choice's

    def choice(self, plan: CompletionPlan, index: int, text: str, logprobs: Logprobs | None,
               finish: str | None, first: bool) -> bytes:
        delta: dict = {}
        if plan.thinking is not None:
            reasoning, text = self._reasoning.setdefault(index, ReasoningDeltas(plan.thinking)).add(
                text, finish is not None)
            delta = {"reasoning_content": reasoning, "reasoning": reasoning} if reasoning else {}
        if self.calls is not None:
            text, called, finish = self._with_calls(index, text, finish)
            delta.update(called)
        # content always, "" included: Mistral's clients (Tabby's) read every chunk's delta.content
        delta = {"role": "assistant", "content": text, **delta} if first else {"content": text, **delta}
        chunk = ChatChunk(id=plan.request_id, created=plan.created, model=plan.model,
                          choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish,
                                                   logprobs=chat_logprobs(logprobs, self.top_logprobs))])
        return sse(chunk.model_dump_json())

    def _with_calls(self, index: int, text: str, finish: str | None) -> tuple[str, dict, str | None]:
        """(the content to send now, the delta's tool calls, the finish reason) for a choice's new text."""
        read = self._calls.setdefault(index, CallStream(self.calls)).add(text, finish is not None)
        deltas = chat_call_deltas(read.deltas)
        return read.content, {"tool_calls": deltas} if deltas else {}, "tool_calls" if read.made else finish

    def usage(self, plan: CompletionPlan, used: Usage) -> bytes:
        return sse(ChatChunk(id=plan.request_id, created=plan.created, model=plan.model, choices=[],
                             usage=used).model_dump_json())


def chat_call_deltas(deltas: list[CallDelta]) -> list[dict]:
    """Call deltas as a chat chunk's tool_calls: a call's opening (its id and name), and the
    pieces of its arguments that follow it in this chunk, as one entry."""
    out: list[dict] = []
    for d in deltas:
        if d.call is not None:
            out.append({"index": d.index, "id": d.call.id, "type": "function",
                        "function": {"name": d.call.name, "arguments": ""}})
        elif out and out[-1]["index"] == d.index:
            out[-1]["function"]["arguments"] += d.arguments
            continue
        else:
            out.append({"index": d.index, "function": {"arguments": ""}})
        out[-1]["function"]["arguments"] += d.arguments
    return out
