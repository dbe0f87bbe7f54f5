"""A Qwen2-style model with a byte-level BPE tokenizer.json (and a ChatML chat template) served end
to end: chat against transformers' own template rendering, stop strings and multi-byte characters
in streams, Continue's client-side FIM template, repo-level infilling."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import pytest_asyncio

from engine import EngineConfig
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, sse_events
from tests.conftest import make_tiny_family
from tests.api.client import post

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENGINE = dict(num_kv_blocks=256, block_size=8, max_num_seqs=8, max_num_batched_tokens=256)
NAME = "qwen2.5-coder-tiny"  # Continue picks its Qwen FIM template by the name
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPT = "s = 'héllo wörld ✓ 漢字 🐍'\n"


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory) -> tuple[str, str]:
    """The model as built (no chat template), and a copy with one."""
    plain = make_tiny_family(str(tmp_path_factory.mktemp("qwen2")), "qwen2")
    chat = str(tmp_path_factory.mktemp("qwen2_chat") / "model")
    shutil.copytree(plain, chat)
    file = os.path.join(chat, "tokenizer_config.json")
    with open(file, encoding="utf-8") as f:
        config = json.load(f)
    with open(file, "w", encoding="utf-8") as f:
        json.dump({**config, "chat_template": CHATML}, f)
    return plain, chat


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(qwen_dirs):
    engine = build_engine(EngineConfig(model=qwen_dirs[1], **ENGINE))
    async with running_server(engine, ServerConfig(served_model_names=(NAME,), port=0)) as srv:
        yield srv


async def streamed_text(http, url: str, body: dict) -> tuple[str, list[dict]]:
    async with http.post(url, json={**body, "stream": True}) as r:
        assert r.status == 200
        events = sse_events(await r.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["text"] for c in chunks), chunks


async def test_chat_prompt_is_transformers_rendering(server, http, qwen_dirs):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "Écris «bonjour» ✓"}]
    ids = AutoTokenizer.from_pretrained(qwen_dirs[1]).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    r = await post(http, f"{server.url}/v1/chat/completions",
                   {"messages": messages, "max_tokens": 12, "temperature": 0})
    ref = await post(http, f"{server.url}/v1/completions", {"prompt": ids, "max_tokens": 12, "temperature": 0})
    assert r["usage"]["prompt_tokens"] == len(ids)
    assert r["choices"][0]["message"]["content"] == ref["choices"][0]["text"]


async def test_streams_never_split_a_character_and_stop_strings_cut_exactly(server, http):
    url = f"{server.url}/v1/completions"
    body = {"prompt": PROMPT, "max_tokens": 40, "temperature": 1.0}
    for seed in range(40):  # a sample with a character of 3 or 4 UTF-8 bytes in it
        text = (await post(http, url, {**body, "seed": seed}))["choices"][0]["text"]
        wide = [ch for ch in text if len(ch.encode()) >= 3 and ch != "\ufffd"]
        if wide:
            break
    assert wide, "no sample had a multi-byte character"
    for _ in range(5):  # a busy machine may hand a stream out in two chunks: the property needs more
        streamed, chunks = await streamed_text(http, url, {**body, "seed": seed})
        assert streamed == text
        if len(chunks) > 2:
            break
    assert len(chunks) > 2
    for stop in (wide[0], text[text.index(wide[0]) - 1:text.index(wide[0]) + 1]):
        cut = text[:text.index(stop)]
        whole = await post(http, url, {**body, "seed": seed, "stop": [stop]})
        assert whole["choices"][0]["text"] == cut and whole["choices"][0]["finish_reason"] == "stop"
        streamed, _ = await streamed_text(http, url, {**body, "seed": seed, "stop": stop})
        assert streamed == cut


async def test_continue_client_side_template_is_the_model_fim(server, http):
    """Continue's OpenAI and vLLM providers render FIM themselves (its Qwen coder template) and send it
    to /v1/completions: the special tokens in the text are the model's, the same prompt as ours."""
    tok = server.state.engine.tokenizer
    prefix, suffix = "def área(r):\n    ", "\n\nprint(área(2))\n"
    stops = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
             "<|file_sep|>", "<|im_start|>", "<|im_end|>"]
    body = {"model": NAME, "prompt": f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>", "max_tokens": 24,
            "temperature": 0, "stop": stops, "stream": True}
    text, _ = await streamed_text(http, f"{server.url}/v1/completions", body)
    whole = await post(http, f"{server.url}/v1/completions", {**body, "stream": False})
    assert whole["usage"]["prompt_tokens"] == len(tok.fim_prompt(prefix, suffix))
    ours = await post(http, f"{server.url}/v1/fim/completions",
                      {"model": NAME, "prompt": prefix, "suffix": suffix, "max_tokens": 24, "temperature": 0})
    assert text.startswith(ours["choices"][0]["message"]["content"])  # ours also ends at <|file_sep|> / <|fim_pad|>


async def test_infill_uses_the_repo_level_tokens(server, http):
    tok = server.state.engine.tokenizer
    assert tok.fim.file_sep is not None
    body = {"input_prefix": "import util\n\n", "input_suffix": "\n", "prompt": "x = ",
            "input_extra": [{"filename": "util.py", "text": "def twice(x):\n    return 2 * x\n"}],
            "n_predict": 8, "samplers": ["temperature"], "temperature": 0}
    r = await post(http, f"{server.url}/infill", body)
    ids = tok.fim_prompt("import util\n\n", "\n", files=[("util.py", "def twice(x):\n    return 2 * x\n")])
    assert r["tokens_evaluated"] == len(ids) + len(tok.encode("x = ", add_bos=False))


async def test_a_model_without_template_cannot_chat(qwen_dirs, http):
    engine = build_engine(EngineConfig(model=qwen_dirs[0], **ENGINE), spec=None)
    async with running_server(engine, ServerConfig(served_model_names=(NAME,), port=0)) as srv:
        r = await post(http, f"{srv.url}/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]},
                       expect=400)
        assert r["error"]["code"] == "chat_template_missing" and "no chat template" in r["error"]["message"]
        await post(http, f"{srv.url}/v1/completions", {"prompt": "x", "max_tokens": 2})  # completions still work


async def test_twinny_templated_prompt_to_the_fim_endpoint(server, http):
    """Twinny renders FIM itself (its codeqwen template, other files behind <|file_sep|>) and posts it
    as `prompt`, without a suffix, to the Mistral-style endpoint."""
    tok = server.state.engine.tokenizer
    prefix, suffix, name = "def double(x):\n    ", "\n\nprint(double(2))\n", "main.py"
    other = ("util.py", "def twice(x):\n    return 2 * x")
    rendered = (f"<|file_sep|>{other[0]}\n{other[1]}\n<|file_sep|>{name}\n"
                f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>")
    body = {"model": NAME, "prompt": rendered, "stream": True, "temperature": 0, "max_tokens": 16,
            "stop": ["<|endoftext|>", "<|fim_pad|>"]}
    async with http.post(f"{server.url}/v1/fim/completions", json=body) as r:
        events = sse_events(await r.text())
    text = "".join(json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1] if json.loads(e)["choices"])
    whole = await post(http, f"{server.url}/v1/fim/completions", {**body, "stream": False})
    assert whole["choices"][0]["message"]["content"] == text
    same = tok.fim_prompt(prefix, suffix, files=[other], path=name)
    assert whole["usage"]["prompt_tokens"] == len(same)  # Twinny's text is the model's repo-level layout
