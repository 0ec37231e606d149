"""Rucio's ``messages`` table as a queue several publishers can share.

A batch is *claimed* in one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED``
locks the oldest rows of the wanted event types and services that no other
publisher holds, so two instances never publish the same row at once and neither
waits for the other. The same transaction later *archives* the rows Kafka
confirmed (insert into ``messages_history``, delete from ``messages``, as Rucio's
Hermes does) and commits; rows whose records failed are simply not archived, and
the commit releases their locks. A crash at any point rolls the transaction back:
every row not archived is still there, unlocked.

Rucio's ``messages`` table has no index on ``created_at``, so finding the oldest
rows reads and sorts the whole table (0.3-0.6 s at 1,000,000 rows). Hermes does
that for every batch; here one sorted scan *plans* the next
:data:`PLAN_ROWS` ids, oldest first, and each claim then locks the next ids of
the plan by primary key. A row written after the plan is newer than every planned
row, so the order is the same; a plan is dropped whenever a claim leaves rows
behind (failed deliveries), so those are claimed again before anything newer.

Before planning, and before counting the backlog, one row is looked up by primary
key. A table just drained of a large backlog keeps its dead rows until autovacuum
runs, and a sequential scan reads them all on every poll (0.12 s per 500,000 rows;
96 planning scans, 23.3 s of statement time, in a 1,000,000-event drain); the index
lookup reads them once, marks their index entries dead and then costs a walk of the
index leaves (12 ms at 500,000 rows).

Notes
-----
The only window for duplicates is a crash (or a lost database connection) after
Kafka confirmed a record and before the commit: the row is published again by the
next claim. Consumers register by dataset UUID, so a duplicate is harmless; a loss
is impossible, because no row is deleted before its record is confirmed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, NoSuchTableError, OperationalError

from ._errors import ConfigurationError, SourceUnavailableError
from ._messages import RucioMessage
from ._tables import RucioTables

__all__ = ["PLAN_ROWS", "Backlog", "Claim", "MessageTable"]

PLAN_ROWS = 100_000
"""Ids planned by one sorted scan of the table: ten claims of the default size.

Measured on 1,000,000 rows of Rucio's table: the scan that plans 100,000 ids takes
0.6 s, one that finds the oldest 10,000 (what Hermes does per batch) 0.34 s, so a
large backlog costs the database a tenth of the sorting. The plan holds about
12 MB of ids at most.
"""

_NOLIMIT = "nolimit"
"""What Rucio writes into ``payload`` when the payload went to ``payload_nolimit``."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """Rows waiting to be published."""

    rows: int
    oldest_created_at: datetime | None
    """Naive UTC, as Rucio stores it."""

    def oldest_age_s(self, now: datetime | None = None) -> float:
        """Seconds since the oldest waiting row was written (0 when none waits)."""
        if self.oldest_created_at is None:
            return 0.0
        now = now or datetime.now(UTC).replace(tzinfo=None)
        return max(0.0, (now - self.oldest_created_at).total_seconds())


class Claim:
    """Rows locked by one open transaction, and the way to archive those that were delivered."""

    def __init__(self, table: MessageTable, connection: sa.Connection, messages: list[RucioMessage]) -> None:
        self._table = table
        self.connection = connection
        """The claim's connection: read DID metadata through it, inside the same transaction."""
        self.messages = messages
        self.archived = 0

    def archive(self, ids: Sequence[uuid.UUID], *, published_at: datetime | None = None) -> int:
        """Move the rows ``ids`` to ``messages_history`` (``updated_at`` = publication time).

        Only ids of this claim may be given; the move commits with the claim.

        Raises
        ------
        SourceUnavailableError
            When the database refuses (the transaction is then rolled back whole).
        """
        if not ids:
            return 0
        moved = self._table.archive(self.connection, ids, published_at=published_at)
        self.archived += moved
        return moved


