"""Database engines for the registry, and the translation of driver errors into registry errors.

Two backends: PostgreSQL through psycopg 3 (production) and SQLite (embedded default).
``postgresql://`` URLs are taken to mean psycopg 3, as daf_butler does; SQLite runs in
WAL mode with foreign keys on, and its write transactions take the database lock at
``BEGIN`` so two writers never deadlock on a lock upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, make_url

from .interface import RegistryConfigurationError, RegistryError, SchemaVersionError, TransientRegistryError

__all__ = [
    "WRITE_OPTIONS",
    "Backend",
    "backend_of",
    "create_registry_engine",
    "normalise_url",
    "translate_errors",
]


class Backend(StrEnum):
    """Database products the registry runs on."""

    postgresql = "postgresql"
    sqlite = "sqlite"


def normalise_url(url: str | URL) -> URL:
    """Parse a registry URL; ``postgresql://`` becomes ``postgresql+psycopg://``.

    Raises
    ------
    RegistryConfigurationError
        Not a URL, or a database product/driver the registry does not support.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except exc.ArgumentError as error:
        raise RegistryConfigurationError(
            f"registry URL is not a database URL ({error}); expected sqlite:///path or postgresql://host/db"
        ) from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed.set(drivername="sqlite")
    raise RegistryConfigurationError(
        f"registry URL scheme {parsed.drivername!r} is not supported; use sqlite:///path or "
        "postgresql://user@host:port/database (psycopg 3)"
    )


def backend_of(engine: sa.Engine) -> Backend:
    """Which database product ``engine`` talks to."""
    return Backend(engine.dialect.name)


_WRITE_OPTION = "ingestd_registry_write"
WRITE_OPTIONS = {_WRITE_OPTION: True}
"""Execution options of a write transaction (``engine.execution_options(**WRITE_OPTIONS)``)."""


def create_registry_engine(
    url: str | URL, *, connect_timeout_s: float = 10.0, pool_size: int = 2
) -> sa.Engine:
    """An engine for the registry at ``url``.

    Parameters
    ----------
    url
        ``sqlite:///path`` or ``postgresql[+psycopg]://...``.
    connect_timeout_s
        How long a connection attempt may take before it counts as a transient failure.
    pool_size
        Connections kept open (PostgreSQL); one writer needs one.
    """
    parsed = normalise_url(url)
    if parsed.drivername == "sqlite":
        engine = sa.create_engine(
            parsed,
            connect_args={"timeout": connect_timeout_s, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(
        parsed,
        connect_args={
            "connect_timeout": max(1, round(connect_timeout_s)),
            "application_name": "ingestd-registry",
        },
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=False,  # a lost connection surfaces as TransientRegistryError; the caller retries
        pool_reset_on_return="rollback",
    )


def _configure_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy drive transactions; the sqlite3 module's own handling would
        # defer BEGIN and break BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # Writers take the lock up front (see WRITE_OPTIONS); readers stay deferred so an
        # export or a stats query never holds the write lock in WAL mode.
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_SCHEMA_SQLSTATES = {"42P01", "42703"}  # undefined_table, undefined_column
_PRIVILEGE_SQLSTATES = {"42501"}  # insufficient_privilege
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")  # connection, rollback, resources, operator


def _driver_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg

    return (psycopg.Error, sqlite3.Error)


def _transient_driver_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg

    # psycopg: connection lost, server shutting down; sqlite: database locked, disk I/O.
    return (psycopg.OperationalError, psycopg.InterfaceError, sqlite3.OperationalError)


def classify(error: BaseException, *, connection_invalidated: bool = False) -> type[RegistryError]:
    """The registry error a driver error (``error``, unwrapped) stands for."""
    state = getattr(error, "sqlstate", None)
    message = str(error).lower()
    if state in _SCHEMA_SQLSTATES or "no such table" in message or "no such column" in message:
        return SchemaVersionError
    if state in _PRIVILEGE_SQLSTATES or "readonly database" in message:
        return RegistryConfigurationError
    if connection_invalidated:
        return TransientRegistryError
    if state is not None and state.startswith(_TRANSIENT_SQLSTATE_CLASSES):
        return TransientRegistryError
    if isinstance(error, _transient_driver_errors()):
        return TransientRegistryError
    return RegistryError


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn driver errors raised inside the block into registry errors.

    Connection loss, serialization failures and deadlocks become
    :class:`TransientRegistryError` (retry the same call); missing tables
    :class:`SchemaVersionError`; missing privileges :class:`RegistryConfigurationError`.
    An integrity error is never transient: it means the registry's own logic is wrong.
    """
    try:
        yield
    except exc.DBAPIError as error:
        original = error.orig if error.orig is not None else error
        _raise(
            action, original, classify(original, connection_invalidated=error.connection_invalidated), error
        )
    except _driver_errors() as error:
        # A driver call made outside SQLAlchemy (role management): same classification.
        _raise(action, error, classify(error), error)


def _raise(action: str, original: BaseException, kind: type[RegistryError], cause: BaseException) -> None:
    detail = (str(original).strip().splitlines() or [""])[0]
    if kind is SchemaVersionError:
        raise SchemaVersionError(
            f"{action}: the registry schema is missing or incomplete ({detail}); run `ingestd registry init`"
        ) from cause
    raise kind(f"{action}: {type(original).__name__}: {detail}") from cause
