"""What the server writes to its log under attack: repeated lines rate-limited, and a malformed
HTTP request as one INFO line instead of an ERROR with a traceback."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from aiohttp.http_exceptions import HttpProcessingError

_DIGITS = re.compile(r"\d+")
_MAX_KEYS = 4096


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Lets at most `burst` records of one kind through per `period` seconds; the first record let
    through afterwards says how many were dropped. A kind is (logger, level, message template),
    the template being the format string, or for preformatted messages their first line with
    numbers masked (asyncio's accept errors name a file descriptor each time)."""

    def __init__(self, burst: int = 5, period: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._clock = clock
        self._windows: dict[tuple, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = (record.name, record.levelno, _template(record))
        window = self._windows.get(key)
        if window is None or now - window.start >= self.period:
            suppressed = window.suppressed if window is not None else 0
            if window is None and len(self._windows) >= _MAX_KEYS:
                self._forget(now)
            window = self._windows[key] = _Window(now)
            if suppressed:
                record.msg = f"{record.getMessage()} [{suppressed} similar lines suppressed]"
                record.args = None
        if window.passed >= self.burst:
            window.suppressed += 1
            return False
        window.passed += 1
        return True

    def _forget(self, now: float) -> None:
        """Drops windows that have ended (their suppressed counts are lost: bounded memory wins)."""
        self._windows = {k: w for k, w in self._windows.items() if now - w.start < self.period}


def _template(record: logging.LogRecord) -> str:
    if record.args:
        return str(record.msg)
    return _DIGITS.sub("#", str(record.msg).split("\n", 1)[0])[:200]


def limit_repeats(logger: logging.Logger, burst: int = 5, period: float = 10.0) -> RepeatFilter:
    """Puts a RepeatFilter on each of `logger`'s handlers (so it sees what every child logger
    propagates to them), except that aiohttp's access log keeps every line."""
    repeat = RepeatFilter(burst, period)
    access = logging.getLogger("aiohttp.access")

    def keep(record: logging.LogRecord) -> bool:
        return record.name == access.name or repeat.filter(record)

    for handler in logger.handlers:
        handler.addFilter(keep)
    return repeat


class ProtocolLogger(logging.LoggerAdapter):
    """aiohttp's per-connection logger: a request that is not valid HTTP is the client's error, so
    it is one INFO line; anything else is logged as aiohttp means it."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        if isinstance(exc_info, HttpProcessingError):
            peer = args[0] if args else "?"
            self.info("malformed HTTP request from %s: %s", peer, _one_line(exc_info))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
