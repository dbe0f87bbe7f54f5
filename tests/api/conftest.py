"""What the API tests share: one HTTP client session per test module; a chat template and answers
made for a test module's `server` (the embedded model never writes a tool call)."""
from __future__ import annotations

import dataclasses
import re

import aiohttp
import pytest
import pytest_asyncio

from api.chat_template import ChatTemplate


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def template(server, monkeypatch):
    """The served model's chat template replaced by one of the given source."""
    def use(source: str, specials: dict[str, int] | None = None) -> ChatTemplate:
        default = server.state.chat_template
        chat = ChatTemplate(source, "test", default.special_tokens, specials or {})
        monkeypatch.setattr(server.state, "chat_template", chat)
        return chat
    return use


@pytest.fixture
def answers(server, monkeypatch):
    """The model made to write `text` (each sample), token by token, through the engine's replay."""
    engine = server.state.engine
    real = engine.generate

    def write(text: str, specials: dict[str, int] | None = None) -> None:
        """`specials`: marker texts in `text` written as those token ids."""
        ids: list[int] = []
        pattern = "(" + "|".join(map(re.escape, specials)) + ")" if specials else None
        for i, part in enumerate(re.split(pattern, text) if pattern else [text]):
            ids += [specials[part]] if i % 2 else engine.tokenizer.encode(part, add_bos=False) if part else []
        ids = tuple(ids)

        def generate(prompt, params, request_id, **kwargs):
            forced = dataclasses.replace(params, replay_token_ids=(ids,) * params.n)
            return real(prompt, forced, request_id, **kwargs)

        monkeypatch.setattr(engine, "generate", generate)
    return write
