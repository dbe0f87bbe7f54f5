"""Who asks: the key that fair sharing, admission and /metrics count a request against.

With several API keys configured, the key a request passed auth with names its client (as a
short hash: keys are never logged or shown). Otherwise the peer address does: one shared key,
or a bearer token nobody checks, cannot tell clients apart, and an unchecked token could be
changed on every request to dodge the per-client limits. IPv6 peers count by their /64, the
block one host usually holds.
"""
from __future__ import annotations

import hashlib
import ipaddress

OTHER = "other"


def peer_key(host: str | None) -> str:
    """The address a connection or request counts against ("unknown" without one)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_loopback:
            return str(ip)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def key_label(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class ClientKeys:
    """Maps a request's credentials and peer to its client key."""

    def __init__(self, api_keys: tuple[str, ...]) -> None:
        # One key is shared by everyone who has it: only several keys tell clients apart.
        self._by_digest = {_digest(k): key_label(k) for k in api_keys} if len(api_keys) > 1 else {}

    def client_of(self, authorization: str | None, remote: str | None) -> str:
        if self._by_digest and authorization:
            _, _, token = authorization.partition(" ")
            label = self._by_digest.get(_digest(token.strip()))
            if label is not None:
                return label
        return "ip-" + peer_key(remote)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ClientLabels:
    """Metric labels for client keys: the first `limit` distinct clients get their own, the rest
    share "other", so that a flood of addresses cannot grow /metrics without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._labels: dict[str, str] = {}

    def __call__(self, client: str) -> str:
        label = self._labels.get(client)
        if label is None:
            if len(self._labels) >= self.limit:
                return OTHER
            label = self._labels[client] = client
        return label
