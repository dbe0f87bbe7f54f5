"""What editors send, as they send it, over real HTTP on loopback, on the embedded model:
llama.vscode's /infill (warm-up and completion), Continue's and Twinny's /v1/fim/completions,
Copilot's extra.trim_by_indentation and n_indent on /v1/completions."""
from __future__ import annotations

import json

import pytest
import pytest_asyncio

from engine import EngineConfig
from engine.stop_checker import dedent_cut
from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, sse_events, wait_idle
from tests.api.client import post

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENGINE = dict(num_kv_blocks=512, block_size=16, max_num_seqs=16, max_num_batched_tokens=512)
CLASS_PREFIX = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
CLASS_SUFFIX = "\n    def pop(self):\n        return self.items.pop()\n"
# llama.vscode's ring buffer of code seen elsewhere: {text, time, filename} chunks.
CHUNKS = [{"text": "".join(f"def helper_{k}_{i}(x):\n    return x * {i}\n" for i in range(8)), "time": 1700000000 + k,
           "filename": f"src/helpers_{k}.py"} for k in range(3)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    engine = build_engine(EngineConfig(**ENGINE))
    async with running_server(engine, ServerConfig(served_model_names=("codellama", "copilot-codex"), port=0)) as srv:
        yield srv


async def stream_events(http, url: str, body: dict, headers: dict | None = None) -> list[str]:
    async with http.post(url, json=body, headers=headers or {}) as r:
        assert r.status == 200 and r.content_type == "text/event-stream", await r.text()
        return sse_events(await r.text())


def infill_ids(server, body: dict) -> list[int]:
    """The prompt llama.cpp's layout gives: other files, prefix, suffix, middle token, then `prompt`."""
    tok = server.state.engine.tokenizer
    files = [(c["filename"], c["text"]) for c in body.get("input_extra", [])]
    return tok.fim_prompt(body["input_prefix"], body["input_suffix"], files=files) + tok.encode(body["prompt"],
                                                                                              add_bos=False)


# ---------------------------------------------------------------------- llama.vscode: /infill


def vscode_body(**over) -> dict:
    """llama.vscode's completion request (src/llama-server.ts), its unknown fields included."""
    body = {"id_slot": 0, "input_prefix": CLASS_PREFIX, "input_suffix": CLASS_SUFFIX, "input_extra": CHUNKS,
            "prompt": "        ", "n_predict": 48, "n_cmpl": 1, "top_k": 40, "top_p": 0.99, "stream": False,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 8,
            "t_max_prompt_ms": 500, "t_max_predict_ms": 2500, "lora": [{"id": 0, "scale": 0.5}],
            "model": "whatever-the-user-typed"}
    body.update(over)
    return body


async def test_llama_vscode_warm_up_fills_the_cache(server, http):
    warm = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": CHUNKS, "prompt": "", "n_predict": 0,
            "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1}
    r = await post(http, f"{server.url}/infill", warm)
    assert r["content"] == "" and r["tokens_predicted"] == 0 and r["stop"] is True and r["stop_type"] == "limit"
    assert r["tokens_evaluated"] == len(infill_ids(server, warm)) and r["truncated"] is False
    assert set(r["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"}
    before = server.state.engine.stats().tokens_cached
    await post(http, f"{server.url}/infill", vscode_body(seed=1))
    assert server.state.engine.stats().tokens_cached - before >= 3 * ENGINE["block_size"]  # the chunks' blocks


async def test_llama_vscode_completion_is_the_infill_prompt_sampled_as_llama_cpp_would(server, http):
    body = vscode_body(seed=7)
    r = await post(http, f"{server.url}/infill", body)
    ids = infill_ids(server, body)
    assert r["tokens_evaluated"] == len(ids) and r["model"] == "codellama" and r["stop"] is True
    assert r["generation_settings"]["samplers"] == ["infill", "top_k", "top_p"]
    # No "temperature" among the samplers: llama.cpp samples at temperature 1 after top-k and top-p.
    ref = await post(http, f"{server.url}/v1/completions",
                     {"prompt": ids, "max_tokens": 48, "temperature": 1.0, "top_k": 40, "top_p": 0.99, "seed": 7,
                      "n_indent": 8})
    text = ref["choices"][0]["text"]
    assert text.startswith(r["content"]) and (text == r["content"] or r["stop_type"] == "eos")
    assert r["tokens_predicted"] <= ref["usage"]["completion_tokens"]


async def test_min_p_is_a_sampler_as_llama_cpp_names_it(server, http):
    """min_p (llama.cpp's default 0.05) applies when `samplers` names it or is absent; at 1 only
    the likeliest token stays."""
    greedy = await post(http, f"{server.url}/infill", vscode_body(n_indent=0, samplers=["temperature"], temperature=0))
    named = await post(http, f"{server.url}/infill", vscode_body(n_indent=0, samplers=["min_p"], min_p=1.0))
    letters = await post(http, f"{server.url}/infill", vscode_body(n_indent=0, samplers="m", min_p=1.0))
    assert named["content"] == letters["content"] == greedy["content"]
    assert named["generation_settings"]["min_p"] == 1.0
    unnamed = await post(http, f"{server.url}/infill", vscode_body(n_indent=0, min_p=1.0))  # ["top_k", "top_p", ...]
    assert unnamed["generation_settings"]["min_p"] == 0.0


async def test_n_indent_ends_before_the_dedented_line(server, http):
    plain = await post(http, f"{server.url}/infill", vscode_body(n_indent=0, samplers=["temperature"], temperature=0))
    cut = dedent_cut(plain["content"], 0, 8)
    assert cut is not None, plain["content"]  # the model leaves the method: the test means something
    r = await post(http, f"{server.url}/infill", vscode_body(samplers=["temperature"], temperature=0))
    assert r["content"] == plain["content"][:cut] and r["stop_type"] == "limit"
    stream = await stream_events(http, f"{server.url}/infill",
                                 vscode_body(samplers=["temperature"], temperature=0, stream=True))
    events = [json.loads(e) for e in stream]
    assert "[DONE]" not in stream and events[-1]["stop"] is True and events[-1]["content"] == ""
    assert all(not e["stop"] for e in events[:-1]) and "timings" in events[-1]
    assert "".join(e["content"] for e in events) == r["content"]


async def test_t_max_predict_ms_ends_at_a_complete_line(server, http):
    body = vscode_body(n_indent=0, samplers=["temperature"], temperature=0, n_predict=64)
    plain = await post(http, f"{server.url}/infill", body)
    assert "\n" in plain["content"][:-1]
    for stream in (False, True):
        limited = vscode_body(n_indent=0, samplers=["temperature"], temperature=0, n_predict=64, t_max_predict_ms=1,
                              stream=stream)
        if stream:
            events = [json.loads(e) for e in await stream_events(http, f"{server.url}/infill", limited)]
            content, last = "".join(e["content"] for e in events), events[-1]
        else:
            last = await post(http, f"{server.url}/infill", limited)
            content = last["content"]
        assert content.endswith("\n") and plain["content"].startswith(content) and len(content) < len(plain["content"])
        assert last["stop_type"] == "limit" and last["tokens_predicted"] < 64
    await wait_idle(http, server.url)  # what the limit cut short was aborted, its blocks freed


async def test_input_too_long_is_cut_to_fit(server, http):
    chunks = [{"text": "x = [" + ", ".join(str(i) for i in range(300)) + "]\n", "filename": f"f{k}.py"}
              for k in range(12)]
    r = await post(http, f"{server.url}/infill", vscode_body(input_extra=chunks, input_prefix=CLASS_PREFIX * 40,
                                                               n_predict=16, seed=3))
    assert r["truncated"] is True and r["tokens_evaluated"] <= server.state.engine.max_model_len - 16
    assert r["tokens_predicted"] >= 1


async def test_no_fim_tokens_is_a_clear_400(server, http, monkeypatch):
    monkeypatch.setattr(server.state.engine.tokenizer, "fim", None)
    r = await post(http, f"{server.url}/infill", vscode_body(), expect=400)
    assert r["error"]["code"] == "fim_not_supported"
    r = await post(http, f"{server.url}/v1/fim/completions", {"prompt": "a", "suffix": "b"}, expect=400)
    assert r["error"]["code"] == "fim_not_supported"


# ---------------------------------------------------------------------- Continue, Twinny: /v1/fim/completions


async def test_continue_fim_stream_is_the_server_side_infill(server, http):
    # Continue's OpenAI-style _streamFim (core/llm/llms/OpenAI.ts), headers included.
    body = {"model": "codellama", "prompt": CLASS_PREFIX + "        ", "suffix": CLASS_SUFFIX, "max_tokens": 40,
            "temperature": 0, "top_p": 1, "frequency_penalty": 0, "presence_penalty": 0, "stop": ["\n\n\n"],
            "stream": True}
    headers = {"Accept": "application/json", "x-api-key": "none", "Authorization": "Bearer none"}
    events = await stream_events(http, f"{server.url}/v1/fim/completions", body, headers)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    ref = await post(http, f"{server.url}/v1/completions", {**body, "stream": False})
    assert text == ref["choices"][0]["text"] and text
    whole = await post(http, f"{server.url}/v1/fim/completions", {**body, "stream": False})
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["content"] == text
    tok = server.state.engine.tokenizer
    assert whole["usage"]["prompt_tokens"] == len(tok.fim_prompt(body["prompt"], body["suffix"]))


async def test_continue_client_side_codellama_template_ends_at_the_middle(server, http, answers):
    """Continue's OpenAI provider writes CodeLlama's infilling template into the prompt itself: the
    marker texts are read as the model's tokens, and the answer ends where the model writes <EOT>
    (a token the text never shows), as a server-side infill does."""
    tok = server.state.engine.tokenizer
    answers("x = 1<EOT>\ny = 2", specials={"<EOT>": tok.fim.eot})
    prompt = f"<PRE> {CLASS_PREFIX} <SUF>{CLASS_SUFFIX} <MID>"
    body = {"model": "codellama", "prompt": prompt, "max_tokens": 40, "temperature": 0}
    got = (await post(http, f"{server.url}/v1/completions", body))["choices"][0]
    assert (got["text"], got["finish_reason"]) == ("x = 1", "stop")
    plain = {**body, "prompt": CLASS_PREFIX}  # not an infilling prompt: <EOT> ends it only when named
    assert (await post(http, f"{server.url}/v1/completions", plain))["choices"][0]["text"] == "x = 1\ny = 2"
    named = (await post(http, f"{server.url}/v1/completions", {**plain, "stop": ["<EOT>"]}))["choices"][0]
    assert (named["text"], named["finish_reason"]) == ("x = 1", "stop")


async def test_twinny_mistral_body_without_suffix_is_a_plain_completion(server, http):
    # Twinny's hosted-provider body (src/extension/completion/request-body.ts): no suffix.
    body = {"model": "codellama", "prompt": "def fibonacci(n):\n", "stream": True, "temperature": 0.2,
            "max_tokens": 24, "stop": ["\n\n"]}
    events = await stream_events(http, f"{server.url}/v1/fim/completions", {**body, "seed": 3})
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
                   if json.loads(e)["choices"])
    ref = await post(http, f"{server.url}/v1/completions", {**body, "stream": False, "seed": 3})
    assert text == ref["choices"][0]["text"]
    mistral_seed = await post(http, f"{server.url}/v1/fim/completions", {**body, "stream": False, "random_seed": 3})
    assert mistral_seed["choices"][0]["message"]["content"] == text


# ---------------------------------------------------------------------- Copilot: trim_by_indentation


COPILOT_PROMPT = "# stack.py\nclass Stack:\n    def push(self, x):\n        "


def copilot_body(**extra) -> dict:
    """What Copilot sends to /v1/engines/{engine}/completions, unknown fields included."""
    return {"prompt": COPILOT_PROMPT, "suffix": "", "max_tokens": 64, "temperature": 0, "top_p": 1, "n": 1,
            "stop": ["\n\n\n"], "stream": True, "nwo": "octo/repo",
            "extra": {"language": "python", "next_indent": 0, "prompt_tokens": 12, "suffix_tokens": 0, **extra}}


async def test_copilot_trim_by_indentation_stops_at_the_block_end(server, http):
    url = f"{server.url}/v1/engines/copilot-codex/completions"
    plain = await post(http, url, {**copilot_body(), "stream": False})
    text = plain["choices"][0]["text"]
    cut = dedent_cut(text, 0, 8)  # the cursor's line is indented by 8
    assert cut is not None, text
    events = await stream_events(http, url, copilot_body(trim_by_indentation=True))
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text[:cut]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The same stop from any endpoint: n_indent on /v1/completions.
    same = await post(http, f"{server.url}/v1/completions", {**copilot_body(), "stream": False, "n_indent": 8})
    assert same["choices"][0]["text"] == text[:cut]


# ---------------------------------------------------------------------- llama.vim, Tabby


async def test_llama_vim_gets_the_fields_it_asks_for(server, http):
    # llama.vim's request (autoload/llama.vim): response_fields names what comes back, by path.
    fields = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
              "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
              "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated", "tokens_cached"]
    body = {"input_prefix": CLASS_PREFIX, "input_suffix": CLASS_SUFFIX, "input_extra": CHUNKS[:1], "prompt": "        ",
            "n_predict": 16, "stop": [], "n_indent": 8, "top_k": 40, "top_p": 0.90, "stream": False,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 1000, "response_fields": fields}
    r = await post(http, f"{server.url}/infill", body)
    assert set(r) == set(fields)
    assert r["timings/prompt_n"] == len(infill_ids(server, body)) and 1 <= r["timings/predicted_n"] <= 16
    assert isinstance(r["content"], str) and r["truncated"] is False


