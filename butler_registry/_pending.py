"""Parked events in the registry database: what each waits for, and when the wait is over.

An event whose data ID names dimension records the registry does not have yet (its
``dim_file`` is still in flight) is kept here, with the records it waits for, until
those records arrive. Keeping it next to the records is what makes the wait cheap to
end: "which parked events wait only for records that now exist" is one indexed query
on the registry's own ``dimension_record`` table, so any daemon — the one that
imported the records or another one of the group — notices within a poll interval,
and the one that imported them re-drives at once.

Rows are keyed by the event's identity (``dataset:<uuid>``, or ``event:<sha256>`` of
the raw bytes for events without a single dataset), so parking the same event again
— a retry, a replay from Kafka — updates one row instead of adding another. Each
write bumps ``attempts``; a re-drive releases a row only if ``attempts`` is still the
value it read, so a row parked again meanwhile is never deleted by mistake.

Several daemons may share a registry: a re-drive first takes a short *lease* on the
rows it picked (a conditional update), so two daemons do not re-drive the same event
at once; a daemon that dies mid-re-drive leaves a lease that simply expires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ._engine import WRITE_OPTIONS, translate_errors
from ._records import data_key, describe_key
from ._schema import DIMENSION_RECORD, PENDING_EVENT, PENDING_WAIT
from .interface import DataIdValue
from .universe import Universe

__all__ = [
    "TIMER_ONLY",
    "UNPARSED_ELEMENT",
    "PendingEvent",
    "PendingGroup",
    "PendingStore",
    "PendingSummary",
    "WaitKey",
    "describe_waits",
    "wait_key",
]

UNPARSED_ELEMENT = "?"
"""Element of a wait key whose description could not be read back: never satisfied, timer only."""


@dataclass(frozen=True, slots=True, order=True)
class WaitKey:
    """One dimension record an event waits for, keyed as ``dimension_record`` keys it."""

    element: str
    data_key: str

    def __str__(self) -> str:
        if self.element == UNPARSED_ELEMENT:
            return self.data_key
        return describe_key(self.element, self.data_key)


def wait_key(universe: Universe, description: str) -> WaitKey:
    """Read back a missing-record description of the registry (``visit:HSC/330``) as a key.

    The registry names a missing record by its element and required values joined by
    ``/``; each value is typed back with the dimension's key type. A description that
    cannot be read unambiguously becomes a key that no record satisfies (the event is
    then re-driven by the timer only), never a wrong key.
    """
    element, sep, rest = description.partition(":")
    if sep and element in universe:
        required = universe[element].required
        parts = rest.split("/")
        if len(parts) == len(required) and all(parts):
            values: list[DataIdValue] = []
            for dimension, part in zip(required, parts, strict=True):
                if universe.key_type(dimension) == "int":
                    try:
                        values.append(int(part))
                    except ValueError:
                        break
                else:
                    values.append(part)
            else:
                return WaitKey(element, data_key(values))
    return WaitKey(UNPARSED_ELEMENT, description[:512])


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """One parked event as stored: the raw event, where it came from, why and how long it waits."""

    key: str
    value: bytes
    source: str
    error_class: str
    reason: str
    first_parked_at: datetime
    next_attempt_at: datetime
    waits: tuple[WaitKey, ...] = ()
    message_key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    line: int | None = None
    last_parked_at: datetime | None = None
    attempts: int = 1
    """As stored; writing an event sets it to the stored value plus one (one on first parking)."""


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """Parked events waiting for one record (``ingestd pending``)."""

    wait: str
    """``visit:HSC/330``; ``(timer only)`` for events without a record to wait for."""
    events: int
    oldest: datetime
    newest: datetime


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """How many events are parked and since when (metrics)."""

    events: int
    oldest: datetime | None


TIMER_ONLY = "(timer only)"
"""Group of events that wait for no record the registry could name (re-driven by the timer)."""

_T = TypeVar("_T")

_READY_PAGE = 5_000
"""Events examined per page when looking for those whose records all arrived."""


class PendingStore:
    """The parked events of one registry database (PostgreSQL or SQLite).

    Parameters
    ----------
    engine
        The registry's engine (the tables are created by its migrations).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**WRITE_OPTIONS)

    # -- writes -----------------------------------------------------------------------------

    def park(self, events: Sequence[PendingEvent]) -> None:
        """Insert or update ``events`` (by key) and replace what each waits for, in one transaction.

        An event already parked keeps its earliest ``first_parked_at`` and counts one
        more attempt; its lease ends (it is parked again, not being re-driven).
        """
        if not events:
            return
        latest: dict[str, PendingEvent] = {event.key: event for event in events}
        rows = [_row(event) for event in latest.values()]
        dialect = self.engine.dialect.name
        insert = postgresql.insert(PENDING_EVENT) if dialect == "postgresql" else sqlite.insert(PENDING_EVENT)
        table = PENDING_EVENT.c
        statement = insert.on_conflict_do_update(
            index_elements=[table.key],
            set_={
                "value": insert.excluded.value,
                "message_key": insert.excluded.message_key,
                "source": insert.excluded.source,
                "topic": insert.excluded.topic,
                "partition": insert.excluded.partition,
                "offset": insert.excluded.offset,
                "line": insert.excluded.line,
                "error_class": insert.excluded.error_class,
                "reason": insert.excluded.reason,
                "first_parked_at": sa.case(
                    (
                        insert.excluded.first_parked_at < table.first_parked_at,
                        insert.excluded.first_parked_at,
                    ),
                    else_=table.first_parked_at,
                ),
                "last_parked_at": insert.excluded.last_parked_at,
                "attempts": table.attempts + 1,
                "next_attempt_at": insert.excluded.next_attempt_at,
                "lease_until": None,
            },
        )
        keys = sorted(latest)
        waits = [
            {"pending_key": event.key, "element": wait.element, "data_key": wait.data_key}
            for event in latest.values()
            for wait in sorted(set(event.waits))
        ]
        with translate_errors("parking events"), self._writer.begin() as connection:
            connection.execute(statement, sorted(rows, key=lambda row: str(row["key"])))
            for chunk in _chunks(keys, 1_000):
                connection.execute(sa.delete(PENDING_WAIT).where(PENDING_WAIT.c.pending_key.in_(chunk)))
            if waits:
                connection.execute(sa.insert(PENDING_WAIT), waits)

    def release(self, done: Iterable[tuple[str, int]]) -> int:
        """Delete the rows of events that are finished, unless parked again since they were read.

        Parameters
        ----------
        done
            ``(key, attempts)`` as read by :meth:`claim_ready` or :meth:`claim_due`.

        Returns
        -------
        deleted
            Rows deleted.
        """
        pairs = sorted(set(done))
        if not pairs:
            return 0
        deleted = 0
        identity = sa.tuple_(PENDING_EVENT.c.key, PENDING_EVENT.c.attempts)
        with translate_errors("releasing parked events"), self._writer.begin() as connection:
            for chunk in _chunks(pairs, 1_000):
                # The condition is in the DELETE itself: a row parked again meanwhile (attempts
                # moved on) is not deleted, whatever the interleaving.
                gone = [
                    row[0]
                    for row in connection.execute(
                        sa.delete(PENDING_EVENT)
                        .where(identity.in_(list(chunk)))
                        .returning(PENDING_EVENT.c.key)
                    )
                ]
                if gone:
                    # Explicitly, not by cascade: SQLite enforces foreign keys only when told to.
                    connection.execute(sa.delete(PENDING_WAIT).where(PENDING_WAIT.c.pending_key.in_(gone)))
                    deleted += len(gone)
        return deleted

    # -- re-drive selection -----------------------------------------------------------------

    def claim_ready(self, limit: int, *, lease_s: float, now: datetime | None = None) -> list[PendingEvent]:
        """Take a lease on up to ``limit`` events whose every awaited record now exists.

        Only events waiting for at least one record qualify (the others wait for the
        timer). Three steps, each an equality join on an index, so the cost stays
        linear whatever the planner estimates (one correlated ``NOT EXISTS`` over the
        parked events was once planned as a quadratic nested loop):

        1. awaited records that now exist (the distinct awaited keys, probed in
           ``dimension_record`` by primary key);
        2. events waiting for one of them, a page at a time in key order;
        3. of those, the ones waiting for nothing else still absent.
        """
        moment = now or datetime.now(UTC)

        def find(connection: sa.Connection) -> list[str]:
            arrived = connection.execute(
                sa.select(PENDING_WAIT.c.element, PENDING_WAIT.c.data_key)
                .where(_record_exists(PENDING_WAIT))
                .distinct()
            ).all()
            if not arrived:
                return []
            keys = [(element, key) for element, key in arrived]
            ready: list[str] = []
            after = ""
            while len(ready) < limit:
                page: list[str] = []
                for chunk in _chunks(keys, 500):
                    page.extend(
                        row[0]
                        for row in connection.execute(
                            sa.select(PENDING_WAIT.c.pending_key)
                            .where(
                                sa.tuple_(PENDING_WAIT.c.element, PENDING_WAIT.c.data_key).in_(list(chunk)),
                                PENDING_WAIT.c.pending_key > after,
                            )
                            .distinct()
                            .order_by(PENDING_WAIT.c.pending_key)
                            .limit(_READY_PAGE)
                        )
                    )
                if not page:
                    break
                page = sorted(set(page))[:_READY_PAGE]
                after = page[-1]
                blocked = {
                    row[0]
                    for row in connection.execute(
                        sa.select(PENDING_WAIT.c.pending_key)
                        .where(PENDING_WAIT.c.pending_key.in_(page), ~_record_exists(PENDING_WAIT))
                        .distinct()
                    )
                }
                ready.extend(key for key in page if key not in blocked)
            return ready[:limit]

        return self._claim(find, lease_s=lease_s, now=moment)

    def claim_due(self, limit: int, *, lease_s: float, now: datetime | None = None) -> list[PendingEvent]:
        """Take a lease on up to ``limit`` events whose retry time has come, oldest retry first."""
        moment = now or datetime.now(UTC)

        def find(connection: sa.Connection) -> list[str]:
            return [
                row[0]
                for row in connection.execute(
                    sa.select(PENDING_EVENT.c.key)
                    .where(PENDING_EVENT.c.next_attempt_at <= moment, _free(moment))
                    .order_by(PENDING_EVENT.c.next_attempt_at, PENDING_EVENT.c.key)
                    .limit(limit)
                )
            ]

        return self._claim(find, lease_s=lease_s, now=moment)

    def _claim(
        self, find: Callable[[sa.Connection], list[str]], *, lease_s: float, now: datetime
    ) -> list[PendingEvent]:
        free = _free(now)
        with translate_errors("selecting parked events"), self._writer.begin() as connection:
            candidates = find(connection)
            if not candidates:
                return []
            # The lease: a conditional update, so of two daemons racing for a row one gets it.
            rows = connection.execute(
                sa.update(PENDING_EVENT)
                .where(PENDING_EVENT.c.key.in_(candidates), free)
                .values(lease_until=now + timedelta(seconds=lease_s))
                .returning(*PENDING_EVENT.c)
            ).all()
            if not rows:
                return []
            taken = [row.key for row in rows]
            waits: dict[str, list[WaitKey]] = {}
            for pending_key, element, key in connection.execute(
                sa.select(PENDING_WAIT.c.pending_key, PENDING_WAIT.c.element, PENDING_WAIT.c.data_key).where(
                    PENDING_WAIT.c.pending_key.in_(taken)
                )
            ):
                waits.setdefault(pending_key, []).append(WaitKey(element, key))
        events = [_event(row, tuple(sorted(waits.get(row.key, ())))) for row in rows]
        events.sort(key=lambda event: (event.next_attempt_at, event.key))
        return events

    # -- reading ----------------------------------------------------------------------------

    def summary(self) -> PendingSummary:
        """How many events are parked, and the first parking time of the oldest."""
        with translate_errors("counting parked events"), self.engine.connect() as connection:
            count, oldest = connection.execute(
                sa.select(sa.func.count(), sa.func.min(PENDING_EVENT.c.first_parked_at))
            ).one()
        return PendingSummary(int(count), _utc(oldest) if oldest is not None else None)

    def groups(self, limit: int | None = None) -> list[PendingGroup]:
        """Parked events grouped by the record they wait for, the largest groups first.

        An event waiting for two records is counted in both groups.
        """
        first = PENDING_EVENT.c.first_parked_at
        with translate_errors("listing parked events"), self.engine.connect() as connection:
            waiting = connection.execute(
                sa.select(
                    PENDING_WAIT.c.element,
                    PENDING_WAIT.c.data_key,
                    sa.func.count(),
                    sa.func.min(first),
                    sa.func.max(first),
                )
                .select_from(
                    PENDING_WAIT.join(PENDING_EVENT, PENDING_WAIT.c.pending_key == PENDING_EVENT.c.key)
                )
                .group_by(PENDING_WAIT.c.element, PENDING_WAIT.c.data_key)
            ).all()
            alone = connection.execute(
                sa.select(sa.func.count(), sa.func.min(first), sa.func.max(first)).where(
                    ~sa.exists().where(PENDING_WAIT.c.pending_key == PENDING_EVENT.c.key)
                )
            ).one()
        groups = [
            PendingGroup(str(WaitKey(element, key)), int(count), _utc(oldest), _utc(newest))
            for element, key, count, oldest, newest in waiting
        ]
        if alone[0]:
            groups.append(PendingGroup(TIMER_ONLY, int(alone[0]), _utc(alone[1]), _utc(alone[2])))
        groups.sort(key=lambda group: (-group.events, group.oldest, group.wait))
        return groups[:limit] if limit is not None else groups

    def events(self, limit: int = 100) -> list[PendingEvent]:
        """Parked events, the longest-waiting first (``ingestd pending --events``)."""
        with translate_errors("listing parked events"), self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(PENDING_EVENT)
                .order_by(PENDING_EVENT.c.first_parked_at, PENDING_EVENT.c.key)
                .limit(limit)
            ).all()
            keys = [row.key for row in rows]
            waits: dict[str, list[WaitKey]] = {}
            if keys:
                for pending_key, element, key in connection.execute(
                    sa.select(
                        PENDING_WAIT.c.pending_key, PENDING_WAIT.c.element, PENDING_WAIT.c.data_key
                    ).where(PENDING_WAIT.c.pending_key.in_(keys))
                ):
                    waits.setdefault(pending_key, []).append(WaitKey(element, key))
        return [_event(row, tuple(sorted(waits.get(row.key, ())))) for row in rows]

    def make_due(self, *, now: datetime | None = None) -> int:
        """Make every parked event due now (``ingestd pending --redrive``); returns how many."""
        moment = now or datetime.now(UTC)
        with translate_errors("scheduling parked events"), self._writer.begin() as connection:
            result = connection.execute(
                sa.update(PENDING_EVENT).values(next_attempt_at=moment, lease_until=None)
            )
        return int(result.rowcount or 0)


