"""The event-document sink: a bounded buffer in front of OpenSearch, drained by one background thread.

Monitoring observes ingest and never holds it up (ARCHITECTURE rule 3). So
:meth:`EventSink.submit` only appends report objects to an in-memory buffer
under a lock (O(1) per report, no I/O, no serialisation) and never raises; a
daemon thread turns reports into documents and bulk-indexes them.

When OpenSearch is slow or away the buffer fills; past ``buffer_size`` the
*oldest* documents are dropped (the newest say most about the present state,
and a bulk that failed goes back to the front of the buffer, so one rule covers
both) and counted as ``ingestd_opensearch_documents_total{result="dropped"}``.
An unreachable cluster is probed with capped exponential backoff until it
returns; then the buffer drains and documents resume. Documents OpenSearch
refuses (mapping error, 4xx) are counted ``failed`` and logged once per bulk;
those refused with a retriable status (429, 5xx) are retried a few times first.

Every document has a deterministic id, so a bulk retried after a timeout that
OpenSearch had in fact applied overwrites instead of duplicating.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from ingestd.log import get_logger
from ingestd.work import EventReport
from monitoring.metrics import DocumentResult, IngestMetrics

from ._documents import PreparedDocument, bulk_body, prepare
from ._settings import OpenSearchSettings
from ._template import install_template, make_client

__all__ = ["EventSink", "NullSink", "Sink", "SinkStats", "make_sink"]

logger = get_logger(__name__)

RETRIABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
"""Whole-request HTTP statuses that mean "come back later", like an unreachable cluster."""
_BULK_RESPONSE_FIELDS: Final = "errors,items.*.status,items.*.error"
"""``filter_path`` of bulk requests: per item only what settling reads (not index, id, version, shards)."""


class Sink(Protocol):
    """What the engine needs of an event sink: start, submit without blocking, close."""

    def start(self) -> None:
        """Start background work (no-op for a sink without any)."""

    def submit(self, reports: Sequence[EventReport]) -> None:
        """Hand over final reports; never blocks on I/O, never raises."""

    def close(self, timeout_s: float) -> None:
        """Flush what can be flushed within ``timeout_s`` and stop."""


class NullSink:
    """The sink when OpenSearch is not configured: accepts reports and does nothing."""

    def start(self) -> None:
        """Nothing to start."""

    def submit(self, reports: Sequence[EventReport]) -> None:
        """Discard ``reports``: no OpenSearch, no documents (metrics still count the events)."""

    def close(self, timeout_s: float) -> None:
        """Nothing to flush."""


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one sink since it was built (the Prometheus counters say the same)."""

    submitted: int
    indexed: int
    failed: int
    dropped: int
    buffered: int
    reachable: bool
    """Whether the last request reached OpenSearch."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A prepared document and how many times OpenSearch refused it with a retriable status."""

    document: PreparedDocument
    attempts: int = 0


_Item = EventReport | _Pending


class _UnreachableError(Exception):
    """OpenSearch could not take the request now (connection refused, timeout, 429/5xx)."""


