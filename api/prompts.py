"""Prompt text to token ids, off the event loop and off the engine's step (issue #21 item 8).

A prompt whose length alone proves it cannot fit the context is rejected without tokenizing:
each token stands for at most `max_token_bytes` bytes of text, and a character is at least one
byte, so a text of c characters is at least ceil(c / max_token_bytes) tokens. That bound holds
only for a tokenizer that neither drops nor merges text while normalizing it, which start-up
checks on a probe; where the probe fails every prompt is tokenized. The rest is tokenized in two
worker threads of the server's own, one for small requests and one for large ones, so that a few
large prompts never hold up small requests (nor the engine, which gets token ids).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from engine.tokenizer import Tokenizer

from api.errors import APIError, bad_request

log = logging.getLogger(__name__)

T = TypeVar("T")

SMALL_REQUEST_CHARS = 16 * 1024  # prompt text of one request up to which it goes to the small-request worker
# Added special tokens (<|fim_prefix|>, <｜begin▁of▁sentence｜>, ...) are matched in the text but decode to
# nothing, so the vocabulary does not show their length; none is known to be this long.
SPECIAL_TOKEN_BYTES = 64
# Text that any normalizer would change: runs of spaces, tabs, a control character, compatibility and
# decomposed forms, a zero-width space, characters outside the BMP.
_PROBE = "a  \t\n  b\u3000\uff21\ufb01 \u00e9 e\u0301 \x01\u200b\u6f22\U0001f40d  x"


def max_token_bytes(tokenizer: Tokenizer) -> int | None:
    """Most bytes of text one token stands for, or None where the length bound is unsound."""
    own = getattr(tokenizer, "max_token_bytes", None)
    if isinstance(own, int) and own > 0:
        return own
    if tokenizer.decode(tokenizer.encode(_PROBE, add_bos=False)) != _PROBE:
        return None  # the tokenizer normalizes text: c characters may become fewer tokens than c / L
    texts: Sequence[str | None] = tokenizer.plain_texts or [None] * tokenizer.vocab_size
    longest = 0
    for i, text in enumerate(texts):
        if text is None:
            text = tokenizer.decode([i])
        longest = max(longest, len(text.encode("utf-8", "surrogatepass")))
    # +1: sentencepiece drops a piece's leading space when the piece is decoded alone.
    return max(longest + 1, SPECIAL_TOKEN_BYTES)


def too_long(tokens: int, max_model_len: int, at_least: bool = False) -> APIError:
    what = f"at least {tokens}" if at_least else str(tokens)
    return bad_request(f"The prompt has {what} tokens; the model's context is {max_model_len} tokens.",
                       param="prompt", code="context_length_exceeded")


class PromptTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_token_bytes: int | None = None
        self._small = ThreadPoolExecutor(1, thread_name_prefix="tokenize-small")
        self._large = ThreadPoolExecutor(1, thread_name_prefix="tokenize-large")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.max_token_bytes = await loop.run_in_executor(self._large, max_token_bytes, self.tokenizer)
        except Exception:  # noqa: BLE001 - without the bound every prompt is tokenized; the server still serves
            log.exception("could not measure the tokenizer's longest token")
        if self.max_token_bytes is None:
            log.warning("the tokenizer normalizes text: over-long prompts are only found by tokenizing them")

    def close(self) -> None:
        self._small.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)

    def min_tokens(self, text: str) -> int:
        """A lower bound on the tokens of `text` (0 where no sound bound is known)."""
        per_token = self.max_token_bytes
        return -(-len(text) // per_token) if per_token else 0

    def check_length(self, texts: Sequence[str], extra_tokens: int = 0) -> None:
        """400 when `texts` (one prompt's pieces) certainly exceed the context, without tokenizing."""
        tokens = sum(self.min_tokens(t) for t in texts) + extra_tokens
        if tokens >= self.max_model_len:
            raise too_long(tokens, self.max_model_len, at_least=True)

    def check_ids(self, ids: Sequence[int]) -> None:
        if len(ids) >= self.max_model_len:
            raise too_long(len(ids), self.max_model_len)

    async def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids (with the BOS the tokenizer adds; the texts of infilling tokens read as
        those tokens: Tokenizer.encode_prompt), each checked against the context."""
        ids = await self.run(sum(len(t) for t in texts), lambda: [self.tokenizer.encode_prompt(t) for t in texts])
        for prompt in ids:
            self.check_ids(prompt)
        return ids

    async def run(self, chars: int, fn: Callable[[], T]) -> T:
        """Runs `fn` (tokenizer work on `chars` characters of text) in the worker for its size."""
        pool = self._small if chars <= SMALL_REQUEST_CHARS else self._large
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
