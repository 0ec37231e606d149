"""Fixtures of the engine's integration tests: one ingest set-up per test on the real servers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestd.kafka import KafkaConnection

from .harness import IngestSetup, make_setup


@pytest.fixture
def ingest(
    kafka_local: KafkaConnection,
    unique_name: Callable[[str], str],
    postgres_database: str,
    tmp_path: Path,
) -> IngestSetup:
    """A topic, dead-letter topic names, a group, a storage folder holding prep.yaml, a fresh registry."""
    return make_setup(kafka_local, unique_name, postgres_database, tmp_path)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def private_postgres() -> Iterator[Any]:
    """A PostgreSQL server of this test alone, which the test may stop (never the shared one)."""
    from deploy.local._base import Layout
    from deploy.local.postgres import PostgresServer

    # The server runs as an unprivileged user: its folder must be reachable by it (pytest's tmp_path is not).
    state = Path(tempfile.mkdtemp(prefix="ingestd-engine-pg-", dir=os.environ.get("TMPDIR", "/tmp")))
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


@pytest.fixture
def private_kafka() -> Iterator[Any]:
    """A one-node Kafka cluster of this test alone, which the test may stop (never the shared ones)."""
    import uuid

    from deploy.local._base import Layout
    from deploy.local.kafka_node import KafkaNode

    state = Path(tempfile.mkdtemp(prefix="ingestd-engine-kafka-", dir=os.environ.get("TMPDIR", "/tmp")))
    state.chmod(0o755)
    node = KafkaNode(
        Layout(state=state, cache=Layout.default().cache),
        f"engine-{uuid.uuid4().hex[:6]}",
        free_port(),
        free_port(),
        heap="384m",
    )
    node.install()
    node.configure()
    node.start()
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()
        shutil.rmtree(state, ignore_errors=True)
