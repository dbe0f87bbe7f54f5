"""Bodies of Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), as Claude
Code and the `anthropic` client send them. Content blocks are read by api/anthropic.py (text,
tool_use, tool_result, thinking as the assistant's reasoning_content; images and documents are a
400). Unknown fields are ignored (metadata, cache_control, service_tier, ...)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field

from api.chat_schemas import MAX_MESSAGES, MAX_TOOLS
from api.schemas import MAX_STOP, RequestBody


class AnthropicMessage(RequestBody):
    role: Literal["user", "assistant", "system"] = Field(description="system: a system message within the "
                                                         "conversation (Claude Code sends them so), text only.")
    content: Union[str, list[dict[str, Any]]]


class AnthropicTool(RequestBody):
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    input_schema: Optional[dict[str, Any]] = Field(None, description="The JSON schema of the tool's input.")
    type: Optional[str] = Field(None, description="Absent or \"custom\": Anthropic's server tools are refused.")


class AnthropicToolChoice(RequestBody):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: Optional[bool] = None


class OutputFormat(RequestBody):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON schema the answer follows "
                                    "(engine/json_schema.py: what it enforces; other keywords are a 400).")


class OutputConfig(RequestBody):
    format: Optional[OutputFormat] = None
    effort: Optional[str] = Field(None, description="Ignored.")


class AnthropicCount(RequestBody):
    """POST /v1/messages/count_tokens."""

    model: str = Field(min_length=1)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: Optional[Union[str, list[dict[str, Any]]]] = None
    tools: Optional[list[AnthropicTool]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: Optional[AnthropicToolChoice] = None


class AnthropicRequest(AnthropicCount):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1)
    stream: Optional[bool] = False
    temperature: Optional[float] = Field(None, ge=0.0, le=1.0, description="Default 1; 0: greedy.")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    stop_sequences: Optional[list[str]] = Field(None, max_length=MAX_STOP)
    seed: Optional[int] = Field(None, description="Extension (not Anthropic's): reproducible sampling.")
    thinking: Optional[dict[str, Any]] = Field(None, description="type enabled (or adaptive): a thinking model "
                                               "thinks where its template can turn it on; budget_tokens is ignored.")
    output_config: Optional[OutputConfig] = None
