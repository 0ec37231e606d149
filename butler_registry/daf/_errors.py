"""Sorting what the real Butler raises into "retry the batch" and "this item is at fault".

``Butler.ingest`` reports everything as exceptions: a lost database connection, a
dataset that conflicts with the registry, a data ID whose dimension records are
missing, a file that is not there. The registry contract needs these apart:

* **transient** (:func:`is_transient`): the database went away, or the transaction
  lost a race (serialization failure, deadlock, lock timeout). Nothing of the batch
  is kept; the caller retries the same batch later.
* **item failures** (:func:`is_item_failure`): the data of one item cannot be
  registered as sent. Its status is decided by :func:`item_status_for`; the other
  items of the batch still go in.
* anything else is a bug or a broken installation and propagates unchanged.

The classification walks the exception chain (``__cause__`` then ``__context__``)
because daf_butler wraps driver errors (an ``IntegrityError`` becomes a
``ConflictingDefinitionError``; a lost connection may surface inside either).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import psycopg
import sqlalchemy.exc

from butler_registry.interface import ItemStatus

__all__ = [
    "causes",
    "is_foreign_key_violation",
    "is_item_failure",
    "is_transient",
    "item_status_for",
]

_MAX_CHAIN = 16
"""Exception chains longer than this are cut: a cycle or a pathological wrapper must not hang us."""

_TRANSIENT_SQLSTATE_PREFIXES = (
    "08",  # connection exception
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "55P03",  # lock_not_available
    "57P",  # operator intervention: admin/crash shutdown, cannot connect now
    "58",  # system error (I/O)
)

_SQLITE_TRANSIENT_MESSAGES = ("database is locked", "database table is locked", "disk i/o error")

_FOREIGN_KEY_SQLSTATE = "23503"


def causes(error: BaseException) -> Iterator[BaseException]:
    """Yield ``error`` and the exceptions behind it, nearest first.

    Follows ``__cause__`` (or ``__context__``) and SQLAlchemy's ``orig`` (the
    driver's exception inside a ``DBAPIError``); each exception is yielded once.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending and len(seen) < _MAX_CHAIN:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        original = getattr(current, "orig", None)
        if isinstance(original, BaseException):
            pending.append(original)
        behind = current.__cause__ if current.__cause__ is not None else current.__context__
        if behind is not None:
            pending.append(behind)


def _sqlstate(error: BaseException) -> str | None:
    state = getattr(error, "sqlstate", None)
    return state if isinstance(state, str) else None


def _one_is_transient(error: BaseException) -> bool:
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError):
        return True
    if isinstance(error, psycopg.Error):
        state = _sqlstate(error)
        if state is not None:
            return state.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
        # No SQLSTATE: the failure happened client-side, i.e. the connection itself.
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
    if isinstance(error, sqlite3.OperationalError):
        message = str(error).lower()
        return any(text in message for text in _SQLITE_TRANSIENT_MESSAGES)
    return isinstance(error, ConnectionError | TimeoutError)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` means "the database is away or the transaction lost a race: retry".

    Integrity errors are never transient: retrying them would fail the same way.
    """
    return any(_one_is_transient(link) for link in causes(error))


def is_foreign_key_violation(error: BaseException) -> bool:
    """Whether a foreign-key violation is in the chain: a dimension record the dataset needs is missing."""
    for link in causes(error):
        if isinstance(link, psycopg.errors.ForeignKeyViolation):
            return True
        if _sqlstate(link) == _FOREIGN_KEY_SQLSTATE:
            return True
        if isinstance(link, sqlite3.IntegrityError) and "foreign key" in str(link).lower():
            return True
    return False


def _lsst_error_classes() -> tuple[type[BaseException], ...]:
    """daf_butler's own error bases, imported only when the optional extra is present."""
    from lsst.daf.butler.registry import ConflictingDefinitionError, DataIdError  # type: ignore[attr-defined]

    return (ConflictingDefinitionError, DataIdError)


def is_item_failure(error: BaseException) -> bool:
    """Whether ``error`` is about the data of the items ingested, not the system.

    These are the failures ``Butler.ingest`` raises for bad input: conflicts with the
    registry, unknown or missing dimension values, a file that is not there, a
    formatter that cannot be imported, values of the wrong type. Transient errors are
    checked first by the caller and are never item failures.
    """
    if is_transient(error):
        return False
    item_errors = (
        *_lsst_error_classes(),
        sqlalchemy.exc.IntegrityError,
        sqlalchemy.exc.DataError,
        LookupError,
        FileNotFoundError,
        ImportError,
        TypeError,
        ValueError,
    )
    return isinstance(error, item_errors)


def item_status_for(error: BaseException) -> ItemStatus:
    """The likely status of a single item whose ingest failed with ``error`` (an item failure).

    Missing dimension records are recognised by their two symptoms (a foreign-key
    violation, or a ``LookupError`` while expanding the data ID). Both symptoms have
    other causes too (an unknown storage class is a ``KeyError``), so the caller
    confirms ``missing_dimensions`` by querying the records, which also names them,
    and falls back to ``invalid`` when none is missing.
    """
    from lsst.daf.butler.registry import ConflictingDefinitionError

    if is_foreign_key_violation(error):
        return ItemStatus.missing_dimensions
    if isinstance(error, ConflictingDefinitionError | sqlalchemy.exc.IntegrityError):
        return ItemStatus.conflict
    if isinstance(error, LookupError):
        return ItemStatus.missing_dimensions
    return ItemStatus.invalid
