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

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]
