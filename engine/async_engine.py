"""asyncio front of the engine: streams outputs; model steps run in a worker thread.

Only the worker thread touches the engine. Requests and aborts are queued under a
lock and applied at the next step boundary; outputs come back to the event loop,
which routes them to per-request queues.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator

from engine.config import EngineConfig
from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import RequestOutput
from engine.proposer import Proposer
from engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


@dataclass
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    accepted: asyncio.Future = field(repr=False)
    client: str | None = None
    prediction: str | list[int] | None = None


class AsyncEngine:
    def __init__(self, config: EngineConfig | None = None, proposer: Proposer | None = None,
                 engine: LLMEngine | None = None) -> None:
        self.engine = engine or LLMEngine(config or EngineConfig(), proposer=proposer)
        self.config = self.engine.config
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self.model_name = self.engine.config.model
        self._lock = threading.Lock()
        self._adds: list[_Add] = []
        self._aborts: list[str] = []
        self._queues: dict[str, asyncio.Queue] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-step")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="engine-loop")

    async def shutdown(self) -> None:
        self._stopped = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._abort_all)
        with self._lock:
            adds, self._adds = self._adds, []
        for add in adds:
            if not add.accepted.done():
                add.accepted.set_exception(EngineDeadError("engine shut down"))
        for queue in self._queues.values():
            queue.put_nowait(EngineDeadError("engine shut down"))
        self._executor.shutdown(wait=True)

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ requests
    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                       client: str | None = None,
                       prediction: str | list[int] | None = None) -> AsyncIterator[RequestOutput]:
        """Cumulative outputs of one request; the last has finished=True. `client` names who asks
        (an API key, a peer address): the engine shares its sequence slots fairly between clients.
        `prediction`: what the client expects the output to be; drafts are copied from it, and
        the output stays what it would be without it.

        Raises ValueError for an invalid request before yielding anything. If the
        consumer stops early (client gone, task cancelled) the request is aborted.
        """
        if self._stopped:
            raise EngineDeadError("engine is shutting down")
        if self._task is not None and self._task.done():
            raise EngineDeadError("the engine loop has stopped")
        if not self.is_running:
            await self.start()
        loop = asyncio.get_running_loop()
        add = _Add(request_id, prompt, params, loop.create_future(), client, prediction)
        queue: asyncio.Queue = asyncio.Queue()
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already running")
        self._queues[request_id] = queue
        with self._lock:
            self._adds.append(add)
        self._wake.set()
        finished = False
        try:
            await add.accepted  # raises the engine's ValueError for a bad request
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
        if self._wake is not None:
            self._wake.set()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            if not self._has_pending() and not self.engine.has_unfinished():
                self._wake.clear()
                if not self._has_pending():
                    await self._wake.wait()
                continue
            results, failures = await loop.run_in_executor(self._executor, self._step)
            for add, error in failures:
                if not add.accepted.done():
                    add.accepted.set_exception(error) if error else add.accepted.set_result(None)
            for item in results:
                queue = self._queues.get(item.request_id if isinstance(item, RequestOutput) else item[0])
                if queue is not None:
                    queue.put_nowait(item if isinstance(item, RequestOutput) else item[1])

    def _has_pending(self) -> bool:
        with self._lock:
            return bool(self._adds or self._aborts)

    def _step(self):
        """Runs in the worker thread: apply queued adds/aborts, then one engine step."""
        with self._lock:
            adds, self._adds = self._adds, []
            aborts, self._aborts = self._aborts, []
        accepted = []
        for request_id in aborts:
            try:
                self.engine.abort(request_id)
            except Exception:  # noqa: BLE001 - an abort must never stop the loop
                log.exception("abort of %s failed", request_id)
        for add in adds:
            if add.request_id in aborts:
                accepted.append((add, None))
                continue
            try:
                self.engine.add_request(add.request_id, add.prompt, add.params, client=add.client,
                                        prediction=add.prediction)
                accepted.append((add, None))
            except Exception as e:  # noqa: BLE001 - a bad request fails alone
                accepted.append((add, e if isinstance(e, ValueError) else ValueError(str(e))))
        results: list = []
        if self.engine.has_unfinished():
            try:
                results = self.engine.step(collect="all")
            except Exception as e:  # noqa: BLE001 - fail the step's requests, keep serving the rest
                log.exception("engine step failed")
                results = self._fail_running(e)
        return results, accepted

    def _fail_running(self, error: Exception) -> list:
        """The requests of the step that raised end with the error (their blocks freed); the
        others go on. When the failure came before any request was in the step, all end."""
        failed = []
        culprits = self.engine.step_requests & set(self.engine.requests) or set(self.engine.requests)
        for request_id in culprits:
            try:
                self.engine.abort(request_id)
            except Exception:  # noqa: BLE001
                log.exception("abort of %s failed", request_id)
            failed.append((request_id, RuntimeError(f"request failed inside the engine: {error}")))
        return failed

    def _abort_all(self) -> None:
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
