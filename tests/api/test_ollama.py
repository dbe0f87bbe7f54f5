"""Ollama's API over real HTTP on loopback, on the embedded model: the official `ollama` client,
and the requests Continue, llama-coder, Twinny, Zed and gen.nvim send (their shapes from their
sources: api/ollama_schemas.py names them). Each answer is checked against the OpenAI endpoints'
answer to the same request, greedy, so the text is exactly what the engine writes."""
from __future__ import annotations

import json
import re

import ollama
import pytest
import pytest_asyncio

from api.config import ServerConfig
from api.server import build_engine
from api.testing import running_server, wait_idle
from engine import EngineConfig
from tests.api.client import post
from tests.api.test_chat_tools import ASK, CLOCK, HERMES, TWO_CALLS, WEATHER

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENGINE = dict(num_kv_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=512)
NAME = "codellama:7b-code-q4_K_M"  # a name llama-coder offers, served as an alias
PREFIX = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        "
SUFFIX = "\n\n    def pop(self):\n        return self.items.pop()\n"
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    engine = build_engine(EngineConfig(**ENGINE))
    async with running_server(engine, ServerConfig(served_model_names=("codellama", NAME), port=0)) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server):
    return ollama.AsyncClient(host=server.url, timeout=60)


async def lines(http, url: str, body: dict, headers: dict | None = None) -> list[dict]:
    """A streamed answer's objects, the framing checked: one per line, each ending in a newline."""
    async with http.post(url, json=body, headers=headers or {}) as r:
        text = await r.text()
        assert r.status == 200 and r.content_type == "application/x-ndjson", text
    assert text.endswith("\n") and "\n\n" not in text
    objects = [json.loads(s) for s in text[:-1].split("\n")]
    assert all(not o["done"] for o in objects[:-1]) and objects[-1]["done"]
    return objects


async def completion(http, server, body: dict) -> dict:
    return (await post(http, f"{server.url}/v1/completions", body))["choices"][0]


