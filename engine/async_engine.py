"""asyncio front of the engine: streams outputs; the engine steps in a thread of its own.

Only the engine's thread touches the engine. Requests and aborts are queued under a lock and
applied at the next step boundary. The thread steps as long as there is work, never waiting on
the event loop: after each step it hands the loop the step's outputs in one callback, which keeps
each request's latest output (outputs are cumulative) and wakes its consumer. A consumer that
falls behind (hundreds of streams, each with its chunk to build and its socket to write) gets the
tokens of several steps at its next wake-up, so that the streams' work shrinks as they fall behind
instead of holding the engine back.
"""
from __future__ import annotations

import asyncio
import logging
import threading
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
    client: str | None = None
    prediction: str | list[int] | None = None


@dataclass
class _Stream:
    """One request's mailbox on the event loop: its latest output (the outputs of steps its
    consumer has not read yet replaced by the latest), or its error; `ready` is set as either
    comes, and when the engine takes the request."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    latest: RequestOutput | None = None
    error: BaseException | None = None


class AsyncEngine:
    def __init__(self, config: EngineConfig | None = None, proposer: Proposer | None = None,
                 engine: LLMEngine | None = None) -> None:
        self.engine = engine or LLMEngine(config or EngineConfig(), proposer=proposer)
        self.config = self.engine.config
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self.model_name = self.engine.config.model
        self._lock = threading.Lock()
        self._work = threading.Event()  # set with every add, abort and stop
        self._adds: list[_Add] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._dead: BaseException | None = None  # what stopped the engine's thread, if anything did

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._serve, name="engine-step", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        self._stopped = True
        self._work.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._abort_all()  # the thread has ended: nothing else touches the engine
        with self._lock:
            self._adds = []
        self._fail_all(EngineDeadError("engine shut down"))

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ requests
    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                       client: str | None = None,
                       prediction: str | list[int] | None = None) -> AsyncIterator[RequestOutput]:
        """Cumulative outputs of one request; the last has finished=True. A consumer that reads
        slower than the engine steps gets the latest output at each read (tokens of several steps).
        `client` names who asks (an API key, a peer address): the engine shares its sequence slots
        fairly between clients. `prediction`: what the client expects the output to be; drafts are
        copied from it, and the output stays what it would be without it.

        Raises ValueError for an invalid request before yielding anything. If the
        consumer stops early (client gone, task cancelled) the request is aborted.
        """
        if self._stopped:
            raise EngineDeadError("engine is shutting down")
        if self._dead is not None:
            raise EngineDeadError(f"the engine loop has stopped: {self._dead}")
        if not self.is_running:
            await self.start()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already running")
        stream = self._streams[request_id] = _Stream()
        with self._lock:
            self._adds.append(_Add(request_id, prompt, params, client, prediction))
        self._work.set()
        finished = False
        try:
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                if stream.error is not None:
                    raise stream.error  # the engine's ValueError for a bad request, or a failed step's
                out, stream.latest = stream.latest, None
                if out is None:  # accepted, nothing out yet
                    continue
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
        self._work.set()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # ------------------------------------------------------------------ the engine's thread
    def _serve(self) -> None:
        """Steps while there is work, handing each step's outputs to the event loop; waits for
        work otherwise."""
        try:
            while not self._stopped:
                self._work.clear()
                if not self._has_pending() and not self.engine.has_unfinished():
                    self._work.wait()
                    continue
                results, accepted = self._step()
                self._loop.call_soon_threadsafe(self._deliver, results, accepted)
        except BaseException as e:  # noqa: BLE001 - never die silently: every stream learns of it
            if self._loop.is_closed():
                return  # its event loop has gone (a test's or a script's): nobody is listening
            log.exception("the engine loop stopped")
            self._dead = e
            try:
                self._loop.call_soon_threadsafe(self._fail_all, EngineDeadError(f"the engine loop stopped: {e}"))
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _deliver(self, results: list, accepted: list[tuple[str, BaseException | None]]) -> None:
        """On the event loop: a step's adds taken or refused, its outputs and failures, each to
        its request's stream (gone where its consumer left)."""
        for request_id, error in accepted:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.error = error
                stream.ready.set()
        for item in results:
            failed = not isinstance(item, RequestOutput)
            stream = self._streams.get(item[0] if failed else item.request_id)
            if stream is None:
                continue
            if failed:
                stream.error = item[1]
            else:
                stream.latest = item
            stream.ready.set()

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.error = error
            stream.ready.set()

    def _has_pending(self) -> bool:
        with self._lock:
            return bool(self._adds or self._aborts)

    def _step(self) -> tuple[list, list[tuple[str, BaseException | None]]]:
        """Applies queued adds/aborts, then runs one engine step."""
        with self._lock:
            adds, self._adds = self._adds, []
            aborts, self._aborts = self._aborts, []
        accepted: list[tuple[str, BaseException | None]] = []
        for request_id in aborts:
            try:
                self.engine.abort(request_id)
            except Exception:  # noqa: BLE001 - an abort must never stop the loop
                log.exception("abort of %s failed", request_id)
        for add in adds:
            if add.request_id in aborts:
                accepted.append((add.request_id, None))
                continue
            try:
                self.engine.add_request(add.request_id, add.prompt, add.params, client=add.client,
                                        prediction=add.prediction)
                accepted.append((add.request_id, None))
            except Exception as e:  # noqa: BLE001 - a bad request fails alone
                accepted.append((add.request_id, e if isinstance(e, ValueError) else ValueError(str(e))))
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
