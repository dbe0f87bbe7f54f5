"""The parts behind issue #21's server fixes, one at a time: log limits, client keys, per-client
admission, the connection gate's bookkeeping, the prompt length bound."""
from __future__ import annotations

import asyncio
import logging
import random

import pytest

from api.admission import Admission
from api.clients import ClientKeys, ClientLabels, key_label, peer_key
from api.connections import ConnectionGate, ConnectionLimits, connection_cap
from api.errors import APIError
from api.logs import RepeatFilter, limit_repeats
from api.prompts import max_token_bytes
from engine.tokenizer import Tokenizer


def record(msg: str, *args, name: str = "asyncio", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


def test_repeated_lines_are_rate_limited_with_a_count():
    now = [0.0]
    f = RepeatFilter(burst=2, period=10.0, clock=lambda: now[0])
    accept = [record(f"socket.accept() out of system resource\nsocket: fd={i}") for i in range(100)]
    assert [f.filter(r) for r in accept] == [True, True] + [False] * 98
    assert f.filter(record("another message"))  # other kinds are not held back
    assert f.filter(record("%s: client went away", "a")) and f.filter(record("%s: client went away", "b"))
    assert not f.filter(record("%s: client went away", "c"))
    now[0] = 10.5
    again = record("socket.accept() out of system resource\nsocket: fd=7")
    assert f.filter(again) and "[98 similar lines suppressed]" in again.getMessage()


def test_limit_repeats_keeps_the_access_log():
    handler = logging.Handler()
    logger = logging.getLogger("test_limit_repeats")
    logger.addHandler(handler)
    try:
        limit_repeats(logger, burst=1, period=60)
        access = [record('%s "%s" %s', "1.2.3.4", "GET /", "200", name="aiohttp.access", level=logging.INFO)
                  for _ in range(5)]
        assert all(handler.filter(r) for r in access)
        errors = [record("boom") for _ in range(5)]
        assert [bool(handler.filter(r)) for r in errors] == [True, False, False, False, False]
    finally:
        logger.removeHandler(handler)


def test_peer_and_client_keys():
    assert peer_key("10.1.2.3") == "10.1.2.3" and peer_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert peer_key("2001:db8::1") == peer_key("2001:db8::ffff") == "2001:db8::/64"
    assert peer_key(None) == "unknown"
    one = ClientKeys(("only",))  # one shared key cannot tell clients apart
    assert one.client_of("Bearer only", "10.0.0.1") == "ip-10.0.0.1"
    two = ClientKeys(("k1", "k2"))
    assert two.client_of("Bearer k1", "10.0.0.1") == two.client_of("token k1", "10.0.0.2") == key_label("k1")
    assert two.client_of("Bearer nope", "10.0.0.1") == "ip-10.0.0.1"
    assert "k1" not in key_label("k1") and key_label("k1") != key_label("k2")
    labels = ClientLabels(2)
    assert [labels(c) for c in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]


def test_admission_holds_each_client_to_its_share():
    admission = Admission(capacity=10, client_capacity=5)
    with admission.reserve(4, "heavy"):
        with pytest.raises(APIError) as e:
            with admission.reserve(2, "heavy"):
                pass
        assert e.value.status == 429 and e.value.code == "client_queue_full"
        with admission.reserve(5, "light"):
            assert admission.by_client == {"heavy": 4, "light": 5}
            with pytest.raises(APIError) as e:
                with admission.reserve(2, "third"):
                    pass
            assert e.value.code == "queue_full"  # the server itself is full
        with pytest.raises(APIError) as e:
            with admission.reserve(6, "light"):
                pass
        assert e.value.status == 400  # never fits one client
    assert admission.by_client == {} and admission.in_flight == 0


def test_connection_cap_stays_under_the_open_file_limit():
    assert connection_cap(4096, None) == 4096
    assert connection_cap(4096, 1024) < 1024 - 64
    assert connection_cap(64, 100_000) == 64
    assert connection_cap(64, 10) == 1


class FakeTransport(asyncio.Transport):
    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.closed = False

    def get_extra_info(self, name, default=None):
        return (self.host, 1234) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def test_gate_takes_room_from_the_address_with_most_connections():
    gate = ConnectionGate(ConnectionLimits(max_connections=6, max_per_peer=4, header_timeout=60))
    hog = [FakeTransport("10.0.0.9") for _ in range(5)]
    others = [FakeTransport(f"10.0.0.{i}") for i in (1, 2)]
    assert [gate.admit(t) for t in hog[:4]] == [True] * 4
    assert gate.admit(hog[4]) and hog[0].closed  # its own longest idle makes room
    assert all(gate.admit(t) for t in others) and gate.open == 6
    newcomer = FakeTransport("10.0.0.3")
    gate.received(others[0])
    assert gate.admit(newcomer) and hog[1].closed and not any(t.closed for t in others)
    with gate.busy(newcomer):  # busy connections are never closed to make room
        for t in hog[2:] + others:
            gate.received(t)
        assert not gate.admit(FakeTransport("10.0.0.4"))
    for t in hog + others + [newcomer]:
        gate.release(t)
    assert gate.open == 0 and gate._peers.largest() is None


@pytest.mark.parametrize("folder", ["tiny", "default"])
def test_the_length_bound_never_exceeds_the_real_token_count(folder, tiny_model_dir):
    from engine import DEFAULT_MODEL

    tok = Tokenizer(tiny_model_dir if folder == "tiny" else DEFAULT_MODEL)
    per_token = max_token_bytes(tok)
    assert per_token is not None
    rng = random.Random(0)
    pieces = [p for p in (tok.plain_texts or []) if p] + ["é", "漢", "🐍", " ", "\t", "\n"]
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 300)))
        assert len(tok.encode(text, add_bos=False)) >= -(-len(text) // per_token)
    longest = max((p for p in tok.plain_texts if p), key=len)
    assert len(tok.encode(longest * 50, add_bos=False)) >= -(-len(longest * 50) // per_token)


def test_serve_flags_reach_the_server_config(tmp_path, monkeypatch):
    import argparse

    from fastcodellama.cli import serve as serve_cmd

    parser = argparse.ArgumentParser(prog="fastcodellama")
    serve_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setenv("FASTCODELLAMA_API_KEY", "from-env")
    _, server, _ = serve_cmd.configs(parser.parse_args(["serve", "--model", str(tmp_path)]))
    assert server.api_keys == ("from-env",)
    args = parser.parse_args([
        "serve", "--model", str(tmp_path), "--api-key", "k1", "--api-key", "k2", "--max-connections", "100",
        "--max-connections-per-client", "10", "--header-timeout", "3", "--keepalive-timeout", "4",
        "--body-timeout", "5", "--max-request-tokens", "999", "--client-share", "0.25", "--max-client-labels", "7",
        "--stream-interval", "4"])
    _, server, _ = serve_cmd.configs(args)
    assert server.api_keys == ("k1", "k2")
    assert (server.max_connections, server.max_connections_per_client, server.header_timeout,
            server.keepalive_timeout, server.body_timeout, server.max_request_tokens, server.client_share,
            server.max_client_labels, server.stream_interval) == (100, 10, 3.0, 4.0, 5.0, 999, 0.25, 7, 4)
    with pytest.raises(ValueError, match="stream_interval"):
        serve_cmd.configs(parser.parse_args(["serve", "--model", str(tmp_path), "--stream-interval", "0"]))
