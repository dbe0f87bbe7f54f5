"""A Codestral-shaped model served end to end: a tiny Mistral with a sentencepiece tokenizer that,
like Codestral's, has the dummy prefix on and [PREFIX] / [SUFFIX] control tokens. Mistral's FIM API
(Continue's, Twinny's and Tabby's mistral providers) and llama.cpp's /infill build the model's own
suffix-first prompt, the suffix and the cursor's text tokenized as running text."""
from __future__ import annotations

import os

import pytest
import pytest_asyncio

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server
from engine import EngineConfig
from tests.api.client import post
from tests.conftest import make_spm_tokenizer, make_tiny_family, spm_without_dummy_prefix

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENGINE = dict(num_kv_blocks=256, block_size=8, max_num_seqs=8, max_num_batched_tokens=256)
PREFIX, SUFFIX = "def area(r):\n    ", "\n\nprint(area(2))\n"


@pytest.fixture(scope="module")
def codestral_dir(tmp_path_factory) -> str:
    path = make_tiny_family(str(tmp_path_factory.mktemp("codestral")), "mistral")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(os.path.join(path, name))
    return make_spm_tokenizer(path, ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"], "control_symbols")


@pytest.fixture(scope="module")
def running_text(codestral_dir):
    """The same sentencepiece model with its dummy prefix off: how text that continues text is tokenized."""
    return spm_without_dummy_prefix(codestral_dir)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(codestral_dir):
    engine = build_engine(EngineConfig(model=codestral_dir, **ENGINE))
    async with running_server(engine, ServerConfig(served_model_names=("codestral-tiny",), port=0)) as srv:
        yield srv


async def test_mistral_fim_api_builds_the_suffix_first_prompt(server, http, running_text):
    tok = server.state.engine.tokenizer
    fim = tok.fim
    assert fim.style == "mistral" and tok.leading_space
    expected = [tok.bos_id, fim.suffix, *running_text.encode(SUFFIX), fim.prefix, *tok.encode(PREFIX, add_bos=False)]
    r = await post(http, f"{server.url}/v1/fim/completions",
                   {"model": "codestral-tiny", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8, "temperature": 0})
    assert r["usage"]["prompt_tokens"] == len(expected)
    assert r["object"] == "chat.completion" and r["choices"][0]["finish_reason"] in ("length", "stop")
    plain = await post(http, f"{server.url}/v1/completions",
                       {"prompt": expected, "max_tokens": 8, "temperature": 0})
    assert r["choices"][0]["message"]["content"] == plain["choices"][0]["text"]  # the same prompt, the same text


async def test_infill_puts_the_cursor_text_after_the_prefix_as_running_text(server, http, running_text):
    tok = server.state.engine.tokenizer
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "return 3.14",
            "n_predict": 4, "samplers": ["temperature"], "temperature": 0}
    r = await post(http, f"{server.url}/infill", body)
    assert r["tokens_evaluated"] == len(tok.fim_prompt(PREFIX, SUFFIX)) + len(running_text.encode("return 3.14"))
