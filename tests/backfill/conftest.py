"""Fixtures of the backfill tests: a real Rucio server (REST on 127.0.0.1) over a fresh database per test.

Rucio's schema is bootstrapped once per PostgreSQL server by Rucio's own tools (in
its own virtualenv, :mod:`deploy.local.rucio_env`) into a template database that
each test copies in a tenth of a second; files, replicas and their
``rubin_butler``/``rubin_sidecar`` metadata are written by Rucio's own
``add_replicas``, and ingestd reads them back through the real rucio-clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from butler_registry import open_registry
from deploy.local import free_port
from deploy.local.rucio_env import (
    PostgresAdmin,
    RucioEnv,
    clone_database,
    ensure_rucio_venv,
    ensure_template_database,
    write_rucio_client_config,
    write_rucio_config,
)

from .support import RSE, SAMPLES, SCOPE, BackfillBed


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
def bed(  # noqa: PLR0917 - pytest passes fixtures by name
    postgres_url: str,
    postgres_database: str,
    rucio_venv: Path,
    rucio_template: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BackfillBed]:
    """A Rucio server with an RSE (root:// protocol) and a scope, a fresh registry, storage and settings."""
    from rucio.common.config import clean_cached_config

    admin = PostgresAdmin.from_url(postgres_url)
    with clone_database(admin, rucio_template) as url:
        config = write_rucio_config(tmp_path / "rucio", url, venv=rucio_venv, pool_size=10)
        rucio = RucioEnv(rucio_venv, config)
        rucio.add_rses_and_scopes([RSE, "OTHER_DISK"], [SCOPE])
        rucio.add_rse_protocol(RSE, scheme="root", hostname="xrd5", port=1094, prefix="//rucio/")
        rucio.add_rse_protocol("OTHER_DISK", scheme="root", hostname="other", port=1094, prefix="//rucio/")
        with rucio.rest_server(free_port()) as server:
            client_config = write_rucio_client_config(tmp_path / "client", server)
            monkeypatch.setenv("RUCIO_CONFIG", str(client_config))
            clean_cached_config()
            storage = tmp_path / "storage"
            storage.mkdir()
            registry = open_registry(postgres_database, create=True)
            try:
                registry.import_dimensions(SAMPLES / "prep.yaml")
            finally:
                registry.close()
            yield BackfillBed(
                rucio=rucio,
                server=server,
                client_config=client_config,
                registry_url=postgres_database,
                storage=storage,
                workdir=tmp_path,
            )
            clean_cached_config()
