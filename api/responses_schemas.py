"""The body of OpenAI's Responses API (POST /v1/responses), as the Codex CLI (wire_api
"responses", the only one it speaks since 2026) and the `openai` client send it. Input items are
read by api/responses.py. Unknown fields are ignored (include, store, prompt_cache_key, service_tier, ...)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator

from api.chat_schemas import MAX_MESSAGES, MAX_TOOLS
from api.schemas import RequestBody

MAX_ITEMS = 4 * MAX_MESSAGES  # messages, and the calls and their outputs between them


class ResponsesTool(RequestBody):
    type: str = Field(description="function, or namespace (function tools under a shared name, as the Codex CLI "
                      "sends its sub-agent tools); OpenAI's hosted tools (web_search, file_search, ...) are left "
                      "out of what the model is offered; other types are refused.")
    name: Optional[str] = Field(None, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="A JSON schema of its arguments.")
    strict: Optional[bool] = None
    tools: Optional[list["ResponsesTool"]] = Field(None, max_length=MAX_TOOLS, description="namespace: its tools.")


class NamedFunctionChoice(RequestBody):
    type: Literal["function"]
    name: str
    namespace: Optional[str] = None


class TextFormat(RequestBody):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema", description="json_schema: the schema the answer "
                                              "follows (engine/json_schema.py: what it enforces; other keywords are a 400).")
    strict: Optional[bool] = None


class TextConfig(RequestBody):
    format: Optional[TextFormat] = None
    verbosity: Optional[str] = Field(None, description="Ignored.")


class ResponsesRequest(RequestBody):
    """POST /v1/responses."""

    model: str = Field(min_length=1)
    input: Union[str, list[dict[str, Any]]] = Field(description="A user message's text, or the conversation's items: "
                                                    "messages, function_call, function_call_output, reasoning.")
    instructions: Optional[str] = Field(None, description="The system message.")
    tools: Optional[list[ResponsesTool]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedFunctionChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    max_output_tokens: Optional[int] = Field(None, ge=1, description="A bound: the context and the server's "
                                             "max_request_tokens bound the answer too.")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="Default 1; 0: greedy.")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    stream: Optional[bool] = False
    text: Optional[TextConfig] = None
    reasoning: Optional[dict[str, Any]] = Field(None, description="Ignored (effort, summary): a thinking model's "
                                                "reasoning comes back as a reasoning item.")
    previous_response_id: Optional[str] = Field(None, description="Refused: no response is stored here; send the "
                                                "whole conversation in input.")
    seed: Optional[int] = Field(None, description="Extension (not OpenAI's): reproducible sampling.")

    @field_validator("input")
    @classmethod
    def _bounded(cls, value):
        if isinstance(value, list) and len(value) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} input items")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _few_tools(cls, value):
        """Counted before they are read: namespaces of namespaces' worth of tools would take seconds."""
        if isinstance(value, list):
            inner = sum(len(t["tools"]) for t in value if isinstance(t, dict) and isinstance(t.get("tools"), list))
            if len(value) + inner > MAX_TOOLS:
                raise ValueError(f"at most {MAX_TOOLS} tools, namespaces' included")
        return value

    def items(self) -> list[dict[str, Any]]:
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return self.input
