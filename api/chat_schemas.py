"""Bodies of the chat-shaped endpoints: POST /v1/chat/completions (OpenAI) and the answers of
POST /v1/fim/completions (Mistral's FIM API answers as a chat completion)."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from api.chat_template import RESERVED_NAMES
from api.schemas import MAX_LOGPROBS, RequestBody, SamplingRequest, TextPart, Usage

MAX_MESSAGES = 4096
MAX_TOOLS = 512


class ChatMessage(BaseModel):
    """One message; fields beyond these (tool_calls, tool_call_id, ...) reach the template as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: str
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        if isinstance(content, list):
            other = sorted({p.type for p in content if p.type != "text" or p.text is None})
            if other:
                raise ValueError(f"only text content parts are supported, got {', '.join(other)}")
        return content

    def template_dict(self) -> dict:
        """The message as a chat template sees it: text parts joined by newlines into one string;
        an assistant's earlier reasoning as reasoning_content, whether a client sends it so or as
        `reasoning` (vLLM's later name)."""
        message = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            message["content"] = "\n".join(p.text or "" for p in self.content)
        if "reasoning_content" not in message and isinstance(message.get("reasoning"), str):
            message["reasoning_content"] = message["reasoning"]
        return message


class ToolFunction(RequestBody):
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="A JSON schema of its arguments.")


class Tool(RequestBody):
    type: Literal["function"]
    function: ToolFunction


class NamedFunction(RequestBody):
    name: str


class NamedToolChoice(RequestBody):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(RequestBody):
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema", description="The JSON schema the answer follows "
                                              "(engine/json_schema.py: what it enforces; other keywords are a 400).")
    strict: Optional[bool] = None


class ResponseFormat(RequestBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


def _template_options(options: dict[str, Any]) -> dict[str, Any]:
    for name in options:
        if not name.isidentifier() or name.startswith("_") or name in RESERVED_NAMES:
            raise ValueError(f"{name!r} cannot be set: a template option is a name the template reads that is not "
                             f"one of {', '.join(sorted(RESERVED_NAMES))}, nor starts with an underscore")
    return options


TemplateOptions = Annotated[dict[str, Any], AfterValidator(_template_options)]
TEMPLATE_OPTIONS = Field(None, max_length=64, description="Further names the chat template reads (vLLM's and "
                                                          "SGLang's chat_template_kwargs), e.g. {\"enable_thinking\": "
                                                          "false} for Qwen3.")


class ChatRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Optional[int] = Field(None, ge=1, description="Default: what is left of the context.")
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="Takes precedence over max_tokens.")
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                        description="Alternatives are not computed: each list holds the chosen "
                                                    "token alone.")
    tools: Optional[list[Tool]] = Field(None, max_length=MAX_TOOLS, description="Functions the model may call "
                                        "(in the format its chat template writes: api/tool_calls.py).")
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = Field(
        None, description="auto (the default with tools), none, required or a named function: the last two "
                          "start the answer with a call's opening in the model's format; in the JSON call "
                          "formats the rest is held to the function's parameter schema.")
    parallel_tool_calls: Optional[bool] = Field(None, description="false: at most the first call is returned.")
    response_format: Optional[ResponseFormat] = Field(None, description="text; json_object: the answer is one JSON "
                                                      "object (each token chosen among those that keep it one); "
                                                      "json_schema: JSON its schema accepts, the same way.")
    chat_template_kwargs: Optional[TemplateOptions] = TEMPLATE_OPTIONS
    separate_reasoning: Optional[bool] = Field(None, description="A thinking model's reasoning comes back in "
                                               "reasoning_content (the default); false: left in content as written.")


# ---------------------------------------------------------------------- responses


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    reasoning_content: Optional[str] = Field(None, description="A thinking model's reasoning (api/reasoning.py).")
    reasoning: Optional[str] = Field(None, description="The same (vLLM's later name, OpenRouter's).")
    tool_calls: Optional[list[dict[str, Any]]] = None


class ChatChoice(BaseModel):
    index: int = Field(description="prompt_index * n + sample_index")
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort", "tool_calls"]] = None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Optional[Usage] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any] = Field(description="content: the new text (\"\" in the last chunk); role in a "
                                              "choice's first chunk; tool_calls as calls are written (a call's first "
                                              "entry has its id and name, later ones more of its arguments); "
                                              "reasoning_content and reasoning: a thinking model's new reasoning.")
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort", "tool_calls"]] = None


class ChatChunk(BaseModel):
    """One `data:` chunk of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None
