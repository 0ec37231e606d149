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
