"""benchmarks/serve_host.py: a real server in its own process streams every token asked for to
every client, and the engine's own rate is measured beside it."""
from __future__ import annotations

import pytest

import serve_host


@pytest.mark.parametrize("route,device_ms", [("completions", 0.0), ("chat", 0.0), ("completions", 5.0)])
def test_every_stream_gets_its_tokens_from_a_server_of_its_own(route, device_ms):
    """(device_ms: each forward also waits as on a device, the GIL released.)"""
    row = serve_host.run(streams=3, tokens=12, route=route, device_ms=device_ms)
    assert row["device_ms"] == device_ms
    # At least one event a stream, at most one a token (a late reader gets several tokens in one).
    assert 3 <= row["events"] <= 3 * 12 + 3 and row["ended"] == 3
    assert row["engine_tokens_per_s"] > 0 and row["server_tokens_per_s"] > 0
    assert row["server_over_engine"] == row["server_tokens_per_s"] / row["engine_tokens_per_s"]