async def test_tabby_openai_kind_sends_prefix_and_suffix(server, http):
    # Tabby's openai/completion kind (crates/http-api-bindings/src/completion/openai.rs).
    body = {"model": "codellama", "prompt": CLASS_PREFIX + "        ", "suffix": CLASS_SUFFIX, "max_tokens": 24,
            "temperature": 0.0, "stream": True, "presence_penalty": 0.0}
    events = await stream_events(http, f"{server.url}/v1/completions", body)
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    fim = await post(http, f"{server.url}/v1/fim/completions", {**body, "stream": False})
    assert text == fim["choices"][0]["message"]["content"]
    plain = await stream_events(http, f"{server.url}/v1/completions", {**body, "suffix": None})
    ref = await post(http, f"{server.url}/v1/completions", {**body, "suffix": None, "stream": False})
    assert "".join(json.loads(e)["choices"][0]["text"] for e in plain[:-1]) == ref["choices"][0]["text"]


async def test_tabby_mistral_kind_reads_delta_content_from_every_chunk(server, http):
    # Tabby's mistral/completion kind: each chunk must parse with a string delta.content.
    body = {"prompt": CLASS_PREFIX + "        ", "suffix": CLASS_SUFFIX, "model": "codellama", "temperature": 0.1,
            "max_tokens": 16, "stream": True, "random_seed": 42}
    events = await stream_events(http, f"{server.url}/v1/fim/completions", body)
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(isinstance(c["choices"][0]["delta"]["content"], str) for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
