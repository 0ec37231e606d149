"""The registry contract (``tests/registry/contract.py``) on the real-Butler adapter.

The same tests the SQL registry passes, against :class:`DafButlerRegistry` on a fresh
daf_butler repository: SQLite for speed, and PostgreSQL (the production layout).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from butler_registry.daf import DafButlerRegistry, DafButlerSettings
from butler_registry.interface import Registry
from tests.registry.contract import RegistryContract


@pytest.mark.butler
class TestDafButlerOnSqlite(RegistryContract):
    """The contract on a Butler repository with a SQLite registry."""

    @pytest.fixture
    def empty_registry(self, sqlite_repo: Path) -> Iterator[Registry]:
        with DafButlerRegistry(DafButlerSettings(repo=str(sqlite_repo))) as registry:
            yield registry


@pytest.mark.butler
@pytest.mark.postgres
class TestDafButlerOnPostgres(RegistryContract):
    """The contract on a Butler repository whose registry is a fresh PostgreSQL database."""

    @pytest.fixture
    def empty_registry(self, postgres_repo: Path) -> Iterator[Registry]:
        with DafButlerRegistry(DafButlerSettings(repo=str(postgres_repo))) as registry:
            yield registry
