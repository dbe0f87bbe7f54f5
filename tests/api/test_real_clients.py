"""The real Codex CLI, Claude Code, Qwen Code, opencode and the Continue CLI against a live server,
each through a whole agent turn, and GitHub Copilot's language server through an inline completion: the
model asks for a shell command (a call written in Hermes' format, replayed through the engine:
the embedded model writes none), the client runs it and sends its output back, and the model's
answer is what the client prints. Run where the clients' binaries are: FASTCODELLAMA_REAL_CLIENTS
names a folder with `codex`, `claude`, `qwen`, `opencode`, `cn` and `copilot-language-server` in it
(`npm install @openai/codex @anthropic-ai/claude-code @qwen-code/qwen-code opencode-ai
@continuedev/cli @github/copilot-language-server`, then node_modules/.bin); skipped
elsewhere, as in CI, where the bodies those clients sent are replayed instead
(tests/api/test_client_bodies.py)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal

import pytest
import pytest_asyncio

from tests.api.conftest import TOOL_ANSWER as ANSWER, TOOL_WORD as WORD, agent_server, hermes_call as call
from tests.api.test_chat_tools import HERMES

BIN = os.environ.get("FASTCODELLAMA_REAL_CLIENTS", "")
pytestmark = [pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.skipif(not BIN, reason="FASTCODELLAMA_REAL_CLIENTS names no folder with the clients")]

KEY = "real-client-key"
ASK = "Run a shell command that prints a word, then tell me the word."


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(long_model):
    async with agent_server(long_model, KEY, kv_blocks=8192) as srv:
        yield srv


async def run(argv: list[str], env: dict[str, str], cwd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env={**os.environ, **env},
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    return proc.returncode, out.decode("utf-8", "replace")


@pytest.mark.parametrize("thinking", [False, True])
async def test_the_codex_cli_runs_a_command_and_answers(server, tool_turn, template, tmp_path, thinking):
    """Thinking, the model's reasoning goes out as a reasoning item, and Codex sends it back."""
    tool_turn.first = call("exec_command", {"cmd": f"echo {WORD}"})
    if thinking:
        turn = "{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant"
        template(HERMES.replace(turn, turn + "{%- if m.reasoning_content %}\n<think>\n{{ m.reasoning_content }}\n"
                                             "</think>{%- endif %}"))
        tool_turn.first = "<think>\nI should run it.\n</think>\n\n" + tool_turn.first
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "coder"\nmodel_provider = "local"\n[model_providers.local]\nname = "fastcodellama"\n'
        f'base_url = "{server.url}/v1"\nwire_api = "responses"\nenv_key = "LOCAL_KEY"\n')
    code, out = await run([os.path.join(BIN, "codex"), "exec", "--skip-git-repo-check",
                           "--dangerously-bypass-approvals-and-sandbox", ASK],
                          {"CODEX_HOME": str(home), "LOCAL_KEY": KEY}, str(tmp_path))
    assert code == 0, out
    assert ANSWER in out and any(WORD in p for p in tool_turn[1:]), out
    assert not thinking or "I should run it." in tool_turn[-1]  # the reasoning item, back in the conversation


async def test_claude_code_runs_a_command_and_answers(server, tool_turn, tmp_path):
    tool_turn.first = call("Bash", {"command": f"echo {WORD}", "description": "Print a word"})
    env = {"HOME": str(tmp_path), "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": KEY,
           "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    code, out = await run([os.path.join(BIN, "claude"), "-p", ASK, "--model", "coder", "--allowedTools", "Bash"],
                          env, str(tmp_path))
    assert code == 0, out
    assert ANSWER in out and any(WORD in p for p in tool_turn[1:]), out


async def test_qwen_code_runs_a_command_and_answers(server, tool_turn, tmp_path):
    tool_turn.first = call("run_shell_command", {"command": f"echo {WORD}"})
    env = {"HOME": str(tmp_path), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"{server.url}/v1", "OPENAI_MODEL": "coder"}
    code, out = await run([os.path.join(BIN, "qwen"), "-p", ASK, "--yolo", "--auth-type", "openai"], env, str(tmp_path))
    assert code == 0, out
    assert ANSWER in out and any(WORD in p for p in tool_turn[1:]), out


async def test_opencode_runs_a_command_and_answers(server, tool_turn, tmp_path):
    tool_turn.first = call("bash", {"command": f"echo {WORD}", "description": "Print a word"})
    config = tmp_path / ".config" / "opencode"
    config.mkdir(parents=True)
    (config / "opencode.json").write_text(json.dumps({"provider": {"local": {
        "npm": "@ai-sdk/openai-compatible", "name": "fastcodellama",
        "options": {"baseURL": f"{server.url}/v1", "apiKey": KEY}, "models": {"coder": {"name": "coder"}}}}}))
    code, out = await run([os.path.join(BIN, "opencode"), "run", "--model", "local/coder", ASK],
                          {"HOME": str(tmp_path), "OPENCODE_DISABLE_AUTOUPDATE": "1"}, str(tmp_path))
    assert code == 0, out
    assert ANSWER in out and any(WORD in p for p in tool_turn[1:]), out


class LanguageServer:
    """A language server over stdio (JSON-RPC with Content-Length frames), as an editor drives it;
    its requests to the editor get empty answers."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc, self.next_id, self.waiting = proc, 0, {}
        self.reader = asyncio.ensure_future(self._read())

    def _send(self, message: dict) -> None:
        data = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)

    def notify(self, method: str, params: dict) -> None:
        self._send({"method": method, "params": params})

    async def request(self, method: str, params: dict) -> dict:
        self.next_id += 1
        self.waiting[self.next_id] = answer = asyncio.get_running_loop().create_future()
        self._send({"id": self.next_id, "method": method, "params": params})
        return await asyncio.wait_for(answer, 120)

    async def _read(self) -> None:
        while True:
            length = 0
            while (line := await self.proc.stdout.readline()).strip():
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not length:
                return
            message = json.loads(await self.proc.stdout.readexactly(length))
            if "method" not in message:
                self.waiting.pop(message["id"]).set_result(message)
            elif "id" in message:  # the server asks the editor (configuration, progress): nothing to give
                params = message.get("params")
                items = params.get("items") if isinstance(params, dict) else None
                self._send({"id": message["id"], "result": [{}] * len(items) if isinstance(items, list) else None})


async def test_github_copilots_language_server_completes_a_line(server, answers, tmp_path):
    """The language server that Copilot's editor plugins run (Neovim, Vim, Zed, JetBrains, ...),
    signed in by environment variables whose API URL is this server: it takes its token and user
    here, then asks this server for the inline completion."""
    answers("if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n")
    env = {"HOME": str(tmp_path), "GH_COPILOT_TOKEN": KEY, "GH_COPILOT_API_URL": server.url,
           "GH_COPILOT_SERVER_URL": server.url}
    proc = await asyncio.create_subprocess_exec(os.path.join(BIN, "copilot-language-server"), "--stdio",
                                                env={**os.environ, **env}, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                                                start_new_session=True)  # its workers go with it
    ls = LanguageServer(proc)
    try:
        editor = {"editorInfo": {"name": "Neovim", "version": "0.10.0"},
                  "editorPluginInfo": {"name": "test-plugin", "version": "1.0.0"}}
        await ls.request("initialize", {"processId": os.getpid(), "rootUri": None, "workspaceFolders": None,
                                        "capabilities": {"workspace": {"configuration": True}},
                                        "initializationOptions": editor})
        ls.notify("initialized", {})
        ls.notify("workspace/didChangeConfiguration", {"settings": {}})  # it answers completions after it has some
        assert (await ls.request("checkStatus", {}))["result"]["status"] == "OK"
        uri = (tmp_path / "fib.py").as_uri()
        ls.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": "def fibonacci(n):\n    "}})
        got = await ls.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri, "version": 1}, "position": {"line": 1, "character": 4},
            "context": {"triggerKind": 2}, "formattingOptions": {"tabSize": 4, "insertSpaces": True}})
        items = got["result"]["items"]
        # The model's answer, cut where Copilot cuts a suggestion (the first block).
        assert items and "if n < 2:\n        return n" in items[0]["insertText"], got
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        ls.reader.cancel()
        await asyncio.wait_for(proc.wait(), 30)


async def test_the_continue_cli_runs_a_command_and_answers(server, tool_turn, tmp_path):
    tool_turn.first = call("Bash", {"command": f"echo {WORD}"})
    config = tmp_path / "config.yaml"
    config.write_text(f"name: local\nversion: 1.0.0\nschema: v1\nmodels:\n  - name: coder\n    provider: openai\n"
                      f"    model: coder\n    apiBase: {server.url}/v1\n    apiKey: {KEY}\n"
                      "    roles: [chat, edit, apply]\n")
    code, out = await run([os.path.join(BIN, "cn"), "-p", ASK, "--config", str(config), "--auto"],
                          {"HOME": str(tmp_path)}, str(tmp_path))
    assert code == 0, out
    assert ANSWER in out and any(WORD in p for p in tool_turn[1:]), out


async def test_the_clients_are_where_the_variable_says():
    names = ("codex", "claude", "qwen", "opencode", "cn", "copilot-language-server")
    assert all(shutil.which(name, path=BIN) for name in names), BIN
