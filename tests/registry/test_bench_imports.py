"""``ingestd bench imports`` at CI size: both modes run, agree, and leave no database behind.

Figures are not asserted (the machine is shared); the coordinator runs the default
sizes (``--dims 100 --zips 100``) on a quiet machine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import psycopg
import pytest
import structlog

from ingestd.cli import main

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The command configures logging for the process, as a CLI does; undo it for the tests after."""
    saved_config = dict(structlog.get_config())
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.configure(**saved_config)
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def _bench_databases(postgres_url: str) -> set[str]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        rows = connection.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_imports_%'")
        return {row[0] for row in rows}


def test_bench_imports_small(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _bench_databases(postgres_url)
    code = main(
        [
            "bench",
            "imports",
            "--dims",
            "4",
            "--zips",
            "4",
            "--chunk",
            "3",
            "--detectors",
            "2",
            "--postgres",
            postgres_url,
            "--json",
        ]
    )
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["same_outcomes"] is True
    per_file, batched = document["modes"]["per_file"], document["modes"]["batched"]
    assert per_file["statuses"] == batched["statuses"] == {"inserted": 8}
    assert per_file["replay"]["statuses"] == batched["replay"]["statuses"] == {"already_present": 8}
    assert per_file["transactions"] == 8
    assert batched["transactions"] == 3  # chunks of 3, 3 and 2 files
    assert batched["statements"] < per_file["statements"] + per_file["transactions"]
    assert _bench_databases(postgres_url) == before
