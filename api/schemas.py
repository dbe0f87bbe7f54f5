"""Request and response bodies (pydantic). Unknown request fields are ignored, never rejected:
Copilot and other code clients send their own (`nwo`, `extra`, ...).

Requests validate strictly (no "5" for 5, no true for 1) so that a wrong type is a clear 400.
Nullable fields mean "the default" when null, as OpenAI's API does.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_N = 128  # samples per prompt (n, best_of)
MAX_PROMPTS = 128  # prompts in one request
MAX_STOP = 16  # stop strings
MAX_LOGPROBS = 20

Prompt = Union[str, list[str], list[int], list[list[int]]]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: Optional[bool] = Field(None, description="Send a last chunk with the usage of the whole request.")


class CompletionRequest(_Request):
    """POST /v1/completions (and Copilot's /v1/engines/{engine}/completions)."""

    model: Optional[str] = Field(None, description="Must be the served model name (or an alias) when given.")
    prompt: Prompt = Field(description="Text, a list of texts, token ids, or a list of token id lists.")
    suffix: Optional[str] = Field(None, description="Text after the completion: fill-in-the-middle with the "
                                                    "model's <PRE>/<SUF>/<MID> tokens; generation stops at <EOT>.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Tokens to generate per sample (default 16).")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="0 is greedy (default 1).")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=-1, description="-1 or 0: no top-k.")
    n: Optional[int] = Field(None, ge=1, le=MAX_N, description="Samples per prompt.")
    best_of: Optional[int] = Field(None, ge=1, le=MAX_N, description="Only best_of == n is supported.")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = Field(None, description=f"Up to {MAX_STOP} stop strings.")
    seed: Optional[int] = None
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description="Return the chosen tokens' log probabilities; "
                                                "top_logprobs is always null (not computed).")
    echo: Optional[bool] = False
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=10.0)
    min_tokens: Optional[int] = Field(None, ge=0)
    user: Optional[str] = None

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _prompt_shape(cls, value: Any, handler):
        try:
            prompt = handler(value)
        except ValidationError:
            raise ValueError("prompt must be a string, a list of strings, a list of token ids "
                             "or a list of lists of token ids") from None
        if isinstance(prompt, list) and len(prompt) > MAX_PROMPTS and not isinstance(prompt[0], int):
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return prompt

    @field_validator("stop", mode="wrap")
    @classmethod
    def _stop_shape(cls, value: Any, handler):
        try:
            stop = handler(value)
        except ValidationError:
            raise ValueError("stop must be a string or a list of strings") from None
        if isinstance(stop, list) and len(stop) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return stop


# ---------------------------------------------------------------------- responses


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: Optional[list[dict[str, float]]] = Field(
        None, description="Always null: only the chosen tokens' log probabilities are computed.")
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = Field(description="prompt_index * n + sample_index")
    text: str
    logprobs: Optional[Logprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort"]] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    """A whole completion, or (streaming) one `data:` chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fastcodellama"
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    ok: bool
    model: str
    kv_blocks_total: int
    kv_blocks_free: int
    kv_blocks_used: int
    running: int
    waiting: int
    in_flight_sequences: int = Field(description="Sequences the server has admitted and not finished.")
    shutting_down: bool


class CopilotToken(BaseModel):
    token: str
    expires_at: int
    refresh_in: int


class ErrorObject(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorObject
