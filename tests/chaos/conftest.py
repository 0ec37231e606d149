"""Fixtures of the chaos suite: a test bed of which the suite owns the parts it breaks.

The central Kafka cluster is the shared one (never touched). PostgreSQL (Rucio's
database and the registry) and the facility's local Kafka cluster are private to
the module, so they can be restarted; OpenSearch is the shared server reached
through a proxy the suite can cut.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.local import private_kafka, private_postgres
from ingestd.e2e import TestBed
from ingestd.kafka import KafkaConnection

from ._support import TcpProxy


@dataclass
class ChaosBed:
    """The servers of the chaos suite, and handles to break them."""

    testbed: TestBed
    postgres: Any
    kafka: Any
    opensearch: TcpProxy


@pytest.fixture(scope="module")
def chaos_bed(kafka_central: KafkaConnection, opensearch_url: str) -> Iterator[ChaosBed]:
    """Private PostgreSQL and local Kafka, the shared central Kafka, OpenSearch behind a proxy."""
    target = urllib.parse.urlsplit(opensearch_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    proxy.up()
    lib = os.environ.get("INGESTD_TESTBED_KAFKA_LIB")
    with private_postgres() as postgres, private_kafka("chaos-local") as kafka:
        testbed = TestBed(
            central=kafka_central,
            local=KafkaConnection(bootstrap_servers=f"127.0.0.1:{kafka.port}", client_id="ingestd-chaos"),
            postgres_url=f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres",
            opensearch_url=proxy.url,
            kafka_lib=Path(lib) if lib else None,
        )
        try:
            yield ChaosBed(testbed, postgres, kafka, proxy)
        finally:
            proxy.close()
