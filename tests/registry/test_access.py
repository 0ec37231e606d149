"""Read-only access on PostgreSQL: ``grant-readonly`` makes a role that can read and cannot write."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from butler_registry import RegistryConfigurationError, SqlRegistry, open_registry
from butler_registry.interface import ItemStatus

from .contract import DatasetFactory, statuses

pytestmark = pytest.mark.postgres


@pytest.fixture
def reader_role(postgres_database: str) -> Iterator[str]:
    """A role name unique to this test; dropped afterwards (roles belong to the whole server)."""
    role = f"reader_{uuid.uuid4().hex[:10]}"
    yield role
    url = make_url(postgres_database).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_readonly_role_reads_and_postgres_refuses_its_insert(
    postgres_database: str,
    reader_role: str,
    samples_dir: Path,
    tmp_path: Path,
    open_sql: Callable[..., SqlRegistry],
) -> None:
    owner = open_sql(postgres_database, create=True)
    owner.import_dimensions(samples_dir / "prep.yaml")
    datasets = DatasetFactory(tmp_path)
    owner.register(datasets.calexps(range(3)))
    assert owner.grant_readonly(reader_role, login=True) is True
    assert owner.grant_readonly(reader_role, login=True) is False  # idempotent

    as_reader = make_url(postgres_database).set(drivername="postgresql", username=reader_role)
    with psycopg.connect(as_reader.render_as_string(hide_password=False)) as reader:
        assert reader.execute("SELECT count(*) FROM dataset").fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(
                "INSERT INTO dataset_type (name, dimensions, storage_class) VALUES ('x', '[]', 'Thing')"
            )
        reader.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("DELETE FROM dataset")
        reader.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("CREATE TABLE sneaky (id int)")

    # Through the registry: the reader can ping and count, and a write is a configuration error.
    with open_registry(as_reader.render_as_string(hide_password=False)) as registry:
        registry.ping()
        assert registry.stats().datasets == 3
        with pytest.raises(RegistryConfigurationError, match="InsufficientPrivilege"):
            registry.register([datasets.calexp(7)])
    assert statuses(owner.register([datasets.calexp(7)])) == [ItemStatus.inserted]


def test_grant_readonly_needs_postgres(sqlite_url: str, open_sql: Callable[..., SqlRegistry]) -> None:
    registry = open_sql(sqlite_url, create=True)
    with pytest.raises(RegistryConfigurationError, match="PostgreSQL"):
        registry.grant_readonly("reader")


def test_grant_readonly_refuses_odd_role_names(
    postgres_database: str, open_sql: Callable[..., SqlRegistry]
) -> None:
    registry = open_sql(postgres_database, create=True)
    with pytest.raises(RegistryConfigurationError, match="identifier"):
        registry.grant_readonly('x"; DROP TABLE dataset; --')


def test_readonly_role_can_read_tables_created_later(
    postgres_database: str, reader_role: str, open_sql: Callable[..., SqlRegistry]
) -> None:
    """Default privileges: a table a later migration adds (as the owner) is readable too."""
    owner = open_sql(postgres_database, create=True)
    owner.grant_readonly(reader_role, login=True)
    with owner.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE added_by_a_later_migration (id int)")
    as_reader = make_url(postgres_database).set(drivername="postgresql", username=reader_role)
    with psycopg.connect(as_reader.render_as_string(hide_password=False)) as reader:
        assert reader.execute("SELECT count(*) FROM added_by_a_later_migration").fetchone() == (0,)