def check_last(last: dict, prompt_tokens: int, text_tokens: int) -> None:
    assert last["done_reason"] in ("stop", "length") and last["prompt_eval_count"] == prompt_tokens
    assert last["eval_count"] == text_tokens
    assert all(type(last[k]) is int and last[k] >= 0 for k in ("total_duration", "load_duration",
                                                                "prompt_eval_duration", "eval_duration"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", last["created_at"])


# ---------------------------------------------------------------------- the official client


async def test_the_ollama_client_lists_shows_and_generates(server, client, http):
    listed = await client.list()
    assert [m.model for m in listed.models] == ["codellama:latest", NAME]
    assert listed.models[0].details.family == "llama" and listed.models[0].size > 0
    shown = await client.show("codellama")
    assert "insert" in shown.capabilities and ".Suffix" in shown.template
    assert shown.modelinfo["llama.context_length"] == server.state.engine.max_model_len
    whole = await client.generate(model="codellama", prompt=PREFIX, options=GREEDY)
    streamed = [part async for part in await client.generate(model="codellama:latest", prompt=PREFIX,
                                                             options=GREEDY, stream=True)]
    ours = await completion(http, server, {"prompt": PREFIX, "max_tokens": 24, "temperature": 0})
    assert whole.response == "".join(p.response for p in streamed) == ours["text"] != ""
    assert streamed[-1].done and streamed[-1].response == "" and len(streamed) > 2
    ids = server.state.engine.tokenizer.encode(PREFIX)
    assert whole.prompt_eval_count == len(ids) and whole.context[:len(ids)] == ids  # a base model: no template
    assert len(whole.context) == len(ids) + whole.eval_count
    running = await client.ps()
    assert running.models[0].model == "codellama:latest"
    await wait_idle(http, server.url)


async def test_the_ollama_client_chats(server, client, http):
    ask = [{"role": "user", "content": "Write a stack class."}]
    whole = await client.chat(model="codellama", messages=ask, options=GREEDY)
    streamed = [part async for part in await client.chat(model="codellama", messages=ask, options=GREEDY,
                                                         stream=True)]
    ours = await post(http, f"{server.url}/v1/chat/completions",
                      {"messages": ask, "max_tokens": 24, "temperature": 0})
    text = ours["choices"][0]["message"]["content"]
    assert whole.message.content == "".join(p.message.content for p in streamed) == text
    assert whole.message.role == "assistant" and whole.prompt_eval_count == ours["usage"]["prompt_tokens"]


async def test_a_missing_model_is_a_404_the_client_reads(client):
    with pytest.raises(ollama.ResponseError) as e:
        await client.generate(model="qwen2.5-coder:1.5b", prompt="x")
    assert e.value.status_code == 404 and "qwen2.5-coder:1.5b" in e.value.error and "codellama" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        await client.pull("qwen2.5-coder:1.5b")
    assert e.value.status_code == 404
    assert (await client.pull("codellama")).status == "success"


# ---------------------------------------------------------------------- editors


async def test_continue_reads_the_context_and_infills_with_suffix(server, http):
    """Continue (core/llm/llms/Ollama.ts) asks /api/show with `name`, reads num_ctx from the
    parameters with its own pattern, and sends prefix and suffix when the template names .Suffix."""
    shown = await post(http, f"{server.url}/api/show", {"name": "codellama"})
    params = dict(re.match(r"^(\S+)\s+((?:\".*\")|\S+)$", row).groups() for row in shown["parameters"].split("\n"))
    assert int(params["num_ctx"]) == server.state.engine.max_model_len and ".Suffix" in shown["template"]
    body = {"model": "codellama", "prompt": PREFIX, "suffix": SUFFIX, "keep_alive": 1800,
            "options": {"temperature": 0, "top_p": 1, "top_k": 40, "num_predict": 24, "stop": ["\n\n"],
                        "num_ctx": 2048, "mirostat": 0, "num_thread": 4, "use_mmap": True, "num_gpu": 99}}
    got = await lines(http, f"{server.url}/api/generate", body)
    ours = await post(http, f"{server.url}/v1/fim/completions",
                      {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 24, "temperature": 0, "stop": ["\n\n"]})
    assert "".join(o["response"] for o in got) == ours["choices"][0]["message"]["content"]
    check_last(got[-1], len(server.state.engine.tokenizer.fim_prompt(PREFIX, SUFFIX)), got[-1]["eval_count"])


async def test_continue_chat_with_tools_gets_ollama_calls(server, http, template, answers):
    chat = template(HERMES.replace("<tool_response>\n{{ m.content }}", "<tool_response>\n{{ m.name }}: {{ m.content }}"))
    answers(TWO_CALLS)
    body = {"model": "codellama", "messages": ASK, "tools": [WEATHER, CLOCK], "options": {"temperature": 0},
            "keep_alive": 1800, "stream": True}
    got = await lines(http, f"{server.url}/api/chat", body)
    content = "".join(o["message"]["content"] for o in got)
    calls = [c for o in got for c in o["message"].get("tool_calls", [])]
    assert "<tool_call>" not in content and content.strip() == "Let me check."
    assert [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "get_weather", {"city": "Paris"}), (1, "now", {})]  # arguments are objects, as Ollama sends them
    whole = await post(http, f"{server.url}/api/chat", {**body, "stream": False})
    assert [c["function"]["arguments"] for c in whole["message"]["tool_calls"]] == [{"city": "Paris"}, {}]
    # the calls come back in the next turn as Ollama sends them: arguments objects, results by tool_name
    answers("It is sunny.")
    turn = ASK + [whole["message"], {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]
    after = await post(http, f"{server.url}/api/chat", {**body, "messages": turn, "stream": False})
    assert after["message"]["content"] == "It is sunny."
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
             {"function": {"name": "now", "arguments": {}}}]
    seen = ASK + [{"role": "assistant", "content": "Let me check.", "tool_calls": calls},
                  {"role": "tool", "name": "get_weather", "content": "sunny"}]
    tools = [WEATHER, CLOCK]
    assert after["prompt_eval_count"] == len(chat.prompt_ids(server.state.engine.tokenizer, seen, tools))


async def test_llama_coder_raw_fim_prompt_reads_the_infilling_tokens(server, http):
    """llama-coder (src/prompts/autocomplete.ts): checks /api/tags for its model, then a raw prompt
    in CodeLlama's format; the marker texts are the model's tokens, as llama.cpp reads them."""
    async with http.get(f"{server.url}/api/tags") as r:
        tags = await r.json()
    assert NAME in [m["name"] for m in tags["models"]]
    prompt = f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>"
    body = {"model": NAME, "prompt": prompt, "raw": True,
            "options": {"stop": ["<END>", "<EOD>", "<EOT>"], "num_predict": 24, "temperature": 0}}
    got = await lines(http, f"{server.url}/api/generate", body)
    tok = server.state.engine.tokenizer
    ids = tok.encode_prompt(prompt)
    assert [tok.fim.prefix, tok.fim.suffix, tok.fim.middle] == [i for i in ids if i in tok.markers.values()]
    check_last(got[-1], len(ids), got[-1]["eval_count"])
    assert "context" not in got[-1]  # raw: Ollama gives no context back
    ours = await completion(http, server, {"prompt": prompt, "max_tokens": 24, "temperature": 0,
                                           "stop": ["<END>", "<EOD>", "<EOT>"]})
    assert "".join(o["response"] for o in got) == ours["text"]


async def test_twinny_fim_text_without_raw_is_passed_as_it_is(server, http, template):
    """Twinny (src/extension/provider-options.ts) sends its FIM template without raw, with an empty
    Authorization header and keep_alive as text: not wrapped in a chat template, even the
    checkpoint's own."""
    template(HERMES)
    prompt = f"<PRE>{PREFIX} <SUF> {SUFFIX} <MID>"
    body = {"model": "codellama", "prompt": prompt, "stream": True, "keep_alive": "5m",
            "options": {"temperature": 0.2, "num_predict": 24, "seed": 3}}
    got = await lines(http, f"{server.url}/api/generate", body, headers={"Authorization": ""})
    assert got[-1]["prompt_eval_count"] == len(server.state.engine.tokenizer.encode_prompt(prompt))
    again = await lines(http, f"{server.url}/api/generate", body)
    assert "".join(o["response"] for o in got) == "".join(o["response"] for o in again)  # seeded


async def test_zed_chat_and_edit_prediction(server, http):
    """Zed (crates/ollama): chat with null options, tools [] and keep_alive -1, every line with
    model, created_at, message.role/content and done; edit prediction raw and not streamed."""
    body = {"model": "codellama", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "keep_alive": -1, "options": {"num_ctx": 2048, "num_predict": None, "stop": [], "temperature": 1.0,
                                          "top_p": None}, "tools": [], "think": None}
    for o in await lines(http, f"{server.url}/api/chat", body):
        assert {"model", "created_at", "message", "done"} <= o.keys() and o["model"] == "codellama"
        assert o["message"]["role"] == "assistant" and isinstance(o["message"]["content"], str)
    edit = {"model": "codellama", "prompt": f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>", "raw": True, "stream": False,
            "options": {"num_predict": 16, "temperature": 0, "stop": ["<EOT>", "<PRE>", "<SUF>", "<MID>"]}}
    whole = await post(http, f"{server.url}/api/generate", edit)
    assert whole["done"] and isinstance(whole["response"], str) and whole["eval_count"] <= 16


async def test_gen_nvim_form_encoded_body_and_context_round_trip(server, http):
    """gen.nvim posts JSON with curl -d (a form content type) and sends the last `context` back."""
    body = {"model": "codellama", "prompt": "def add(a, b):\n", "stream": False, "options": GREEDY}
    async with http.post(f"{server.url}/api/generate", data=json.dumps(body),
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 200, await r.text()
        first = await r.json()
    follow = await post(http, f"{server.url}/api/generate",
                        {**body, "prompt": "def sub(a, b):\n", "context": first["context"]})
    tok = server.state.engine.tokenizer
    assert follow["prompt_eval_count"] == len(first["context"]) + len(tok.encode("def sub(a, b):\n", add_bos=False))
    assert follow["context"][:len(first["context"])] == first["context"]


async def test_an_instruct_model_gets_its_chat_template_on_generate(server, http, template):
    chat = template(HERMES)
    body = {"model": "codellama", "prompt": "Write a stack.", "system": "Be brief.", "stream": False,
            "options": GREEDY}
    got = await post(http, f"{server.url}/api/generate", body)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a stack."}]
    assert got["prompt_eval_count"] == len(chat.prompt_ids(server.state.engine.tokenizer, messages))
    raw = await post(http, f"{server.url}/api/generate", {**body, "raw": True, "system": None})
    assert raw["prompt_eval_count"] == len(server.state.engine.tokenizer.encode("Write a stack."))


# ---------------------------------------------------------------------- edges


async def test_format_schema_gives_what_the_schema_accepts(client):
    """The ollama client's structured outputs (format=Model.model_json_schema())."""
    import jsonschema

    schema = {"title": "Forecast", "type": "object", "required": ["units"],
              "properties": {"units": {"title": "Units", "enum": ["C", "F"]},
                             "days": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}}}
    finished = 0
    for seed in range(4):
        r = await client.generate(model="codellama", prompt="forecast = ", format=schema,
                                  options={"num_predict": 120, "temperature": 0.8, "seed": seed})
        if r.done_reason == "stop":
            jsonschema.validate(json.loads(r.response), schema)
            finished += 1
    chat = await client.chat(model="codellama", messages=[{"role": "user", "content": "Forecast?"}], format=schema,
                             options={"num_predict": 120, "temperature": 0.8, "seed": 1})
    if chat.done_reason == "stop":
        jsonschema.validate(json.loads(chat.message.content), schema)
        finished += 1
    assert finished > 0


async def test_options_min_p_one_leaves_the_greedy_choice(server, http):
    greedy = await post(http, f"{server.url}/api/generate",
                        {"model": "codellama", "prompt": PREFIX, "stream": False, "options": GREEDY})
    only_best = await post(http, f"{server.url}/api/generate",
                           {"model": "codellama", "prompt": PREFIX, "stream": False,
                            "options": {"num_predict": 24, "temperature": 1.0, "top_k": 0, "top_p": 1, "min_p": 1}})
    assert only_best["response"] == greedy["response"] != ""


async def test_nothing_to_generate_only_loads(server, http):
    got = await post(http, f"{server.url}/api/generate", {"model": "codellama"})
    assert got["done"] and got["done_reason"] == "load" and got["response"] == ""
    got = await post(http, f"{server.url}/api/chat", {"model": "codellama", "messages": [], "keep_alive": 0})
    assert got["done_reason"] == "unload" and got["message"] == {"role": "assistant", "content": ""}


async def test_json_format_gives_one_object(server, http):
    got = await post(http, f"{server.url}/api/generate",
                     {"model": "codellama", "prompt": "{", "format": "json", "stream": False,
                      "options": {"num_predict": 40, "temperature": 0}})
    text = got["response"]
    assert text.lstrip().startswith("{")
    if got["done_reason"] == "stop":
        assert isinstance(json.loads(text), dict)


async def test_logprobs_are_the_completions_endpoints(server, client, http):
    """logprobs and top_logprobs (Ollama 0.12.11's), with the official client, whole and streamed: an
    entry per generated token, its text the piece it added, its value and alternatives those of
    /v1/completions for the same greedy request."""
    asked = dict(model="codellama", prompt=PREFIX, raw=True, options=GREEDY)
    whole = await client.generate(**asked, logprobs=True, top_logprobs=3)
    reference = await completion(http, server, {"prompt": PREFIX, "max_tokens": 24, "temperature": 0, "logprobs": 3})
    assert len(whole.logprobs) == whole.eval_count and "".join(e.token for e in whole.logprobs) == whole.response
    # the same tokens; their values up to rounding (a prompt read from the prefix cache is not
    # computed in the same chunks as one computed whole)
    assert [e.logprob for e in whole.logprobs] == pytest.approx(reference["logprobs"]["token_logprobs"], rel=1e-4,
                                                                abs=1e-5)
    assert [[a.token for a in e.top_logprobs] for e in whole.logprobs] == [
        list(alternatives)[:3] for alternatives in reference["logprobs"]["top_logprobs"]]
    streamed = [part async for part in await client.generate(**asked, logprobs=True, stream=True)]
    entries = [e for part in streamed for e in part.logprobs or ()]
    assert [e.token for e in entries] == [e.token for e in whole.logprobs]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in whole.logprobs], rel=1e-4, abs=1e-5)
    assert all(not e.top_logprobs for e in entries)
    chat = await client.chat(model="codellama", messages=[{"role": "user", "content": "Add."}], logprobs=True,
                             options=GREEDY)
    assert len(chat.logprobs) == chat.eval_count
    assert (await client.generate(**asked)).logprobs is None  # not asked: not sent


