"""What every handler of one app shares: the engine, the settings, the metrics, admission,
connections, prompt tokenization and who the clients are."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from engine.async_engine import AsyncEngine

from api.admission import Admission
from api.chat_template import ChatTemplate, load_chat_template
from api.clients import ClientKeys, ClientLabels
from api.config import ServerConfig
from api.connections import ConnectionGate, ConnectionLimits
from api.memory import MemoryTrimmer
from api.metrics import ServerMetrics
from api.openapi import build_openapi
from api.prompts import PromptTokenizer

log = logging.getLogger(__name__)


@dataclass
class AppState:
    engine: AsyncEngine
    config: ServerConfig
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    admission: Admission = None  # type: ignore[assignment]
    connections: ConnectionGate = None  # type: ignore[assignment]
    prompts: PromptTokenizer = None  # type: ignore[assignment]
    clients: ClientKeys = None  # type: ignore[assignment]
    client_labels: ClientLabels = None  # type: ignore[assignment]
    memory: MemoryTrimmer = field(default_factory=MemoryTrimmer)
    openapi: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    engine_stopped: bool = False
    chat_template: ChatTemplate | None = None  # loaded at start-up (load_chat_template)
    chat_template_error: str = "not loaded"  # why there is none, for the 400 of a chat request

    def __post_init__(self) -> None:
        c = self.config
        if self.admission is None:
            capacity = self.engine.config.max_num_seqs + c.max_queue
            self.admission = Admission(capacity, c.retry_after, client_capacity=max(1, int(capacity * c.client_share)))
        if self.connections is None:
            limits = ConnectionLimits(c.max_connections, c.max_connections_per_client, c.header_timeout)
            events = self.metrics.connection_events
            self.connections = ConnectionGate(limits, lambda event: events.labels(event).inc())
        if self.prompts is None:
            self.prompts = PromptTokenizer(self.engine.tokenizer, self.engine.max_model_len)
        self.clients = self.clients or ClientKeys(c.api_keys)
        self.client_labels = self.client_labels or ClientLabels(c.max_client_labels)
        self.openapi = build_openapi("fastcodellama", "0.1.0", auth=c.api_key is not None)

    def client_in_flight(self) -> dict[str, int]:
        """Sequences in flight per client label."""
        out: dict[str, int] = {}
        for client, seqs in self.admission.by_client.items():
            label = self.client_labels(client)
            out[label] = out.get(label, 0) + seqs
        return out

    async def load_chat_template(self) -> None:
        """The model's chat template (api/chat_template.py), read in the tokenizer's worker."""
        try:
            self.chat_template = await self.prompts.run(0, lambda: load_chat_template(self.engine.tokenizer))
        except Exception as e:  # noqa: BLE001 - a broken template costs chat alone, never the server
            log.error("the model's chat template cannot be used: %s", e)
            self.chat_template_error = f"its chat template cannot be used: {e}"
            return
        if self.chat_template is None:
            self.chat_template_error = ("it has no chat template (no chat_template.jinja, no chat_template in "
                                        "tokenizer_config.json) and is not a Llama-tokenizer model, which would "
                                        "get CodeLlama-Instruct's [INST] format")
        else:
            log.info("chat template: %s", self.chat_template.origin)

    async def stop_engine(self) -> None:
        if not self.engine_stopped:
            self.engine_stopped = True
            await self.engine.shutdown()


STATE = web.AppKey("state", AppState)
