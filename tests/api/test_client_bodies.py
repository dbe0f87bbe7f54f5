"""The requests the real Codex CLI (0.171.0), Claude Code (2.1.197), Qwen Code (0.15.10), opencode
(1.18.33) and the Continue CLI (1.5.47) sent in a whole agent turn, and GitHub Copilot's language server (1.539.0) for
an inline completion (tests/api/test_real_clients.py, 2026-12-06), replayed over real HTTP with the
headers they sent: an agent's first request asks for a shell command, the next carries its output
(opencode first asks for a title); the clients' own long texts are cut from them
(tests/data/README.md). Codex offers function tools, its sub-agents' tools in a namespace and
OpenAI's web search; Claude Code puts a system message within the conversation; Qwen Code, opencode
and Continue speak OpenAI's chat completions; Copilot's language server takes its token and user
from the server before it asks for a completion of its model of the day."""
from __future__ import annotations

import json
import os

import pytest
import pytest_asyncio

from api.testing import sse_events, typed_sse_events, wait_idle
from tests.api.conftest import TOOL_ANSWER as ANSWER, TOOL_WORD as WORD, agent_server, hermes_call as call
from tests.api.test_chat_tools import HERMES

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "client-bodies-key"
DATA = os.path.join(os.path.dirname(__file__), "..", "data", "clients")


def bodies(name: str) -> list[dict]:
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)["requests"]