class MessageTable:
    """Claims, archives and counts the rows of Rucio's ``messages`` table that this publisher owns.

    Parameters
    ----------
    engine
        Engine on the Rucio database.
    tables
        Rucio's tables.
    event_types
        Event types to publish.
    services
        ``services`` values to claim; None for every service.
    plan_rows
        Ids planned per sorted scan (see the module's notes); at least a claim's size is planned.
    """

    def __init__(
        self,
        engine: sa.Engine,
        tables: RucioTables,
        event_types: Sequence[str],
        services: Sequence[str] | None,
        *,
        plan_rows: int = PLAN_ROWS,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.event_types = list(event_types)
        self.services = None if services is None else list(services)
        self._postgres = engine.dialect.name == "postgresql"
        self._plan_rows = plan_rows
        self._planned: deque[uuid.UUID] = deque()

    # -- start-up checks ----------------------------------------------------------------
    def check_schema(self) -> None:
        """Refuse to start when Rucio's tables are missing or lack a column the publisher uses.

        Raises
        ------
        ConfigurationError
            Naming the table and the columns that are missing.
        SourceUnavailableError
            When the database cannot be reached.
        """
        try:
            inspector = sa.inspect(self.engine)
            for table in (self.tables.messages, self.tables.messages_history, self.tables.did_meta):
                try:
                    present = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
                except NoSuchTableError:
                    present = set()
                if not present:
                    where = f"{table.schema}.{table.name}" if table.schema else table.name
                    raise ConfigurationError(
                        f"table {where} not found in the Rucio database; check database.url and "
                        f"database.db_schema (Rucio's [database] schema)"
                    )
                missing = sorted({c.name for c in table.columns} - present)
                if missing:
                    raise ConfigurationError(
                        f"table {table.name} lacks columns {missing}; is this a Rucio database of a "
                        f"supported version?"
                    )
        except OperationalError as error:
            raise SourceUnavailableError(f"cannot reach the Rucio database: {error}") from error

    def summary(self) -> list[tuple[str, str | None, int]]:
        """Rows per (event type, service) in the whole table, for the start-up log.

        Tells an operator at once when the rows they expect are tagged with another
        service than the one configured.
        """
        messages = self.tables.messages
        statement = (
            sa.select(messages.c.event_type, messages.c.services, sa.func.count())
            .group_by(messages.c.event_type, messages.c.services)
            .order_by(messages.c.event_type, messages.c.services)
        )
        with self._connect() as connection:
            return [(row[0], row[1], int(row[2])) for row in connection.execute(statement)]

    # -- the queue ----------------------------------------------------------------------
    def _wanted(self) -> list[sa.ColumnElement[bool]]:
        """The conditions selecting this publisher's rows."""
        messages = self.tables.messages
        conditions: list[sa.ColumnElement[bool]] = [messages.c.event_type.in_(self.event_types)]
        if self.services is not None:
            conditions.append(messages.c.services.in_(self.services))
        return conditions

    @contextlib.contextmanager
    def claim(self, limit: int, *, exclude: Collection[uuid.UUID] = ()) -> Iterator[Claim]:
        """Lock up to ``limit`` of the oldest wanted rows that no one else holds.

        The transaction stays open for the block and commits when it ends normally
        (with whatever :meth:`Claim.archive` moved); it rolls back on an exception.
        Rows left behind (not archived, or rolled back) make the next claim plan
        afresh, so they go out before newer rows.

        Parameters
        ----------
        limit
            Most rows to claim.
        exclude
            Ids not to claim now (rows waiting out their own back-off).

        Raises
        ------
        SourceUnavailableError
            When the database cannot be reached or the transaction fails.
        """
        excluded = exclude if isinstance(exclude, set | frozenset) else set(exclude)
        complete = False
        try:
            with self.engine.connect() as connection, connection.begin():
                rows = self._lock_oldest(connection, limit, excluded)
                claimed = [
                    RucioMessage(
                        id=row.id,
                        event_type=row.event_type,
                        payload_text=row.payload_nolimit
                        if row.payload == _NOLIMIT and row.payload_nolimit is not None
                        else row.payload,
                        services=row.services,
                        created_at=row.created_at,
                    )
                    for row in rows
                ]
                claim = Claim(self, connection, claimed)
                yield claim
                complete = claim.archived == len(claimed)
        except DBAPIError as error:
            raise SourceUnavailableError(
                f"Rucio database: {type(error.orig).__name__}: {error.orig}"
            ) from error
        finally:
            if not complete:
                self._planned.clear()

    def _lock_oldest(
        self, connection: sa.Connection, limit: int, exclude: Collection[uuid.UUID]
    ) -> list[sa.Row[Any]]:
        """Lock the next planned rows still there and free; plan (once) when the plan runs out."""
        planned_now = False
        while True:
            if not self._planned:
                if planned_now or not self._any_wanted(connection):
                    return []
                self._plan(connection, max(limit, self._plan_rows), exclude)
                planned_now = True
                if not self._planned:
                    return []
            ids = self._next_planned(limit, exclude)
            if ids:
                rows = connection.execute(self._lock_statement(ids)).all()
                if rows:
                    return list(rows)
            # Every planned row was taken by another publisher or is in back-off: go on.

    def _any_wanted(self, connection: sa.Connection) -> bool:
        """Whether any wanted row is left, looked up by primary key (see the module's notes)."""
        messages = self.tables.messages
        # ORDER BY the key makes PostgreSQL walk the primary key index rather than the heap.
        statement = sa.select(messages.c.id).where(*self._wanted()).order_by(messages.c.id).limit(1)
        return connection.execute(statement).first() is not None

    def _plan(self, connection: sa.Connection, rows: int, exclude: Collection[uuid.UUID]) -> None:
        """Fill the plan with the ids of the oldest ``rows`` wanted rows (no lock taken)."""
        messages = self.tables.messages
        conditions = self._wanted()
        if exclude:
            conditions.append(self._id_filter(exclude, negate=True))
        statement = sa.select(messages.c.id).where(*conditions).order_by(messages.c.created_at).limit(rows)
        self._planned.extend(connection.execute(statement).scalars())

    def _next_planned(self, limit: int, exclude: Collection[uuid.UUID]) -> list[uuid.UUID]:
        """Take up to ``limit`` ids off the plan, dropping those in back-off (a later plan has them)."""
        ids: list[uuid.UUID] = []
        planned = self._planned
        while planned and len(ids) < limit:
            planned_id = planned.popleft()
            if planned_id not in exclude:
                ids.append(planned_id)
        return ids

    def _lock_statement(self, ids: Sequence[uuid.UUID]) -> sa.Select[Any]:
        """``SELECT`` of the rows ``ids`` that are still wanted and free, oldest first, locking them."""
        messages = self.tables.messages
        return (
            sa.select(
                messages.c.id,
                messages.c.event_type,
                messages.c.payload,
                messages.c.payload_nolimit,
                messages.c.services,
                messages.c.created_at,
            )
            .where(self._id_filter(ids), *self._wanted())
            .order_by(messages.c.created_at)
            .with_for_update(skip_locked=True)
        )

    def archive(
        self,
        connection: sa.Connection,
        ids: Sequence[uuid.UUID],
        *,
        published_at: datetime | None = None,
    ) -> int:
        """Insert rows ``ids`` into ``messages_history`` and delete them from ``messages``.

        Runs in the caller's transaction. Rucio's own Hermes does the same move; the
        history row keeps the payload columns as stored and records the publication
        time in ``updated_at``.
        """
        messages, history = self.tables.messages, self.tables.messages_history
        published_at = published_at or datetime.now(UTC).replace(tzinfo=None)
        names = ["id", "event_type", "payload", "payload_nolimit", "services", "created_at", "updated_at"]
        stamp = sa.literal(published_at, sa.DateTime).label("updated_at")
        if self._postgres:
            # One statement: WITH moved AS (DELETE ... RETURNING ...) INSERT INTO history ... FROM moved.
            moved = (
                messages.delete()
                .where(self._id_filter(ids))
                .returning(*(messages.c[name] for name in names[:-1]))
                .cte("moved")
            )
            insert = (
                history.insert()
                .from_select(names, sa.select(*(moved.c[name] for name in names[:-1]), stamp))
                .add_cte(moved)
            )
            deleted = len(connection.execute(insert.returning(history.c.id)).all())
        else:
            selected = sa.select(*(messages.c[name] for name in names[:-1]), stamp).where(
                self._id_filter(ids)
            )
            connection.execute(history.insert().from_select(names, selected))
            deleted = connection.execute(messages.delete().where(self._id_filter(ids))).rowcount
        if deleted != len(ids):
            # Cannot happen while the rows are locked by this transaction; refuse to commit if it does.
            raise SourceUnavailableError(
                f"archived {deleted} of {len(ids)} claimed rows; rolling the batch back"
            )
        return int(deleted)

    def _id_filter(self, ids: Collection[uuid.UUID], *, negate: bool = False) -> sa.ColumnElement[bool]:
        column = self.tables.messages.c.id
        if self._postgres:
            # One array parameter instead of thousands: a single plan whatever the batch size.
            array = sa.bindparam(None, list(ids), type_=postgresql.ARRAY(sa.Uuid(as_uuid=True)), unique=True)
            return column != sa.all_(array) if negate else column == sa.any_(array)
        return column.not_in(list(ids)) if negate else column.in_(list(ids))

    def backlog(self) -> Backlog:
        """How many wanted rows wait, and when the oldest was written (including rows others hold).

        Raises
        ------
        SourceUnavailableError
            When the database cannot be reached.
        """
        messages = self.tables.messages
        statement = sa.select(sa.func.count(), sa.func.min(messages.c.created_at)).where(*self._wanted())
        with self._connect() as connection:
            if not self._any_wanted(connection):
                return Backlog(0, None)  # without scanning the dead rows of a drained table
            row = connection.execute(statement).one()
        return Backlog(int(row[0]), row[1])

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as connection:
                yield connection
        except DBAPIError as error:
            raise SourceUnavailableError(
                f"Rucio database: {type(error.orig).__name__}: {error.orig}"
            ) from error
