"""The Alembic migrations create exactly the tables the code declares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from butler_registry import create_registry_engine, head_revision, schema_state, upgrade
from butler_registry._schema import METADATA, SCHEMA_VERSION


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_database")
    engine = create_registry_engine(url)
    yield engine
    engine.dispose()


def test_migrations_match_the_declared_schema(engine: sa.Engine) -> None:
    assert schema_state(engine).current is None
    state = upgrade(engine)
    assert state.is_current
    assert state.current == head_revision()
    with engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), METADATA
        )
        version = connection.execute(
            sa.text("SELECT value FROM registry_attributes WHERE name = 'schema_version'")
        ).scalar_one()
    assert differences == []
    assert version == SCHEMA_VERSION


def test_upgrade_twice_changes_nothing(engine: sa.Engine) -> None:
    upgrade(engine)
    assert upgrade(engine).is_current


@pytest.mark.postgres
def test_concurrent_creation_migrates_once(postgres_database: str) -> None:
    """Two processes opening an empty database with create=True at once (two daemons starting)."""
    import threading

    from butler_registry import open_registry

    url = postgres_database
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def create() -> None:
        barrier.wait()
        try:
            open_registry(url, create=True).close()
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
