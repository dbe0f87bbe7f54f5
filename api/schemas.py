"""Request and response bodies (pydantic). Unknown request fields are ignored, never rejected:
Copilot and other code clients send their own (`nwo`, `extra`, ...).

Requests validate strictly (no "5" for 5, no true for 1) so that a wrong type is a clear 400.
Nullable fields mean "the default" when null, as OpenAI's API does.
"""
from __future__ import annotations

import json
import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_N = 128  # samples per prompt (n, best_of)
MAX_PROMPTS = 128  # prompts in one request
MAX_STOP = 16  # stop strings
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024  # entries of a logit_bias

Prompt = Union[str, list[str], list[int], list[list[int]]]



def strict_json(text: str) -> Any:
    """JSON as the API takes it: NaN and Infinity are no numbers, nor one beyond a double's range
    (1e999), which Python's parser would read as infinite (ValueError for each)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is beyond the range of a number")
    return value

class RequestBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(RequestBody):
    include_usage: Optional[bool] = Field(None, description="Send a last chunk with the usage of the whole request.")


class TextPart(RequestBody):
    """One part of a content list: only text parts are read."""

    type: str
    text: Optional[str] = None


class Prediction(RequestBody):
    """OpenAI's predicted outputs: text the output is expected to mostly repeat (an edited file's old
    text). Its tokens are drafts, checked like any other: the output is what it would be without."""

    type: Literal["content"]
    content: Union[str, list[TextPart]]

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        if isinstance(content, list) and any(p.type != "text" or p.text is None for p in content):
            raise ValueError("prediction content parts must be text parts")
        return content

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text or "" for p in self.content)


class SamplingRequest(RequestBody):
    """What every generating endpoint shares: the model, sampling, stops, streaming."""

    model: Optional[str] = Field(None, description="Must be the served model name (or an alias) when given.")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="0 is greedy (default 1).")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=-1, description="-1 or 0: no top-k.")
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0, description="Extension (vLLM's and llama.cpp's name): "
                                   "a token stays only if its probability is at least min_p times the likeliest's.")
    n: Optional[int] = Field(None, ge=1, le=MAX_N, description="Samples per prompt.")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = Field(None, description=f"Up to {MAX_STOP} stop strings.")
    seed: Optional[int] = None
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=10.0)
    min_tokens: Optional[int] = Field(None, ge=0)
    user: Optional[str] = None
    prediction: Optional[Prediction] = Field(None, description="OpenAI's predicted outputs: drafts copied from "
                                             "it; the output is exactly what it would be without it.")
    n_indent: Optional[int] = Field(None, ge=0, description="Extension (llama.cpp's name): a new line indented "
                                    "by fewer columns ends the completion before that line.")
    logit_bias: Optional[dict[str, float]] = Field(None, max_length=MAX_LOGIT_BIAS, description="Token id -> a bias in "
                                                   "[-100, 100] added to its logit before sampling.")
    ignore_eos: Optional[bool] = Field(None, description="vLLM's: go on past the end-of-text token, to max_tokens "
                                       "(benchmark clients ask this for fixed lengths).")
    stop_token_ids: Optional[list[int]] = Field(None, max_length=MAX_STOP, description="vLLM's: token ids that end "
                                                "the answer, besides the end of text.")
    structured_outputs: Optional[dict[str, Any]] = Field(None, description="vLLM's: one of json (a schema), regex "
                                                         "(the whole answer), choice (one of the strings), json_object "
                                                         "(api/guided.py).")
    guided_json: Optional[Union[dict[str, Any], str]] = Field(None, description="vLLM's older structured_outputs.json.")
    guided_regex: Optional[str] = Field(None, description="vLLM's older structured_outputs.regex.")
    guided_choice: Optional[list[str]] = Field(None, description="vLLM's older structured_outputs.choice.")
    guided_grammar: Optional[str] = Field(None, description="Refused (400): no grammars here.")

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias):
        for key, value in (bias or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias values are in [-100, 100], got {value}")
        return bias

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


SAMPLING_FIELDS = tuple(SamplingRequest.model_fields)


class CopilotExtra(RequestBody):
    """Copilot's `extra` object; the rest of it (language, prompt_tokens, ...) is ignored."""

    trim_by_indentation: Optional[bool] = Field(None, description="End the completion where a line dedents "
                                                "out of the block the cursor is in.")
    next_indent: Optional[int] = Field(None, ge=0, description="Indentation of the line after the cursor.")


class CompletionRequest(SamplingRequest):
    """POST /v1/completions (and Copilot's /v1/engines/{engine}/completions)."""

    prompt: Prompt = Field(description="Text, a list of texts, token ids, or a list of token id lists.")
    suffix: Optional[str] = Field(None, description="Text after the completion: fill-in-the-middle in the "
                                                    "model's own format; generation stops at its end-of-middle.")
    max_tokens: Optional[int] = Field(None, ge=0, description="Tokens to generate per sample (default 16); 0 "
                                                                "with echo returns the prompt alone.")
    best_of: Optional[int] = Field(None, ge=1, le=MAX_N, description="Only best_of == n is supported.")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description="Return the chosen tokens' log probabilities and, in "
                                                "top_logprobs, that many of the likeliest tokens at each position.")
    echo: Optional[bool] = False
    extra: Optional[CopilotExtra] = None

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


class FimRequest(SamplingRequest):
    """POST /v1/fim/completions (Mistral's FIM API)."""

    prompt: str = Field(description="The text before the cursor.")
    suffix: Optional[str] = Field(None, description="The text after the cursor; none: a plain completion.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Default 16, as /v1/completions.")
    random_seed: Optional[int] = Field(None, description="Mistral's name for seed.")


# ---------------------------------------------------------------------- responses


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: Optional[list[dict[str, float]]] = Field(
        None, description="Per token, the likeliest tokens' text and log probabilities (request "
                          "logprobs > 0); null for an echoed prompt's tokens.")
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = Field(description="prompt_index * n + sample_index")
    text: str
    logprobs: Optional[Logprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort"]] = None


class CompletionTokensDetails(BaseModel):
    accepted_prediction_tokens: int = Field(description="Prediction tokens drafted and accepted: they are in "
                                                        "the output.")
    rejected_prediction_tokens: int = Field(description="Prediction tokens drafted and rejected: computed, "
                                                        "then thrown away.")


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens the prefix cache held: not computed again.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None
    completion_tokens_details: Optional[CompletionTokensDetails] = Field(
        None, description="With a prediction only.")


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
    kv_block_size: int = Field(description="Tokens one KV block holds.")
    running: int
    waiting: int
    in_flight_sequences: int = Field(description="Sequences the server has admitted and not finished.")
    shutting_down: bool


class CopilotToken(BaseModel):
    token: str
    expires_at: int
    refresh_in: int
    # Where the client sends what it asks of Copilot ("api", "proxy": completions): this server.
    endpoints: dict[str, str] = {}


class CopilotUser(BaseModel):
    """The signed-in user, as Copilot's language server asks after its token."""

    login: str = "fastcodellama"
    copilot_plan: str = "individual"
    chat_enabled: bool = False
    endpoints: dict[str, str] = {}


class ErrorObject(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorObject
