"""`fastcodellama serve` / `python -m api` arguments."""
from __future__ import annotations

import argparse

import pytest

from engine import DEFAULT_MODEL
from fastcodellama.cli import serve as serve_cmd


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fastcodellama")
    serve_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def test_defaults_are_local_and_use_the_embedded_model(monkeypatch):
    monkeypatch.delenv("FASTCODELLAMA_API_KEY", raising=False)
    args = parse([])
    assert args.func is serve_cmd.run
    assert args.model == DEFAULT_MODEL and args.host == "127.0.0.1" and args.port == 8000
    engine, server, spec = serve_cmd.configs(args)
    assert server.api_key is None and server.cors_origins == () and spec is not None
    assert server.model_name == "codemodel" and engine.enable_prefix_caching
    assert engine.cuda_graph_capture == "start-up"  # no request waits on a capture (jobs: first-use)
    assert serve_cmd.configs(parse(["--cuda-graph-capture", "first-use"]))[0].cuda_graph_capture == "first-use"
    with pytest.raises(SystemExit):
        parse(["--cuda-graph-capture", "later"])


def test_engine_and_server_options(tmp_path):
    args = parse(["--model", str(tmp_path), "--port", "0", "--api-key", "k", "--max-num-seqs", "4",
                  "--max-num-batched-tokens", "64", "--num-kv-blocks", "32", "--dtype", "float32",
                  "--max-model-len", "256", "--max-queue", "3", "--request-timeout", "0", "--no-speculate",
                  "--served-model-name", "tiny", "copilot-codex", "--cors-origin", "http://a.test"])
    engine, server, spec = serve_cmd.configs(args)
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.num_kv_blocks, engine.dtype,
            engine.max_model_len) == (4, 64, 32, "float32", 256)
    assert server.served_model_names == ("tiny", "copilot-codex") and server.api_key == "k"
    assert server.max_queue == 3 and server.request_timeout is None and server.port == 0
    assert server.cors_origins == ("http://a.test",) and spec is None


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert serve_cmd.run(parse(["--model", str(tmp_path / "none")])) == 2
    assert "does not exist" in capsys.readouterr().err
    assert serve_cmd.run(parse(["--model", str(tmp_path)])) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused while parsing, before anything loads
        parse(["--model", str(tmp_path), "--max-num-seqs", "0"])
