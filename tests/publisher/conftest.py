"""Fixtures of the publisher's tests: a real Rucio database per test, unique topics on real Kafka.

Rucio's schema is built once per PostgreSQL server by Rucio itself (its own
``build_database`` in its own virtualenv, see :mod:`deploy.local.rucio_env`) into a
template database; each test gets a copy (``createdb -T``, ~0.1 s) and writes
rows with Rucio's own ``add_messages``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deploy.local.rucio_env import (
    PostgresAdmin,
    RucioEnv,
    clone_database,
    ensure_rucio_venv,
    ensure_template_database,
    write_rucio_config,
)
from ingestd.kafka import KafkaConnection

from .support import RucioDatabase, TestTopics, make_site_map


@pytest.fixture(scope="session")
def rucio_venv() -> Path:
    """The virtualenv holding the real ``rucio[postgresql]`` server package (built once, cached)."""
    return ensure_rucio_venv()


@pytest.fixture(scope="session")
def rucio_template(postgres_url: str, rucio_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name of the database holding Rucio's bootstrapped schema."""
    admin = PostgresAdmin.from_url(postgres_url)
    return ensure_template_database(admin, rucio_venv, tmp_path_factory.mktemp("rucio-template"))


@pytest.fixture
def rucio_db(
    postgres_url: str, rucio_venv: Path, rucio_template: str, tmp_path: Path
) -> Iterator[RucioDatabase]:
    """A fresh Rucio database (copy of the template) with a ``rucio.cfg`` pointing at it."""
    admin = PostgresAdmin.from_url(postgres_url)
    with clone_database(admin, rucio_template) as url:
        config = write_rucio_config(tmp_path / "rucio", url, venv=rucio_venv)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            yield RucioDatabase(url=url, rucio=RucioEnv(rucio_venv, config), engine=engine)
        finally:
            engine.dispose()


@pytest.fixture
def test_topics(kafka_central: KafkaConnection, unique_name: Callable[[str], str]) -> Iterator[TestTopics]:
    """Unique topic names for this test (deleted afterwards)."""
    prefix = unique_name("pub")
    topics = TestTopics(prefix, make_site_map(prefix), kafka_central)
    yield topics
    topics.delete_all()
