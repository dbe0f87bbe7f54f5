"""Bodies of llama.cpp's POST /infill, which llama.vscode and llama.vim send (defaults are
llama.cpp's). Unknown fields are ignored, as llama.cpp ignores them (id_slot, lora, n_cmpl,
t_max_prompt_ms, ...)."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, Field

from api.schemas import MAX_STOP, RequestBody

MAX_EXTRA_CHUNKS = 1024


class InfillChunk(RequestBody):
    """One piece of other files' text (llama.vscode's ring buffer of recently seen code)."""

    filename: Optional[str] = None
    text: str = ""


class InfillRequest(RequestBody):
    input_prefix: str = Field("", description="The lines before the cursor's line.")
    input_suffix: str = Field("", description="The text after the cursor.")
    input_extra: list[InfillChunk] = Field(default_factory=list, max_length=MAX_EXTRA_CHUNKS,
                                           description="Other files' text, before the current file.")
    prompt: str = Field("", description="The cursor's line up to the cursor: placed after the middle token.")
    n_predict: int = Field(-1, ge=-1, description="Tokens to generate; -1: until the end; 0: only read the "
                                                  "prompt into the cache.")
    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(40, description="0 or less: no top-k.")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="A token stays only if its probability is at least this "
                                                         "times the likeliest's.")
    seed: int = Field(-1, description="-1: a random seed.")
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP)
    n_indent: int = Field(0, ge=0, description="A new line indented by fewer columns ends the completion "
                                               "(before that line).")
    t_max_predict_ms: float = Field(0, ge=0, description="After this long from the first token, the completion "
                                                         "ends at the last complete line (once it has one).")
    samplers: Optional[Union[list[str], str]] = Field(None, description="Which of top_k, top_p, min_p and "
                                                      "temperature apply (names, or llama.cpp's letters k, p, m, t); "
                                                      "absent: all.")
    stream: bool = False
    cache_prompt: bool = Field(True, description="Accepted; prompts are always cached.")
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    ignore_eos: bool = False
    return_tokens: bool = False
    response_fields: Optional[list[str]] = Field(None, max_length=64, description="Answer with these fields "
                                                 "only, each named by its path (\"timings/prompt_n\"), as "
                                                 "llama.cpp does; llama.vim asks for this.")


class InfillTimings(BaseModel):
    prompt_n: int
    prompt_ms: float
    prompt_per_token_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float
    predicted_per_token_ms: float
    predicted_per_second: float


class InfillResponse(BaseModel):
    """The whole answer, or (streaming) the last event, whose content was streamed before it."""

    index: int = 0
    content: str
    tokens: list[int] = Field(default_factory=list, description="The generated ids, with return_tokens.")
    id_slot: int = 0
    stop: bool = True
    model: str
    tokens_predicted: int
    tokens_evaluated: int
    generation_settings: dict
    has_new_line: bool
    truncated: bool = Field(description="Whether the input was cut to fit the context.")
    stop_type: Literal["none", "eos", "limit", "word"]
    stopping_word: str = ""
    tokens_cached: int = Field(description="Tokens the cache holds for this request at its end (prompt and "
                                           "generated), as llama.cpp counts them.")
    timings: InfillTimings


class InfillChunkEvent(BaseModel):
    """A streamed event before the last."""

    index: int = 0
    content: str
    tokens: list[int] = Field(default_factory=list)
    stop: bool = False
    id_slot: int = 0
    tokens_predicted: int
    tokens_evaluated: int
