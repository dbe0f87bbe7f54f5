"""What the API tests share: one HTTP client session per test module; a chat template and answers
made for a test module's `server` (the embedded model never writes a tool call); a copy of the
embedded model that takes agents' long requests."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
from typing import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from api.chat_template import ChatTemplate
from api.config import ServerConfig
from api.server import build_engine
from api.testing import RunningServer, running_server
from engine import DEFAULT_MODEL, EngineConfig

# Agents' requests (their instructions and tools) run to thousands of tokens, past the embedded
# model's context: a copy of it told it takes this many serves them (its rotary positions go on).
LONG_CONTEXT = 65536
# An agent's turn (tool_turn): the command the model asks for prints TOOL_WORD, and once its output is
# in the prompt the model answers TOOL_ANSWER.
TOOL_WORD = "fastcodellama-tool-ran"
TOOL_ANSWER = f"The command printed {TOOL_WORD}."


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> str:
    """A copy of the embedded model whose context is LONG_CONTEXT tokens."""
    model = tmp_path_factory.mktemp("long") / "codemodel"
    shutil.copytree(DEFAULT_MODEL, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": LONG_CONTEXT}))
    return str(model)


@contextlib.asynccontextmanager
async def agent_server(long_model: str, key: str, kv_blocks: int) -> AsyncIterator[RunningServer]:
    """A server of the long-context copy, served as "coder", for agents' requests."""
    engine = build_engine(EngineConfig(model=long_model, num_kv_blocks=kv_blocks, block_size=16, max_num_seqs=4,
                                       max_num_batched_tokens=4096))
    config = ServerConfig(served_model_names=("coder",), port=0, api_key=key, max_request_tokens=LONG_CONTEXT)
    async with running_server(engine, config) as srv:
        yield srv


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


def hermes_call(name: str, arguments: dict) -> str:
    """A call as a Hermes template's model writes it."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


class Prompts(list):
    """The prompts the engine got, as text; `first`: the model's answer until the command's output
    is in the prompt (TOOL_ANSWER then)."""

    first = ""


@pytest.fixture
def tool_turn(server, template, monkeypatch) -> Prompts:
    """An agent's turn with a Hermes template: the model writes `first` (a hermes_call), then the answer."""
    from tests.api.test_chat_tools import HERMES
    template(HERMES)
    engine, seen = server.state.engine, Prompts()
    real = engine.generate

    def generate(prompt, params, request_id, **kwargs):
        text = engine.tokenizer.decode(prompt)
        seen.append(text)
        answer = TOOL_ANSWER if TOOL_WORD in text else seen.first
        ids = tuple(engine.tokenizer.encode(answer, add_bos=False))
        return real(prompt, dataclasses.replace(params, replay_token_ids=(ids,) * params.n), request_id, **kwargs)

    monkeypatch.setattr(engine, "generate", generate)
    return seen