def _free(now: datetime) -> sa.ColumnElement[bool]:
    """No daemon holds a lease on the event."""
    return sa.or_(PENDING_EVENT.c.lease_until.is_(None), PENDING_EVENT.c.lease_until < now)


def _record_exists(wait: sa.Table) -> sa.Exists:
    """The awaited record is in ``dimension_record`` (a primary-key probe)."""
    return sa.exists().where(
        DIMENSION_RECORD.c.element == wait.c.element, DIMENSION_RECORD.c.data_key == wait.c.data_key
    )


def _row(event: PendingEvent) -> dict[str, object]:
    return {
        "key": event.key,
        "value": event.value,
        "message_key": event.message_key,
        "source": event.source,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "line": event.line,
        "error_class": event.error_class[:64],
        "reason": event.reason,
        "first_parked_at": event.first_parked_at,
        "last_parked_at": event.last_parked_at or event.first_parked_at,
        "attempts": 1,
        "next_attempt_at": event.next_attempt_at,
        "lease_until": None,
    }


def _event(row: sa.Row[tuple[object, ...]], waits: tuple[WaitKey, ...]) -> PendingEvent:
    mapping = row._mapping
    return PendingEvent(
        key=str(mapping["key"]),
        value=bytes(mapping["value"]),
        message_key=bytes(mapping["message_key"]) if mapping["message_key"] is not None else None,
        source=str(mapping["source"]),
        topic=mapping["topic"],
        partition=mapping["partition"],
        offset=mapping["offset"],
        line=mapping["line"],
        error_class=str(mapping["error_class"]),
        reason=str(mapping["reason"]),
        first_parked_at=_utc(mapping["first_parked_at"]),
        last_parked_at=_utc(mapping["last_parked_at"]),
        attempts=int(mapping["attempts"]),
        next_attempt_at=_utc(mapping["next_attempt_at"]),
        waits=waits,
    )


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def describe_waits(waits: Iterable[WaitKey]) -> str:
    """``visit:HSC/330, detector:HSC/50`` for reasons and logs."""
    return ", ".join(str(wait) for wait in waits) or TIMER_ONLY
