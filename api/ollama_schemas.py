"""Bodies of Ollama's API (/api/generate, /api/chat, /api/show, /api/pull), as its clients send
them: Continue, llama-coder, Twinny, Zed, Cody, CodeCompanion, gen.nvim, the `ollama` client.

Unknown fields and unknown options are ignored, as Ollama ignores them (Continue sends `mirostat`,
`num_thread`, `use_mmap`; Zed sends options set to null). Defaults are Ollama's."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import ConfigDict, Field, field_validator

from api.chat_schemas import MAX_MESSAGES, MAX_TOOLS, Tool
from api.schemas import MAX_LOGPROBS, MAX_STOP, RequestBody

# Ollama's defaults (api/types.go DefaultOptions) where a request leaves an option out.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9


class OllamaOptions(RequestBody):
    """`options`: the sampling ones act; the rest (num_ctx, num_gpu, num_thread, repeat_last_n, ...)
    tune Ollama's own runner and are ignored here. Numbers as Ollama takes them (5.0 for 5)."""

    model_config = ConfigDict(extra="ignore", strict=False)

    num_predict: Optional[int] = Field(None, description="Tokens to generate at most; -1, -2 or 0: up to the "
                                                         "context. Bounded by the context and the server's "
                                                         "max_request_tokens.")
    temperature: Optional[float] = Field(None, ge=0.0, description=f"Default {DEFAULT_TEMPERATURE}; 0: greedy.")
    top_k: Optional[int] = Field(None, description=f"Default {DEFAULT_TOP_K}; 0 or less: no top-k.")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, description=f"Default {DEFAULT_TOP_P}.")
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0, description="Default 0 (off).")
    typical_p: Optional[float] = Field(None, description="Only 1 (off): typical sampling is not implemented.")
    repeat_penalty: Optional[float] = Field(None, gt=0.0, le=10.0, description="Over the whole prompt and output "
                                            "(Ollama: its last repeat_last_n tokens).")
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    seed: Optional[int] = Field(None, description="-1 or absent: a random seed.")
    stop: Optional[Union[str, list[str]]] = Field(None, description=f"Up to {MAX_STOP} stop strings.")

    @field_validator("typical_p")
    @classmethod
    def _only_off(cls, value):
        if value not in (None, 1.0):
            raise ValueError("typical sampling is not implemented here: leave typical_p out or 1")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop):
        if isinstance(stop, list) and len(stop) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return stop


class OllamaGeneration(RequestBody):
    """What /api/generate and /api/chat share."""

    model: str = Field(min_length=1, description="A served model name (a name without a tag is name:latest).")
    stream: Optional[bool] = Field(None, description="Default true: one JSON object per line "
                                                     "(application/x-ndjson).")
    format: Optional[Union[str, dict[str, Any]]] = Field(None, description="\"json\": the answer is one JSON object; "
                                                         "a JSON schema: JSON it accepts (engine/json_schema.py).")
    options: Optional[OllamaOptions] = None
    keep_alive: Optional[Union[int, float, str]] = Field(None, description="Ignored: the model stays loaded.")
    think: Optional[Union[bool, str]] = Field(None, description="A thinking model (Qwen3, DeepSeek-R1): true or "
                                              "false turns its thinking on or off where its template can (Qwen3's "
                                              "enable_thinking); absent: the template's default. The reasoning "
                                              "comes back in `thinking`. Levels (\"low\", ...) are a 400.")
    logprobs: Optional[bool] = Field(None, description="Each generated token's log probability in `logprobs`.")
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS, description="With logprobs: that many likeliest "
                                        "tokens at each position.")


class OllamaGenerateRequest(OllamaGeneration):
    """POST /api/generate."""

    prompt: str = Field("", description="Empty: only loads the model (done_reason \"load\").")
    suffix: Optional[str] = Field(None, description="Text after the cursor: fill-in-the-middle in the model's "
                                                    "own format.")
    system: Optional[str] = None
    template: Optional[str] = Field(None, description="Refused (400): Ollama's Go templates are not rendered.")
    context: Optional[list[int]] = Field(None, description="Token ids of an earlier exchange (its `context`), "
                                                           "put before this prompt.")
    raw: Optional[bool] = Field(False, description="The prompt as it is, with no template.")
    images: Optional[list[str]] = None


class OllamaMessage(RequestBody):
    role: str = Field(min_length=1)
    content: Optional[str] = ""
    images: Optional[list[str]] = None
    tool_calls: Optional[list[dict[str, Any]]] = Field(None, description="An assistant's calls; arguments are "
                                                       "objects (JSON text accepted too).")
    tool_name: Optional[str] = Field(None, description="A tool message: the tool that answered.")
    thinking: Optional[str] = Field(None, description="An assistant's earlier reasoning: the template's "
                                    "reasoning_content.")


class OllamaChatRequest(OllamaGeneration):
    """POST /api/chat."""

    messages: list[OllamaMessage] = Field(default_factory=list, max_length=MAX_MESSAGES,
                                    description="None: only loads the model (done_reason \"load\").")
    tools: Optional[list[Tool]] = Field(None, max_length=MAX_TOOLS)


class OllamaModelRequest(RequestBody):
    """POST /api/show and /api/pull: `model`, or the older `name`."""

    model: Optional[str] = None
    name: Optional[str] = None
    stream: Optional[bool] = None

    @property
    def target(self) -> str:
        return self.model or self.name or ""
