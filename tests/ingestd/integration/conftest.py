"""Fixtures of the engine's integration tests: one ingest set-up per test on the real servers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.local import free_port
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
