"""Open connections: how many, from whom, and for how long (issue #21 item 6).

Each accepted socket goes through a ConnectionGate before aiohttp sees it. Past one address's
cap the gate closes that address's connection that has been idle longest (silent: no request in
progress and no byte of the next one received); past the server's cap, the longest idle one of
the address holding the most connections. If none is idle, the new socket gets a 503 and is
closed at once. So idle sockets cannot lock others out, nor use up the process's open files: the
cap stays below the open-file limit, which `serve` raises to the hard limit. A new connection
that has not sent its first request's headers within header_timeout is closed; aiohttp's
keepalive_timeout closes idle ones between requests.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from aiohttp import web

from api.clients import peer_key

FD_RESERVE = 64  # open files kept for everything but client sockets (model files, logs, pipes)
# Sockets asyncio accepts in one go, before the gate sees (and closes) any of them; the listen backlog.
ACCEPT_BATCH = 128
_REFUSED_BODY = (b'{"error": {"message": "Too many open connections; retry later.", "type": "server_error", '
                 b'"param": null, "code": "too_many_connections"}}')
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY))


def open_file_limit() -> int | None:
    """This process's soft limit on open files (None: none, or not POSIX)."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit() -> int | None:
    """Raises this process's soft limit on open files to the hard one; returns the soft limit now."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # an infinite hard limit some systems refuse
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return open_file_limit()


def connection_cap(configured: int, open_file_limit: int | None) -> int:
    """The connections the server may hold: the configured cap, kept under the open-file limit
    with room for a batch of just-accepted sockets and a batch being closed."""
    if open_file_limit is None:
        return configured
    return max(1, min(configured, open_file_limit - FD_RESERVE - 2 * ACCEPT_BATCH))


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_per_peer: int
    header_timeout: float


@dataclass
class _Conn:
    peer: str
    busy: int = 0  # requests in progress
    started: bool = False  # a request has begun
    receiving: bool = False  # bytes of a request have come in since the last one ended
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


Counter = Callable[[str], None]


class _Peers:
    """Open connections per peer address, each peer's in idle order, and which peer holds most."""

    def __init__(self) -> None:
        self.conns: dict[str, dict[asyncio.Transport, None]] = {}
        self._by_count: dict[int, set[str]] = {}
        self._most = 0

    def add(self, peer: str, transport: asyncio.Transport) -> None:
        same = self.conns.setdefault(peer, {})
        same[transport] = None
        self._recount(peer, len(same) - 1, len(same))

    def remove(self, peer: str, transport: asyncio.Transport) -> None:
        same = self.conns[peer]
        del same[transport]
        if not same:
            del self.conns[peer]
        self._recount(peer, len(same) + 1, len(same))

    def touch(self, peer: str, transport: asyncio.Transport) -> None:
        same = self.conns[peer]
        del same[transport]
        same[transport] = None

    def largest(self) -> str | None:
        peers = self._by_count.get(self._most)
        return next(iter(peers)) if peers else None

    def _recount(self, peer: str, old: int, new: int) -> None:
        if old:
            bucket = self._by_count[old]
            bucket.discard(peer)
            if not bucket:
                del self._by_count[old]
                if self._most == old and new < old:
                    self._most = new  # the peer itself is in bucket `new` (or no peer is left)
        if new:
            self._by_count.setdefault(new, set()).add(peer)
            self._most = max(self._most, new)


class ConnectionGate:
    """Counts open connections and decides, per new socket, whether it may stay. At the server's
    cap the idle connection to close is taken from the address holding the most connections, so
    that one address's crowd of sockets costs that address its own, not others theirs."""

    def __init__(self, limits: ConnectionLimits, count: Counter = lambda event: None) -> None:
        self.limits = limits
        self._count = count  # events: refused_server, refused_peer, evicted_idle, header_timeout
        # In order of last activity (connect, request start or end): longest idle first.
        self._conns: dict[asyncio.Transport, _Conn] = {}
        self._peers = _Peers()

    @property
    def open(self) -> int:
        return len(self._conns)

    def protocol(self, make_handler: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        """The protocol for one accepted socket (asyncio's protocol factory calls this)."""
        return _GatedProtocol(self, make_handler)

    @contextlib.contextmanager
    def busy(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """Marks the connection as handling a request (not idle, so not evictable)."""
        conn = self._conns.get(transport) if transport is not None else None  # type: ignore[arg-type]
        if conn is None:
            yield
            return
        conn.busy += 1
        conn.started = True
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self._touch(transport, conn)
        try:
            yield
        finally:
            conn.busy -= 1
            conn.receiving = False
            if self._conns.get(transport) is conn:
                self._touch(transport, conn)

    def received(self, transport: asyncio.Transport) -> None:
        """Bytes came in: the connection is not idle (one sending headers slowly has header_timeout)."""
        conn = self._conns.get(transport)
        if conn is not None:
            conn.receiving = True

    def _touch(self, transport: asyncio.Transport, conn: _Conn) -> None:
        """Moves the connection to the end of the idle order."""
        del self._conns[transport]
        self._conns[transport] = conn
        self._peers.touch(conn.peer, transport)

    # ------------------------------------------------------------------ lifecycle
    def admit(self, transport: asyncio.Transport) -> bool:
        peer = peer_key(_host(transport))
        same_peer = self._peers.conns.get(peer, {})
        if len(same_peer) >= self.limits.max_per_peer and not self._evict_idle(same_peer):
            self._count("refused_peer")
            return False
        if len(self._conns) >= self.limits.max_connections and not self._evict_for_room():
            self._count("refused_server")
            return False
        conn = self._conns[transport] = _Conn(peer)
        self._peers.add(peer, transport)
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(self.limits.header_timeout, self._header_deadline, transport)
        return True

    def release(self, transport: asyncio.Transport) -> None:
        conn = self._conns.pop(transport, None)
        if conn is None:
            return
        if conn.timer is not None:
            conn.timer.cancel()
        self._peers.remove(conn.peer, transport)

    def _evict_for_room(self) -> bool:
        largest = self._peers.largest()
        if largest is not None and self._evict_idle(self._peers.conns[largest]):
            return True
        return self._evict_idle(self._conns)

    def _evict_idle(self, scope: dict) -> bool:
        """Closes the longest idle connection of `scope`; False if none is idle."""
        for transport in scope:
            conn = self._conns[transport]
            if not conn.busy and not conn.receiving:
                self.release(transport)
                transport.close()
                self._count("evicted_idle")
                return True
        return False

    def _header_deadline(self, transport: asyncio.Transport) -> None:
        conn = self._conns.get(transport)
        if conn is not None and not conn.started:
            conn.timer = None
            self.release(transport)
            transport.abort()
            self._count("header_timeout")


def _host(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) and peer else None


class _GatedProtocol(asyncio.Protocol):
    """Stands in front of aiohttp's protocol: made only for a socket the gate lets in."""

    def __init__(self, gate: ConnectionGate, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self._gate = gate
        self._make_handler = make_handler
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._gate.admit(transport):
            transport.write(REFUSED)
            transport.close()
            return
        self._transport = transport
        self._inner = self._make_handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._gate.received(self._transport)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._gate.release(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None


class GatedTCPSite(web.BaseSite):
    """aiohttp's TCPSite with every accepted socket going through a ConnectionGate."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate,
                 backlog: int = ACCEPT_BATCH) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._gate = gate

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: self._gate.protocol(server), self._host, self._port,
                                                backlog=self._backlog)
