"""A database that goes away: transient errors, nothing half-written, recovery by retrying.

Runs on a private PostgreSQL server started for the test (the shared one is never stopped).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from butler_registry import SqlRegistry, TransientRegistryError
from butler_registry.interface import ItemStatus, RegisterResult

from .contract import DatasetFactory, statuses

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _retry(action: Callable[[], RegisterResult], attempts: int = 5) -> RegisterResult:
    """What the engine does: retry the same batch on transient errors only."""
    for _ in range(attempts - 1):
        try:
            return action()
        except TransientRegistryError:
            continue
    return action()


def test_outage_raises_transient_and_retry_registers_once(
    private_postgres: Any, samples_dir: Path, tmp_path: Path, open_sql: Callable[..., SqlRegistry]
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{private_postgres.port}/postgres"
    registry = open_sql(url, create=True, connect_timeout_s=2)
    registry.import_dimensions(samples_dir / "prep.yaml")
    datasets = DatasetFactory(tmp_path)
    before = datasets.calexps(range(10))
    assert statuses(registry.register(before)) == [ItemStatus.inserted] * 10

    private_postgres.stop()
    during = datasets.calexps(range(10, 20))
    with pytest.raises(TransientRegistryError):
        registry.register(during)
    with pytest.raises(TransientRegistryError):
        registry.register(during)  # a fresh connection attempt is refused too
    with pytest.raises(TransientRegistryError):
        registry.ping()

    private_postgres.start()
    private_postgres.wait_ready()
    result = _retry(lambda: registry.register(during))
    assert statuses(result) == [ItemStatus.inserted] * 10
    assert statuses(registry.register([*before, *during])) == [ItemStatus.already_present] * 20
    assert registry.stats().datasets == 20


def test_connection_killed_inside_a_transaction_commits_nothing(
    private_postgres: Any, samples_dir: Path, tmp_path: Path, open_sql: Callable[..., SqlRegistry]
) -> None:
    """The backend serving a batch is terminated mid-way: transient error, and no trace of the batch."""
    import psycopg
    import sqlalchemy as sa

    url = f"postgresql://postgres@127.0.0.1:{private_postgres.port}/postgres"
    registry = open_sql(url, create=True, connect_timeout_s=2)
    registry.import_dimensions(samples_dir / "prep.yaml")
    datasets = DatasetFactory(tmp_path)
    # Items shipping a new dimension record take the full transactional path: the record
    # is written first, then the batch's connection is killed before the datasets are.
    batch = datasets.calexps(range(5), run="HSC/runs/killed")

    @sa.event.listens_for(registry.engine, "before_cursor_execute")
    def _kill_on_dataset_type_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO dataset_type"):
            pid = conn.connection.driver_connection.info.backend_pid
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with pytest.raises(TransientRegistryError):
        registry.register(batch)
    sa.event.remove(registry.engine, "before_cursor_execute", _kill_on_dataset_type_insert)
    with registry.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM collection")).scalar_one() == 0
        assert connection.execute(sa.text("SELECT count(*) FROM dataset")).scalar_one() == 0
    assert statuses(_retry(lambda: registry.register(batch))) == [ItemStatus.inserted] * 5
