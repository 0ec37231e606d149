"""Route librdkafka's own log lines into the project's logging, without its repetitions.

While a broker is away librdkafka logs the failed connection attempt every few
tens of milliseconds. :func:`client_logger` returns a standard logger (so the
lines come out as structured records, in the service's format) that lets one
line of each shape through per interval and drops the repeats.
"""

from __future__ import annotations

import logging
import re
import threading
import time

__all__ = ["client_logger"]

_DIGITS = re.compile(r"\d+")
_MAX_SHAPES = 1_000


class _RepeatFilter(logging.Filter):
    """Pass one record per message shape (digits ignored) per ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        shape = _DIGITS.sub("#", record.getMessage())[:200]
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(shape)
            if last is not None and now - last < self.interval_s:
                return False
            if len(self._seen) >= _MAX_SHAPES:
                self._seen.clear()
            self._seen[shape] = now
        return True


def client_logger(name: str, *, interval_s: float = 30.0) -> logging.Logger:
    """A logger for a client's ``logger`` setting, with repeats of a line dropped for ``interval_s``."""
    logger = logging.getLogger(name)
    if not any(isinstance(existing, _RepeatFilter) for existing in logger.filters):
        logger.addFilter(_RepeatFilter(interval_s))
    return logger
