"""Gives the heap memory of large request bodies back to the system once they are freed.

glibc keeps freed memory in its heap for reuse, and after a large block has been freed it serves
blocks of that size from the heap rather than from fresh mappings, so a few multi-megabyte bodies
leave the process larger for good. malloc_trim(0) returns the free pages; it runs in a worker
thread (it walks every arena), at most once per `min_interval` seconds, after a request whose
body was at least `LARGE_BODY_BYTES`. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time

LARGE_BODY_BYTES = 1 << 20
SETTLE_S = 0.2  # by then the request, its body and its response are gone


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrimmer:
    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._trim = _malloc_trim()
        self._last = float("-inf")
        self._task: asyncio.Future | None = None

    def after_request(self, body_bytes: int | None) -> None:
        """Called as a request ends: trims soon when its body was large."""
        if self._trim is None or not body_bytes or body_bytes < LARGE_BODY_BYTES:
            return
        if self._task is not None and not self._task.done():
            return
        delay = max(SETTLE_S, self._last + self.min_interval - time.monotonic())
        self._task = asyncio.ensure_future(self._run(delay))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._last = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
