"""The bodies of POST /tokenize and /detokenize (api/tokenize.py): vLLM's and llama.cpp's fields."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, Field, model_validator

from api.chat_schemas import TEMPLATE_OPTIONS, ChatMessage, TemplateOptions
from api.schemas import RequestBody


class TokenizeRequest(RequestBody):
    model: Optional[str] = Field(None, description="Must be the served model name (or an alias) when given.")
    prompt: Optional[str] = Field(None, description="The text (vLLM's field).")
    content: Optional[str] = Field(None, description="The text (llama.cpp's field).")
    messages: Optional[list[ChatMessage]] = Field(None, description="A chat, rendered by the model's chat template.")
    add_generation_prompt: bool = Field(True, description="With messages: end with the assistant's turn opening.")
    chat_template_kwargs: Optional[TemplateOptions] = TEMPLATE_OPTIONS
    add_special_tokens: Optional[bool] = Field(None, description="Put the tokenizer's BOS first (vLLM: default true).")
    add_special: Optional[bool] = Field(None, description="The same (llama.cpp: default false).")
    with_pieces: bool = Field(False, description="Each token as {id, piece} (llama.cpp).")

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        given = [name for name in ("prompt", "content", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of prompt, content and messages")
        return self

    @property
    def bos(self) -> bool:
        """Whether a BOS goes first: vLLM's default (true) unless the request speaks llama.cpp's fields."""
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        if self.add_special is not None:
            return self.add_special
        return self.content is None


class TokenizeResponse(BaseModel):
    tokens: Union[list[int], list[dict[str, Any]]]
    count: int
    max_model_len: int


class DetokenizeRequest(RequestBody):
    model: Optional[str] = Field(None, description="Must be the served model name (or an alias) when given.")
    tokens: list[int] = Field(..., max_length=1 << 20)


class DetokenizeResponse(BaseModel):
    prompt: str
    content: str
