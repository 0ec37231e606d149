"""The registry contract on the SQL registry, on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from butler_registry import SqlRegistry
from butler_registry.interface import Registry

from .contract import RegistryContract


class TestSqliteRegistry(RegistryContract):
    """The contract on an embedded SQLite registry."""

    @pytest.fixture
    def empty_registry(self, sqlite_url: str, open_sql: Callable[..., SqlRegistry]) -> Registry:
        return open_sql(sqlite_url, create=True)


@pytest.mark.postgres
class TestPostgresRegistry(RegistryContract):
    """The contract on PostgreSQL (a fresh database of the shared server per test)."""

    @pytest.fixture
    def empty_registry(self, postgres_database: str, open_sql: Callable[..., SqlRegistry]) -> Registry:
        return open_sql(postgres_database, create=True)