CODEX, CLAUDE = bodies("codex_cli_0.171.0.json"), bodies("claude_code_2.1.197.json")
CHAT_AGENTS = {"qwen_code_0.15.10.json": "run_shell_command", "opencode_1.18.33.json": "bash",
               "continue_cli_1.5.47.json": "Bash"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(long_model):
    async with agent_server(long_model, KEY, kv_blocks=2048) as srv:
        yield srv


async def post_text(server, http, request: dict) -> str:
    """The captured request sent as the client sent it; its answer's stream."""
    headers = {**request["headers"], "Authorization": f"Bearer {KEY}", "x-api-key": KEY}
    async with http.post(f"{server.url}{request['path']}", data=json.dumps(request["body"]), headers=headers) as r:
        text = await r.text()
        assert r.status == 200, text
        assert r.headers["Content-Type"].startswith("text/event-stream")
    return text


def chat_chunks(text: str) -> list[dict]:
    """A chat completion stream's chunks; it ends with [DONE]."""
    *events, done = sse_events(text)
    assert done == "[DONE]"
    return [json.loads(e) for e in events]


async def post(server, http, request: dict) -> list[dict]:
    """post_text's events, typed (the Responses and Messages APIs)."""
    return typed_sse_events(await post_text(server, http, request))


async def test_codex_gets_its_call_then_its_answer(server, http, tool_turn):
    tool_turn.first = call("exec_command", {"cmd": f"echo {WORD}"})
    turn = await post(server, http, CODEX[0])
    response = turn[-1]["response"]
    assert turn[-1]["type"] == "response.completed" and response["output"][0]["type"] == "function_call"
    assert response["output"][0]["name"] == "exec_command" and "namespace" not in response["output"][0]
    assert json.loads(response["output"][0]["arguments"]) == {"cmd": f"echo {WORD}"}
    turn = await post(server, http, CODEX[1])
    assert turn[-1]["response"]["output"][0]["content"][0]["text"] == ANSWER
    # The template saw the function tools and the namespace's as "namespace.name", not web search;
    # the second turn's call and the command's output.
    offered = tool_turn[0][:tool_turn[0].index("</tools>")]
    assert '"name": "multi_agent_v1.spawn_agent"' in offered and '"name": "exec_command"' in offered
    assert "web_search" not in offered
    assert f'"name": "exec_command", "arguments": {{"cmd": "echo {WORD}"}}' in tool_turn[1] and WORD in tool_turn[1]
    await wait_idle(http, server.url)


async def test_a_call_to_a_namespaced_tool_names_its_namespace_and_goes_back_as_one(server, http, tool_turn):
    tool_turn.first = call("multi_agent_v1.wait_agent", {"targets": ["a1"]})
    first = json.loads(json.dumps(CODEX[0]))
    for stream in (True, False):
        first["body"]["stream"] = stream
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
        async with http.post(f"{server.url}/v1/responses", data=json.dumps(first["body"]), headers=headers) as r:
            text = await r.text()
            assert r.status == 200, text
        output = typed_sse_events(text)[-1]["response"]["output"] if stream else json.loads(text)["output"]
        item = output[0]
        assert (item["type"], item["namespace"], item["name"]) == ("function_call", "multi_agent_v1", "wait_agent")
    # The call back in the conversation, as the client sends it: the template sees the name it was offered.
    second = json.loads(json.dumps(CODEX[1]["body"]))
    second["input"] = [*second["input"][:-2], {k: v for k, v in item.items() if k != "status"},
                       {"type": "function_call_output", "call_id": item["call_id"], "output": "a1 done"}]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    async with http.post(f"{server.url}/v1/responses", data=json.dumps(second), headers=headers) as r:
        assert r.status == 200, await r.text()
    assert '"name": "multi_agent_v1.wait_agent", "arguments": {"targets": ["a1"]}' in tool_turn[-1]


async def test_claude_code_gets_its_call_then_its_answer(server, http, tool_turn):
    tool_turn.first = call("Bash", {"command": f"echo {WORD}", "description": "Print a word"})
    turn = await post(server, http, CLAUDE[0])
    uses = [e["content_block"] for e in turn if e["type"] == "content_block_start"]
    assert uses[-1]["type"] == "tool_use" and uses[-1]["name"] == "Bash"
    assert [e for e in turn if e["type"] == "message_delta"][-1]["delta"]["stop_reason"] == "tool_use"
    turn = await post(server, http, CLAUDE[1])
    text = "".join(e["delta"].get("text", "") for e in turn if e["type"] == "content_block_delta")
    assert text == ANSWER
    # Its system message within the conversation reached the template as one, after the user's turn.
    ask = tool_turn[1].index("Run a shell command that prints a word")
    assert tool_turn[1].index("<|im_start|>system\n[", ask) < tool_turn[1].index("<|im_start|>assistant", ask)
    await wait_idle(http, server.url)


async def test_claude_codes_count_tokens_takes_its_system_message_too(server, http, template):
    template(HERMES)
    body = {k: CLAUDE[1]["body"][k] for k in ("model", "messages", "system", "tools")}
    headers = {**CLAUDE[1]["headers"], "x-api-key": KEY}
    async with http.post(f"{server.url}/v1/messages/count_tokens", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["input_tokens"] > 1000


async def test_a_tool_of_a_type_the_client_runs_but_this_server_cannot_offer_is_a_400(server, http):
    for tool, word in (({"type": "custom", "name": "apply_patch"}, "custom"),
                       ({"type": "namespace", "name": "empty", "tools": []}, "namespace"),
                       ({"type": "namespace", "name": "n", "tools": [{"type": "web_search"}]}, "web_search")):
        body = {"model": "coder", "input": "hi", "tools": [tool]}
        async with http.post(f"{server.url}/v1/responses", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status == 400 and word in (await r.json())["error"]["message"]
    twice = {"model": "coder", "input": "hi", "tools": [
        {"type": "function", "name": "n.f"},
        {"type": "namespace", "name": "n", "tools": [{"type": "function", "name": "f"}]}]}
    async with http.post(f"{server.url}/v1/responses", json=twice, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 400 and "'n.f'" in (await r.json())["error"]["message"]
    # Tools are counted before they are read: a namespace's count with the rest.
    many = {"model": "coder", "input": "hi", "tools": [
        {"type": "namespace", "name": f"n{i}", "tools": [{"type": "function", "name": "f"}] * 300} for i in range(2)]}
    async with http.post(f"{server.url}/v1/responses", json=many, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 400 and "at most 512 tools" in (await r.json())["error"]["message"]


@pytest.mark.parametrize("name", sorted(CHAT_AGENTS))
async def test_chat_completion_agents_get_their_call_then_their_answer(server, http, tool_turn, name):
    tool_turn.first = call(CHAT_AGENTS[name], {"command": f"echo {WORD}"})
    *asks, last = bodies(name)
    for request in asks:
        chunks = chat_chunks(await post_text(server, http, request))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert calls[0]["function"]["name"] == CHAT_AGENTS[name]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] > 1000  # stream_options include_usage (opencode)
    chunks = chat_chunks(await post_text(server, http, last))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ANSWER
    await wait_idle(http, server.url)


async def test_copilots_language_server_gets_its_token_user_and_completion(server, http, answers):
    """Its token and user answers must carry GitHub's request-id header (it takes an answer
    without one for a proxy's) and name this server as where completions go."""
    answers("    if n < 2:\n        return n\n")
    token, user, complete = bodies("copilot_language_server_1.539.0.json")
    auth = {"Authorization": f"token {KEY}"}
    for request in (token, user):
        async with http.get(f"{server.url}{request['path']}", headers={**request["headers"], **auth}) as r:
            assert r.status == 200 and r.headers["x-github-request-id"]
            assert (await r.json())["endpoints"] == {"api": server.url, "proxy": server.url}
    async with http.get(f"{server.url}{token['path']}", headers={**token["headers"], **auth}) as r:
        session = (await r.json())["token"]
    request = {**complete, "headers": {**complete["headers"], "Authorization": f"Bearer {session}"}}
    assert request["path"] == "/v1/engines/gpt-41-copilot/completions"  # not a served name: Copilot's own
    chunks = chat_chunks(await post_text(server, http, request))
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "    if n < 2:\n        return n\n"
    async with http.post(f"{server.url}/v1/engines/gpt-41/completions", json=complete["body"], headers=auth) as r:
        assert r.status == 404  # an engine name that is neither served nor Copilot's
