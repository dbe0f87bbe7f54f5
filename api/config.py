"""Server settings (the engine's own live in engine.EngineConfig)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP side behaves.

    served_model_names: the first is the name clients see; all are accepted in `model` and in
        Copilot's /v1/engines/{engine} path.
    max_queue: sequences (a request with n samples counts n) allowed to wait beyond the engine's
        max_num_seqs running ones; beyond that a request gets 429.
    request_timeout: seconds a request may take from arrival to its last token (None: no limit).
    shutdown_grace: seconds in-flight requests get to finish after SIGTERM before they are aborted.
    api_key, extra_api_keys: the keys accepted (none: no auth). With more than one key each key names
        its own client for fair sharing; with one (shared) key or none, clients are told apart by address.

    Connections: at most max_connections open (fewer if the open-file limit says so), at most
    max_connections_per_client from one address; past a cap the oldest idle connection in its scope
    is closed, else the new one. A new connection has header_timeout seconds to send its first
    request's headers, an idle keep-alive connection lives keepalive_timeout seconds, and a body
    must arrive within body_timeout seconds.

    Fair use: one request may ask for at most max_request_tokens tokens (prompts x n x max_tokens);
    one client may hold at most client_share of the admission capacity (then 429 for that client
    only); /metrics names at most max_client_labels clients, the rest count as "other".

    stream_interval: a streamed answer sends an event once its samples have written at least this
        many tokens since its last one (its first and its last go out at once): fewer, larger events
        for many streams at once, where each costs the host its socket write.
    """

    served_model_names: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue: int = 512
    request_timeout: float | None = 600.0
    shutdown_grace: float = 30.0
    max_body_bytes: int = 8 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    retry_after: int = 1
    extra_api_keys: tuple[str, ...] = ()
    max_connections: int = 4096
    max_connections_per_client: int = 256
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    body_timeout: float = 30.0
    max_request_tokens: int = 65536
    client_share: float = 0.5
    max_client_labels: int = 32
    stream_interval: int = 1

    def __post_init__(self) -> None:
        if not self.served_model_names or not all(self.served_model_names):
            raise ValueError("served_model_names needs at least one non-empty name")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (None: no key)")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError("request_timeout must be > 0 (or None for no limit)")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must be >= 0")
        if any(not k.strip() for k in self.extra_api_keys) or (self.extra_api_keys and self.api_key is None):
            raise ValueError("extra_api_keys must be non-empty and need api_key")
        if self.max_connections < 1 or self.max_connections_per_client < 1:
            raise ValueError("max_connections and max_connections_per_client must be >= 1")
        if min(self.header_timeout, self.keepalive_timeout, self.body_timeout) <= 0:
            raise ValueError("header_timeout, keepalive_timeout and body_timeout must be > 0")
        if self.max_request_tokens < 1:
            raise ValueError("max_request_tokens must be >= 1")
        if not 0.0 < self.client_share <= 1.0:
            raise ValueError("client_share must be in (0, 1]")
        if self.max_client_labels < 0:
            raise ValueError("max_client_labels must be >= 0")
        if self.stream_interval < 1:
            raise ValueError("stream_interval must be >= 1")

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def api_keys(self) -> tuple[str, ...]:
        return ((self.api_key,) + self.extra_api_keys) if self.api_key is not None else ()