class EventSink:
    """Bulk-index one document per event into daily indices, in a background thread.

    Parameters
    ----------
    settings
        Where OpenSearch is, buffer and retry sizes.
    metrics
        The daemon's metrics; the sink updates ``opensearch_documents`` and
        ``opensearch_buffered``.
    client
        An ``opensearchpy.OpenSearch`` client; built from ``settings`` when omitted.
    host, version
        Written into every document; default to this host and the installed version.
    clock
        Returns the current UTC time (tests pass a fixed clock).
    """

    def __init__(
        self,
        settings: OpenSearchSettings,
        metrics: IngestMetrics,
        *,
        client: Any | None = None,
        host: str | None = None,
        version: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client = client if client is not None else make_client(settings)
        self._host = host if host is not None else socket.gethostname()
        if version is None:
            from ingestd import __version__ as version
        self._version = version
        self._clock = clock
        self._buffer: deque[_Item] = deque(maxlen=settings.buffer_size)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._in_flight = False
        """A batch is out of the buffer, being sent; its documents may be requeued."""
        self._template_ready = not settings.manage_template
        self._reachable = True
        self._backoff_s = settings.retry_backoff_s
        self._counts = dict.fromkeys(("submitted", "indexed", "failed", "dropped"), 0)

    # -- the engine's side ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the background flusher (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="opensearch-sink", daemon=True)
        self._thread.start()

    def submit(self, reports: Sequence[EventReport]) -> None:
        """Buffer ``reports`` for indexing; O(1) per report, never blocks on I/O, never raises.

        When the buffer is full the oldest waiting documents are dropped and counted.
        """
        try:
            count = len(reports)
            if count == 0:
                return
            with self._lock:
                if self._closed:
                    dropped = count
                else:
                    dropped = max(0, len(self._buffer) + count - self.settings.buffer_size)
                    self._buffer.extend(reports)
                self._counts["submitted"] += count
                self._counts["dropped"] += dropped
                buffered = len(self._buffer)
            if dropped:
                self.metrics.opensearch_documents.labels(result=DocumentResult.dropped.value).inc(dropped)
            self.metrics.opensearch_buffered.set(buffered)
            if buffered >= self.settings.flush_size:
                self._wake.set()
        except Exception:  # monitoring must never fail ingest
            logger.exception("opensearch_submit_failed")

    def close(self, timeout_s: float) -> None:
        """Flush for at most ``timeout_s`` seconds, then stop; what is left is counted as dropped."""
        self._deadline = time.monotonic() + max(timeout_s, 0.0)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout_s, 0.0) + 1.0)
        with self._lock:
            self._closed = True
            left = len(self._buffer)
            self._buffer.clear()
            self._counts["dropped"] += left
        if left:
            self.metrics.opensearch_documents.labels(result=DocumentResult.dropped.value).inc(left)
        self.metrics.opensearch_buffered.set(0)
        logger.info("opensearch_sink_closed", dropped_at_close=left, **self._counts_snapshot())

    def stats(self) -> SinkStats:
        """Return the sink's counters."""
        with self._lock:
            buffered = len(self._buffer)
        return SinkStats(buffered=buffered, reachable=self._reachable, **self._counts_snapshot())

    def flush(self, timeout_s: float) -> bool:
        """Wait until the buffer is empty (for tests and orderly hand-overs); True if it emptied in time."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                empty = not self._buffer and not self._in_flight
            if empty:
                return True
            time.sleep(0.02)
        return False

    # -- the background thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = self._stopping.is_set()
            try:
                self._drain(final=stopping)
            except Exception:  # a bug here must not kill the thread, nor ingest
                logger.exception("opensearch_sink_error")
            if stopping:
                return
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()

    def _drain(self, *, final: bool) -> None:
        """Send everything buffered; on an unreachable cluster requeue and back off (or give up if final)."""
        while not (final and time.monotonic() >= self._deadline):
            batch = self._take()
            if not batch:
                if self._buffer:
                    continue  # the whole batch was unusable; go on with the rest
                return
            try:
                retry = self._send(batch)
            except _UnreachableError as error:
                self._requeue(batch)
                self._mark_unreachable(error)
                if final or self._stopping.wait(self._backoff_s):
                    return
                self._backoff_s = min(self._backoff_s * 2, self.settings.retry_backoff_max_s)
                continue
            except Exception:
                self._in_flight = False
                self._count(DocumentResult.failed, len(batch))
                raise
            self._mark_reachable()
            self._requeue(retry)
            if retry:
                if final or self._stopping.wait(self.settings.retry_backoff_s):
                    return
            elif not final and len(self._buffer) < self.settings.flush_size:
                return

    def _take(self) -> list[_Pending]:
        items: list[_Item] = []
        with self._lock:
            for _ in range(min(self.settings.flush_size, len(self._buffer))):
                items.append(self._buffer.popleft())
            self._in_flight = bool(items)
            buffered = len(self._buffer)
        self.metrics.opensearch_buffered.set(buffered)
        received_at = self._clock()
        batch: list[_Pending] = []
        unusable = 0
        for item in items:
            if isinstance(item, _Pending):
                batch.append(item)
                continue
            try:
                document = prepare(
                    item,
                    prefix=self.settings.index_prefix,
                    received_at=received_at,
                    host=self._host,
                    version=self._version,
                )
            except Exception:  # a report no document can be made of must not stall the others
                unusable += 1
                if unusable == 1:
                    logger.exception("opensearch_document_unusable", position=str(item.position))
                continue
            batch.append(_Pending(document))
        self._count(DocumentResult.failed, unusable)
        if not batch:
            with self._lock:
                self._in_flight = False
        return batch

    def _requeue(self, batch: list[_Pending]) -> None:
        """Put a batch back at the front (it is the oldest); what no longer fits is dropped.

        Also ends the batch's flight, so :meth:`flush` never sees it in neither place.
        """
        with self._lock:
            room = 0 if self._closed else self.settings.buffer_size - len(self._buffer)
            keep = batch[max(0, len(batch) - room) :] if room > 0 else []
            self._buffer.extendleft(reversed(keep))
            dropped = len(batch) - len(keep)
            self._in_flight = False
            self._counts["dropped"] += dropped
            buffered = len(self._buffer)
        if dropped:
            self.metrics.opensearch_documents.labels(result=DocumentResult.dropped.value).inc(dropped)
        self.metrics.opensearch_buffered.set(buffered)

    def _send(self, batch: list[_Pending]) -> list[_Pending]:
        """Index ``batch``; return the documents to retry. Raises :class:`_UnreachableError`."""
        from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
        from opensearchpy.exceptions import TransportError

        self._ensure_template()
        body = bulk_body(pending.document for pending in batch)
        try:
            # Only what settling needs comes back: per item its status (and error, if any).
            response = self._client.bulk(body=body, filter_path=_BULK_RESPONSE_FIELDS)
        except OpenSearchConnectionError as error:
            raise _UnreachableError(type(error).__name__) from error
        except TransportError as error:
            if _status(error) in RETRIABLE_STATUSES:
                raise _UnreachableError(f"HTTP {_status(error)}") from error
            self._count(DocumentResult.failed, len(batch))
            logger.error("opensearch_bulk_refused", status=_status(error), error=str(error)[:500])
            return []
        return self._settle(batch, response)

    def _settle(self, batch: list[_Pending], response: dict[str, Any]) -> list[_Pending]:
        """Count each item of a bulk response; return the retriable ones still under their limit."""
        items = response.get("items", [])
        indexed = failed = 0
        retry: list[_Pending] = []
        first_error: dict[str, Any] | None = None
        for pending, item in zip(batch, items, strict=False):
            result: dict[str, Any] = next(iter(item.values()), {})
            status = int(result.get("status", 500))
            if status < 300:
                indexed += 1
            elif (status == 429 or status >= 500) and pending.attempts < self.settings.max_retries:
                retry.append(dataclasses.replace(pending, attempts=pending.attempts + 1))
            else:
                failed += 1
                first_error = first_error or {"status": status, "error": result.get("error")}
        missing = len(batch) - len(items)
        failed += max(missing, 0)
        self._count(DocumentResult.indexed, indexed)
        self._count(DocumentResult.failed, failed)
        if failed:
            logger.error("opensearch_documents_refused", failed=failed, first=first_error)
        return retry

    def _ensure_template(self) -> None:
        if self._template_ready:
            return
        from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
        from opensearchpy.exceptions import TransportError

        try:
            outcome = install_template(self._client, self.settings)
        except OpenSearchConnectionError as error:
            raise _UnreachableError(type(error).__name__) from error
        except TransportError as error:
            if _status(error) in RETRIABLE_STATUSES:
                raise _UnreachableError(f"HTTP {_status(error)}") from error
            # Not allowed to manage templates: index anyway, and say how to fix it once.
            logger.warning(
                "opensearch_template_not_installed",
                status=_status(error),
                hint="run `ingestd monitoring install` with a user allowed to manage index templates",
            )
        else:
            logger.info("opensearch_template_checked", result=str(outcome), prefix=self.settings.index_prefix)
        self._template_ready = True

    def _count(self, result: DocumentResult, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self._counts[result.value] += count
        self.metrics.opensearch_documents.labels(result=result.value).inc(count)

    def _mark_unreachable(self, error: Exception) -> None:
        if self._reachable:
            logger.warning(
                "opensearch_unreachable",
                error=str(error),
                buffered=len(self._buffer),
                buffer_size=self.settings.buffer_size,
            )
        self._reachable = False

    def _mark_reachable(self) -> None:
        if not self._reachable:
            logger.info("opensearch_recovered", buffered=len(self._buffer))
        self._reachable = True
        self._backoff_s = self.settings.retry_backoff_s

    def _counts_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _status(error: Exception) -> int | None:
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def make_sink(settings: OpenSearchSettings, metrics: IngestMetrics) -> EventSink | NullSink:
    """Return the sink the settings ask for: a real one with URLs, a :class:`NullSink` without."""
    if not settings.enabled:
        return NullSink()
    return EventSink(settings, metrics)
