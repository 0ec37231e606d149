"""Fixtures of the SQL registry tests: fresh registries on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from butler_registry import SqlRegistry, open_registry

DATA_DIR = Path(__file__).parent / "data"
BUTLER_ZIP = DATA_DIR / "butler_hsc_visit330.zip"
"""A zip written by the real Butler (``Butler.retrieve_artifacts_zip``, daf_butler 30, universe 8):
a visitSummaryJson and two calexpJson of HSC visit 330 in run ``HSC/runs/test``, with the
dimension records attached in the index."""


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a new SQLite registry file."""
    return f"sqlite:///{tmp_path / 'registry.sqlite3'}"


@pytest.fixture
def open_sql(request: pytest.FixtureRequest) -> Iterator[Callable[..., SqlRegistry]]:
    """Open registries that are closed when the test ends: ``open_sql(url, create=True)``."""
    opened: list[SqlRegistry] = []

    def make(url: str, **kwargs: object) -> SqlRegistry:
        registry = open_registry(url, **kwargs)  # type: ignore[arg-type]
        opened.append(registry)
        return registry

    yield make
    for registry in opened:
        registry.close()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def private_postgres() -> Iterator[object]:
    """A PostgreSQL server of this test alone, for tests that stop it (never the shared one)."""
    import os
    import shutil
    import tempfile

    from deploy.local._base import Layout
    from deploy.local.postgres import PostgresServer

    # The server runs as an unprivileged user: its folder must be reachable by it.
    state = Path(tempfile.mkdtemp(prefix="ingestd-registry-pg-", dir=os.environ.get("TMPDIR", "/tmp")))
    state.chmod(0o755)
    server = PostgresServer(Layout(state=state, cache=Layout.default().cache), port=free_port())
    server.install()
    server.configure()
    server.start()
    server.wait_ready()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
