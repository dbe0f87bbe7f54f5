"""Admission control: a bounded number of sequences in the server, counted by samples (n).

The server holds at most `capacity` = max_running + max_queue sequences, and one client at most
`client_capacity` of them, so that a heavy client runs into its own limit (429) while the others
still get in. A request that would go beyond gets 429 with Retry-After; one that could never fit
gets 400; every request gets 503 once shutdown has begun.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator

from api.errors import APIError, bad_request, overloaded, shutting_down


class Admission:
    def __init__(self, capacity: int, retry_after: int = 1, client_capacity: int | None = None) -> None:
        self.capacity = capacity
        self.client_capacity = min(capacity, client_capacity if client_capacity is not None else capacity)
        self.retry_after = retry_after
        self.in_flight = 0  # sequences admitted and not finished
        self.requests = 0  # requests admitted and not finished
        self.by_client: dict[str, int] = {}  # sequences in flight per client (clients with none are absent)
        self.shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def reserve(self, num_seqs: int, client: str = "") -> Iterator[None]:
        self._check(num_seqs, client)
        self.in_flight += num_seqs
        self.requests += 1
        self.by_client[client] = self.by_client.get(client, 0) + num_seqs
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= num_seqs
            self.requests -= 1
            left = self.by_client[client] - num_seqs
            if left:
                self.by_client[client] = left
            else:
                del self.by_client[client]
            if self.requests == 0:
                self._idle.set()

    def _check(self, num_seqs: int, client: str) -> None:
        if self.shutting_down:
            raise shutting_down(self.retry_after)
        if num_seqs > self.client_capacity:
            raise bad_request(f"The request needs {num_seqs} sequences (prompts x n); this server holds at most "
                              f"{self.client_capacity} at once for one client.", param="n",
                              code="too_many_sequences")
        if self.in_flight + num_seqs > self.capacity:
            raise overloaded(f"The server is at capacity ({self.in_flight} of {self.capacity} sequences in "
                             f"flight); retry later.", self.retry_after)
        held = self.by_client.get(client, 0)
        if held + num_seqs > self.client_capacity:
            raise _client_full(held, self.client_capacity, self.retry_after)

    def begin_shutdown(self) -> None:
        self.shutting_down = True

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight; False if `timeout` seconds pass first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def _client_full(held: int, limit: int, retry_after: int) -> APIError:
    error = overloaded(f"This client has {held} of its {limit} sequences in flight; retry when some have "
                       f"finished.", retry_after)
    error.code = "client_queue_full"
    return error
