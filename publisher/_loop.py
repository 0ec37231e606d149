"""The loop both publisher modes run: one batch at a time, back off on trouble, never spin.

A worker (the table publisher or the topic router) publishes one batch per call
and says what happened; this loop decides what comes next: another batch at once
when there was work, a poll-interval sleep when there was none, an exponential,
jittered back-off when the source or Kafka failed. Health follows: the heartbeat
every turn, readiness withdrawn with the reason while failures last.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ingestd.log import get_logger
from monitoring.http_server import HealthState
from monitoring.metrics import PublisherMetrics

from ._errors import BrokerUnavailableError, SourceUnavailableError, TransientError

__all__ = ["Backoff", "BatchResult", "BatchWorker", "RetryBook", "run_loop"]

logger = get_logger(__name__)

BACKLOG_COST_SPACING = 50.0
"""A backlog count is followed by at least this many times its own duration before the next."""
EMPTY_POLL_COST_SPACING = 3.0
"""A poll that found nothing is followed by at least this many times its own duration before the next.

Three keeps polling an empty table under a quarter of one database core however bloated it is,
and leaves the configured interval alone while an empty poll costs less than a third of it (a
table drained at 1,000 events/s: ~15 ms); twenty cost a 0.3 s p99 in latency there.
"""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch did."""

    taken: int = 0
    """Rows claimed (table mode) or records consumed (route mode)."""
    delivered: int = 0
    """Records Kafka confirmed (and whose rows moved to history / offsets were committed)."""
    failed: int = 0
    """Records Kafka did not confirm; their rows stay, their offsets are not committed."""
    held_back: int = 0
    """Of the failed, those refused for a reason of their own, held back alone (table mode)."""
    skipped: int = 0
    """Route mode: records of event types not published (their offsets are committed)."""
    unrouted: int = 0
    """Records sent to the catch-all topic."""
    enriched: int = 0
    """Payloads completed from DID metadata."""
    duration_s: float = 0.0
    empty_poll_cost_s: float = 0.0
    """When nothing was taken: the source's time spent finding nothing (spaces the next poll)."""


class BatchWorker(Protocol):
    """One publisher mode, as the loop drives it."""

    def publish_batch(self) -> BatchResult:
        """Publish one batch; raises :class:`TransientError` when nothing could be done now."""
        ...

    def refresh_backlog(self) -> None:
        """Update the backlog gauges (never raises)."""
        ...


class Backoff:
    """Exponential back-off with full jitter, capped.

    Parameters
    ----------
    initial_s, maximum_s
        First and largest delay.
    """

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.failures = 0

    def next_delay(self) -> float:
        """Register a failure and return how long to wait before the next try."""
        self.failures += 1
        ceiling = min(self.maximum_s, self.initial_s * 2 ** min(self.failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Register a success."""
        self.failures = 0


class RetryBook:
    """Rows whose record Kafka refused for a reason of its own, held back for a while.

    A record Kafka refuses for itself (too large for the topic, say) would otherwise
    head every batch again, since claims take the oldest rows first. Holding it back
    with its own back-off lets the rows behind it flow; it is retried later, and
    never deleted. In memory only: a restart simply retries everything at once.
    """

    def __init__(self, *, maximum_s: float = 300.0, capacity: int = 10_000) -> None:
        self.maximum_s = maximum_s
        self.capacity = capacity
        self._entries: OrderedDict[uuid.UUID, tuple[int, float]] = OrderedDict()

    def failed(self, ids: list[uuid.UUID], now: float | None = None) -> None:
        """Hold ``ids`` back, each for longer than last time."""
        now = time.monotonic() if now is None else now
        for message_id in ids:
            attempts = self._entries.pop(message_id, (0, 0.0))[0] + 1
            delay = min(self.maximum_s, 2.0**attempts)
            self._entries[message_id] = (attempts, now + delay)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def delivered(self, ids: list[uuid.UUID]) -> None:
        """Forget ``ids``."""
        for message_id in ids:
            self._entries.pop(message_id, None)

    def waiting(self, now: float | None = None) -> list[uuid.UUID]:
        """Ids still inside their back-off."""
        now = time.monotonic() if now is None else now
        return [message_id for message_id, (_, until) in self._entries.items() if until > now]

    def __len__(self) -> int:
        return len(self._entries)


def _reason(error: TransientError) -> str:
    if isinstance(error, SourceUnavailableError):
        return "source"
    if isinstance(error, BrokerUnavailableError):
        return "kafka"
    return "publisher"


def run_loop(
    worker: BatchWorker,
    *,
    stop: threading.Event,
    health: HealthState,
    metrics: PublisherMetrics,
    poll_interval_s: float,
    max_backoff_s: float,
    backlog_interval_s: float,
    drain: bool = False,
    max_batches: int | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> None:
    """Publish batches until ``stop`` is set (or, with ``drain``, until nothing is left).

    Parameters
    ----------
    worker
        The mode to run.
    stop
        Set by a signal handler (or a test) to end the loop after the current batch.
    health, metrics
        Updated as batches succeed and fail.
    poll_interval_s
        Sleep when a batch found nothing to do (longer when finding nothing was slow).
    max_backoff_s
        Cap of the back-off after failures.
    backlog_interval_s
        How often the backlog gauges are refreshed (less often when counting is slow).
    drain
        Return once a batch finds nothing to do (one-shot runs, tests, benchmarks).
    max_batches
        Return after this many batches that did something.
    on_batch
        Called with every batch's result (tests, benchmarks).

    Raises
    ------
    PermanentError
        Propagated: the caller stops the service with a message for the operator.
    """
    backoff = Backoff(maximum_s=max_backoff_s)
    next_backlog = 0.0
    batches = 0
    while not stop.is_set():
        health.beat()
        now = time.monotonic()
        if now >= next_backlog:
            worker.refresh_backlog()
            counted = time.monotonic()
            # Counting a large backlog scans Rucio's whole table (0.4 s at 1,000,000 rows):
            # space the counts so they never take more than 2 % of the database's time.
            next_backlog = counted + max(backlog_interval_s, BACKLOG_COST_SPACING * (counted - now))
        try:
            result = worker.publish_batch()
        except TransientError as error:
            reason = _reason(error)
            metrics.observe_error(error)
            health.set_not_ready(reason, str(error))
            delay = backoff.next_delay()
            logger.warning(
                "batch_failed", reason=reason, error=type(error).__name__, detail=str(error), retry_in_s=delay
            )
            stop.wait(delay)
            continue
        health.set_ready("source")
        if on_batch is not None:
            on_batch(result)
        if result.failed > result.held_back:
            # The cluster did not take the batch: wait before claiming again.
            delay = backoff.next_delay()
            health.set_not_ready("kafka", f"{result.failed} records of the last batch were not delivered")
            stop.wait(delay)
            continue
        backoff.reset()
        health.set_ready("kafka")
        health.set_ready("starting")
        if result.taken == 0:
            if drain:
                worker.refresh_backlog()
                return
            # An empty but bloated messages table (right after a large backlog, before
            # autovacuum) costs a scan per poll: keep polling it under a quarter of a core.
            stop.wait(max(poll_interval_s, EMPTY_POLL_COST_SPACING * result.empty_poll_cost_s))
            continue
        batches += 1
        if max_batches is not None and batches >= max_batches:
            worker.refresh_backlog()
            return
