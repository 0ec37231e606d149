"""Events waiting for dimension records, parked in the registry database and re-driven when they arrive.

Rucio delivers a ``dim_file`` and the datasets that need its records as separate
transfers, in any order. A dataset whose records are missing is *parked*: a row in
the registry database (:mod:`butler_registry._pending`) holding the raw event,
where it was read, and the records it waits for; its offset is then committed like
any other, so nothing blocks the partition and a crash loses nothing (the row is
written before the offset is committed; a crash in between replays the event, and
parking it again updates the same row).

:class:`PendingQueue` is both ends of that wait:

* the engine hands it the parked items of a batch (:meth:`PendingQueue.rows`) and
  writes them before acknowledging the batch;
* the runner asks it for events to re-drive (:meth:`PendingQueue.collect`): at once
  after this daemon imported dimension records (:meth:`PendingQueue.records_arrived`),
  and every ``poll_interval_s`` for records another daemon imported and for events
  whose retry time has come (backoff ``delay_s`` doubling to ``delay_max_s``); the
  re-driven events run through the same engine stages as live ones, and
  :meth:`PendingQueue.acknowledge` deletes the rows of those that did not park again.

An event still waiting ``max_age_s`` after it was first parked is dead-lettered at
its next timed re-drive, with a reason that names the records it waited for
(:class:`~ingestd.engine.ParkingPolicy` decides, as for the retry topic).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from butler_registry._pending import PendingEvent, PendingStore, PendingSummary, wait_key
from butler_registry.universe import Universe
from ingestd.deadletter import DeadLetterInfo
from ingestd.log import get_logger
from ingestd.sources import RawRecord
from ingestd.work import Outcome, Planned, Position, RegisterDataset

__all__ = ["PENDING_SOURCE", "PendingQueue", "event_key"]

logger = get_logger(__name__)

PENDING_SOURCE = "pending"
"""``Position.source`` of a record re-driven from the registry's parked events."""


def event_key(record: RawRecord, planned: Planned) -> str:
    """The identity a parked event is stored under: its dataset, else its bytes.

    The same dataset announced twice (a replay, a retry) is one row; a zip or a
    ``dim_file`` event is identified by its exact bytes.
    """
    if isinstance(planned, RegisterDataset):
        return f"dataset:{planned.record.id}"
    return f"event:{hashlib.sha256(record.value).hexdigest()}"


class PendingQueue:
    """The engine's and runner's view of the parked events of the registry database.

    Parameters
    ----------
    store
        The registry database's parked events.
    universe
        Dimension universe, to read the registry's names of missing records back as keys.
    poll_interval_s
        How often to look for events whose records arrived elsewhere or whose retry time came.
    lease_s
        How long a re-drive holds the events it took (other daemons leave them alone).
    clock
        Monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        store: PendingStore,
        universe: Universe,
        *,
        poll_interval_s: float = 2.0,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.universe = universe
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
        self.clock = clock
        self._arrived = False
        self._more = False
        self._next_check = 0.0
        self._sequence = itertools.count(1)
        self._claimed: dict[int, tuple[str, int]] = {}

    # -- parking (engine side) --------------------------------------------------------------

    def row(
        self,
        record: RawRecord,
        planned: Planned,
        info: DeadLetterInfo,
        missing: Sequence[str],
    ) -> PendingEvent:
        """The row of one parked event, from the parking verdict's record of the attempt."""
        origin = record.origin
        first = info.first_failed_at or info.failed_at
        return PendingEvent(
            key=event_key(record, planned),
            value=record.value,
            message_key=record.key,
            source=origin.source,
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            line=origin.line,
            error_class=info.error_class,
            reason=info.reason,
            first_parked_at=first,
            last_parked_at=info.failed_at,
            next_attempt_at=info.not_before or info.failed_at,
            attempts=info.attempts,
            waits=tuple(sorted({wait_key(self.universe, name) for name in missing})),
        )

    def park(self, events: Sequence[PendingEvent]) -> None:
        """Write parked events (upsert by key); ``TransientRegistryError`` when the database is away."""
        self.store.park(events)

    def records_arrived(self) -> None:
        """Dimension records were just imported here: look for the events they release at once."""
        self._arrived = True

    # -- re-drive (runner side) -------------------------------------------------------------

    @property
    def due(self) -> bool:
        """Whether :meth:`collect` would look at the store now."""
        return self._arrived or self._more or self.clock() >= self._next_check

    def collect(self, limit: int) -> list[RawRecord]:
        """Take up to ``limit`` events to re-drive, or none if nothing is due.

        Events whose records all exist come first, then those whose retry time has
        come. A full batch means more may be waiting: the next call looks again at
        once instead of waiting for the poll interval.
        """
        if not self.due:
            return []
        now = self.clock()
        if not self._more:
            self._next_check = now + self.poll_interval_s
        self._arrived = False
        self._more = False
        events = self.store.claim_ready(limit, lease_s=self.lease_s)
        ready = len(events)
        if len(events) < limit:
            events += self.store.claim_due(limit - len(events), lease_s=self.lease_s)
        self._more = len(events) >= limit
        if events:
            logger.info("parked_events_redriven", ready=ready, due=len(events) - ready)
        return [self._record(event) for event in events]

    def _record(self, event: PendingEvent) -> RawRecord:
        sequence = next(self._sequence)
        self._claimed[sequence] = (event.key, event.attempts)
        origin = Position(
            source=event.source,
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
            line=event.line,
        )
        # The parking policy reads attempts and the first parking time from these, as from a retry topic.
        info = DeadLetterInfo(
            error_class=event.error_class,
            reason=event.reason,
            outcome=Outcome.parked,
            origin=origin,
            failed_at=event.last_parked_at or event.first_parked_at,
            attempts=event.attempts,
            first_failed_at=event.first_parked_at,
            not_before=event.next_attempt_at,
        )
        return RawRecord(
            value=event.value,
            position=Position(source=PENDING_SOURCE, line=sequence),
            origin=origin,
            key=event.message_key,
            headers=tuple(info.to_headers()),
        )

    def acknowledge(self, records: Sequence[RawRecord]) -> int:
        """Delete the rows of re-driven events that did not park again; returns how many.

        Raises ``TransientRegistryError`` when the database is away (retry: idempotent).
        """
        done = [
            self._claimed[record.position.line]
            for record in records
            if record.position.source == PENDING_SOURCE
            and record.position.line is not None
            and record.position.line in self._claimed
        ]
        deleted = self.store.release(done)
        for record in records:
            if record.position.line is not None:
                self._claimed.pop(record.position.line, None)
        return deleted

    def forget(self, records: Sequence[RawRecord]) -> None:
        """Drop the claims of records that will not be acknowledged (their lease expires)."""
        for record in records:
            if record.position.line is not None:
                self._claimed.pop(record.position.line, None)

    def summary(self) -> PendingSummary:
        """How many events are parked and since when (raises when the database is away)."""
        return self.store.summary()

    @staticmethod
    def oldest_age_s(summary: PendingSummary, now: datetime | None = None) -> float:
        """Seconds since the oldest parked event was first parked (0 when none)."""
        if summary.oldest is None:
            return 0.0
        return max(((now or datetime.now(UTC)) - summary.oldest).total_seconds(), 0.0)
