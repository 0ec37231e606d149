"""Hand final reports to observers (metrics, OpenSearch, progress) on a thread of their own.

Observers run after the source was acknowledged and can neither fail nor slow the
engine (ARCHITECTURE, invariant 3): the loop only appends a batch's reports to a
bounded queue. A background thread calls each observer in order, catching and
logging whatever one raises. If observers fall so far behind that the queue is
full, the loop waits for room rather than drop reports, so the metrics keep
counting every event exactly once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from ingestd.log import get_logger
from ingestd.work import EventReport

__all__ = ["Observer", "ObserverDispatcher"]

logger = get_logger(__name__)

Observer = Callable[[Sequence[EventReport]], None]
"""Receives the final reports of each acknowledged batch; must not block for long."""

_STOP = object()


class ObserverDispatcher:
    """Call ``observers`` with each batch of reports, on a background thread.

    Parameters
    ----------
    observers
        Called in order with every batch.
    max_pending_batches
        Batches waiting before :meth:`submit` blocks.
    """

    def __init__(self, observers: Sequence[Observer], *, max_pending_batches: int = 64) -> None:
        self.observers = list(observers)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending_batches)
        self._thread: threading.Thread | None = None
        self.failures = 0

    def start(self) -> ObserverDispatcher:
        """Start the thread (idempotent)."""
        if self._thread is None and self.observers:
            self._thread = threading.Thread(target=self._run, name="observers", daemon=True)
            self._thread.start()
        return self

    def submit(self, reports: Sequence[EventReport]) -> None:
        """Queue ``reports`` for every observer (waits only when the queue is full)."""
        if not self.observers or not reports:
            return
        if self._thread is None:
            self.start()
        self._queue.put(list(reports))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                assert isinstance(item, list)
                self._deliver(item)
            finally:
                self._queue.task_done()

    def _deliver(self, reports: list[EventReport]) -> None:
        for observer in self.observers:
            try:
                observer(reports)
            except Exception:  # monitoring never fails ingest
                self.failures += 1
                logger.exception(
                    "observer_failed", observer=getattr(observer, "__qualname__", repr(observer))
                )

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (for at most ``timeout_s``), then stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            logger.warning("observers_behind_at_close", pending=self._queue.qsize())
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("observers_not_drained", pending=self._queue.qsize())
        self._thread = None