@pytest.mark.parametrize("body, status, words", [
    ({"model": "codellama", "prompt": "x", "images": ["aGk="]}, 400, "images"),
    ({"model": "codellama", "prompt": "x", "think": True}, 400, "thinking"),
    ({"model": "codellama", "prompt": "x", "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ({"model": "codellama", "prompt": "x", "format": {"type": "array", "uniqueItems": True}}, 400, "uniqueItems"),
    ({"model": "codellama", "prompt": "x", "format": "yaml"}, 400, "invalid format"),
    ({"model": "codellama", "prompt": "x", "raw": True, "system": "s"}, 400, "raw mode"),
    ({"model": "codellama", "prompt": "x", "template": "{{ .Prompt }}"}, 400, "template"),
    ({"model": "codellama", "prompt": "x", "options": {"min_p": 2}}, 400, "min_p"),
    ({"model": "codellama", "prompt": "x", "options": {"top_k": "forty"}}, 400, "top_k"),
    ({"model": "codellama", "prompt": "x", "options": {"temperature": -1}}, 400, "temperature"),
    ({"model": "codellama", "prompt": "x", "options": {"typical_p": 0.5}}, 400, "typical_p"),
    ({"model": "codellama", "prompt": "x", "context": [10 ** 9]}, 400, "token"),
    ({"prompt": "x"}, 400, "model"),
    ({"model": "codellama", "prompt": "x", "context": [1] * 5000}, 400, "context"),
    ({"model": "codellama", "prompt": "x" * (9 << 20)}, 413, "too large"),
])
async def test_bad_requests_are_ollama_errors(server, http, body, status, words):
    async with http.post(f"{server.url}/api/generate", json=body) as r:
        got = await r.json()
        assert r.status == status and list(got) == ["error"] and isinstance(got["error"], str), got
    assert words in got["error"]
    await wait_idle(http, server.url)


async def test_other_ollama_paths_answer_in_its_shape(server, http):
    for method, path, status in (("POST", "/api/embed", 501), ("DELETE", "/api/delete", 501),
                                 ("POST", "/api/nothing", 404), ("POST", "/api/show", 400)):
        async with http.request(method, f"{server.url}{path}", json={}) as r:
            assert r.status == status and isinstance((await r.json())["error"], str), path
    for body in ({"model": "codellama", "messages": "x"}, {"model": "codellama", "messages": [{"content": "x"}]},
                 {"model": "codellama", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
                 {"model": "codellama", "messages": [{"role": "assistant", "tool_calls": [{"function": 1}]}]}):
        async with http.post(f"{server.url}/api/chat", json=body) as r:
            got = await r.json()
            assert r.status == 400 and list(got) == ["error"] and re.search("messages|images", got["error"]), got
    async with http.get(f"{server.url}/") as r:
        assert r.status == 200 and "running" in await r.text()
    async with http.get(f"{server.url}/api/version") as r:
        assert (await r.json())["version"]


async def test_a_client_that_leaves_mid_stream_frees_its_blocks(server, http):
    """llama-coder and Cody stop reading once they have what they want."""
    body = {"model": "codellama", "prompt": PREFIX, "options": {"num_predict": 400, "temperature": 0.8}}
    async with http.post(f"{server.url}/api/generate", json=body) as r:
        await r.content.readline()
    await wait_idle(http, server.url)
