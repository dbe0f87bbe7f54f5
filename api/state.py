"""What every handler of one app shares: the engine, the settings, the metrics, admission."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from engine.async_engine import AsyncEngine

from api.admission import Admission
from api.config import ServerConfig
from api.metrics import ServerMetrics
from api.openapi import build_openapi


@dataclass
class AppState:
    engine: AsyncEngine
    config: ServerConfig
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    admission: Admission = None  # type: ignore[assignment]
    openapi: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    engine_stopped: bool = False

    def __post_init__(self) -> None:
        if self.admission is None:
            capacity = self.engine.config.max_num_seqs + self.config.max_queue
            self.admission = Admission(capacity, self.config.retry_after)
        self.openapi = build_openapi("fastcodellama", "0.1.0", auth=self.config.api_key is not None)

    async def stop_engine(self) -> None:
        if not self.engine_stopped:
            self.engine_stopped = True
            await self.engine.shutdown()


STATE = web.AppKey("state", AppState)
