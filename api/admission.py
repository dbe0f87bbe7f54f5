"""Admission control: a bounded number of sequences in the server, counted by samples (n).

The server holds at most `capacity` = max_running + max_queue sequences; a request that would
go beyond gets 429 with Retry-After, and every request gets 503 once shutdown has begun.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator

from api.errors import bad_request, overloaded, shutting_down


class Admission:
    def __init__(self, capacity: int, retry_after: int = 1) -> None:
        self.capacity = capacity
        self.retry_after = retry_after
        self.in_flight = 0  # sequences admitted and not finished
        self.requests = 0  # requests admitted and not finished
        self.shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def reserve(self, num_seqs: int) -> Iterator[None]:
        if self.shutting_down:
            raise shutting_down(self.retry_after)
        if num_seqs > self.capacity:
            raise bad_request(f"The request needs {num_seqs} sequences (prompts x n); this server holds at most "
                              f"{self.capacity} at once.", param="n", code="too_many_sequences")
        if self.in_flight + num_seqs > self.capacity:
            raise overloaded(f"The server is at capacity ({self.in_flight} of {self.capacity} sequences in "
                             f"flight); retry later.", self.retry_after)
        self.in_flight += num_seqs
        self.requests += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= num_seqs
            self.requests -= 1
            if self.requests == 0:
                self._idle.set()

    def begin_shutdown(self) -> None:
        self.shutting_down = True

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight; False if `timeout` seconds pass first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
