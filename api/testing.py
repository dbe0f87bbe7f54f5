"""A live server inside the running event loop, for tests and for embedding."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web

from engine.async_engine import AsyncEngine

from api.config import ServerConfig
from api.server import create_app, start_site
from api.state import STATE, AppState


@dataclass
class RunningServer:
    app: web.Application
    url: str  # http://host:port

    @property
    def state(self) -> AppState:
        return self.app[STATE]


@contextlib.asynccontextmanager
async def running_server(engine: AsyncEngine, config: ServerConfig) -> AsyncIterator[RunningServer]:
    """Serves `engine` on config.host:config.port (0: a free port) until the block exits; then the
    same graceful shutdown as on SIGTERM (in-flight requests get config.shutdown_grace seconds)."""
    app = create_app(engine, config)
    runner, host, port = await start_site(app, config.host, config.port, access_log=False)
    try:
        yield RunningServer(app, f"http://{host}:{port}")
    finally:
        await runner.cleanup()


async def wait_idle(session, url: str, timeout: float = 10.0) -> dict:
    """Polls GET {url}/health until no sequence is in flight and every KV block is free.

    Returns the last health object; raises TimeoutError (with it) if that does not happen in time.
    """
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        async with session.get(f"{url}/health") as r:
            health = await r.json()
        if (health["kv_blocks_free"] == health["kv_blocks_total"] and health["in_flight_sequences"] == 0
                and health["running"] == 0 and health["waiting"] == 0):
            return health
        await asyncio.sleep(0.05)
    raise TimeoutError(f"server not idle after {timeout} s: {health}")


def sse_events(body: str) -> list[str]:
    """The data of each server-sent event of a whole body; checks the framing on the way."""
    assert body.endswith("\n\n"), f"an SSE body ends with a blank line: {body[-40:]!r}"
    events = []
    for block in body[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, f"bad SSE event {block[:80]!r}"
        events.append(block[len("data: "):])
    return events


def typed_sse_events(body: str) -> list[dict]:
    """The JSON data of each `event: NAME` server-sent event of a whole body (Anthropic's and the
    Responses API's framing); checks that each names its data's type."""
    assert body.endswith("\n\n"), f"an SSE body ends with a blank line: {body[-40:]!r}"
    events = []
    for block in body[:-2].split("\n\n"):
        head, _, data = block.partition("\n")
        assert data.startswith("data: ") and "\n" not in data, f"bad SSE event {block[:80]!r}"
        events.append(json.loads(data[len("data: "):]))
        assert head == f"event: {events[-1]['type']}", head
    return events
