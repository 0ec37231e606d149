"""Sorting daf_butler and driver errors into transient, item failure, or neither (no servers)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
import sqlalchemy.exc

from butler_registry.daf._errors import (
    causes,
    is_foreign_key_violation,
    is_item_failure,
    is_transient,
    item_status_for,
)
from butler_registry.interface import ItemStatus


def _wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as error:
            raise outer from error
    except BaseException as caught:
        return caught


def _sqlstate_error(cls: type[psycopg.Error], sqlstate: str) -> psycopg.Error:
    error = cls("server said no")
    error.sqlstate = sqlstate  # psycopg fills it from the server's diagnostic
    return error


def test_causes_walks_the_chain_once() -> None:
    error = _wrapped(RuntimeError("outer"), ValueError("inner"))
    assert [type(link) for link in causes(error)] == [RuntimeError, ValueError]
    loop = RuntimeError("loop")
    loop.__cause__ = loop
    assert list(causes(loop)) == [loop]


@pytest.mark.parametrize(
    "error",
    [
        sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("connection lost")),
        _wrapped(ValueError("daf_butler wrapper"), psycopg.OperationalError("server closed the connection")),
        _sqlstate_error(psycopg.errors.SerializationFailure, "40001"),
        _sqlstate_error(psycopg.errors.DeadlockDetected, "40P01"),
        _sqlstate_error(psycopg.errors.AdminShutdown, "57P01"),
        _sqlstate_error(psycopg.errors.TooManyConnections, "53300"),
        sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")),
        sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
        ConnectionRefusedError("connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient(error: BaseException) -> None:
    assert is_transient(error)
    assert not is_item_failure(error)


@pytest.mark.parametrize(
    "error",
    [
        sqlalchemy.exc.IntegrityError("INSERT", {}, _sqlstate_error(psycopg.errors.UniqueViolation, "23505")),
        sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: dataset")),
        _sqlstate_error(psycopg.errors.UndefinedTable, "42P01"),
        ValueError("bad value"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


def test_foreign_key_violation_means_missing_dimensions() -> None:
    from lsst.daf.butler.registry import ConflictingDefinitionError

    fk = sqlalchemy.exc.IntegrityError(
        "INSERT", {}, _sqlstate_error(psycopg.errors.ForeignKeyViolation, "23503")
    )
    error = _wrapped(ConflictingDefinitionError("Datastore already contains ..."), fk)
    assert is_foreign_key_violation(error)
    assert is_item_failure(error)
    assert item_status_for(error) is ItemStatus.missing_dimensions
    sqlite_fk = sqlalchemy.exc.IntegrityError(
        "INSERT", {}, sqlite3.IntegrityError("FOREIGN KEY constraint failed")
    )
    assert is_foreign_key_violation(sqlite_fk)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("conflict", ItemStatus.conflict),
        (LookupError("Implied value for dimension 'day_obs' not found"), ItemStatus.missing_dimensions),
        (FileNotFoundError("Resource at file:///x does not exist"), ItemStatus.invalid),
        (ImportError("No module named 'lsst.obs'"), ItemStatus.invalid),
        (TypeError("bad"), ItemStatus.invalid),
    ],
)
def test_item_statuses(error: BaseException | str, status: ItemStatus) -> None:
    from lsst.daf.butler.registry import ConflictingDefinitionError

    if isinstance(error, str):
        error = ConflictingDefinitionError("Current run 'r1' and new run 'r2' do not agree")
    assert is_item_failure(error)
    assert item_status_for(error) is status


def test_unknown_errors_are_neither() -> None:
    assert not is_item_failure(RuntimeError("a bug"))
    assert not is_item_failure(KeyboardInterrupt())
