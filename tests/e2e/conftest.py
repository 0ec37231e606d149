"""Fixtures of the end-to-end tests: the test bed as an :class:`ingestd.e2e.TestBed`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingestd.e2e import TestBed
from ingestd.kafka import KafkaConnection


@pytest.fixture
def testbed(
    kafka_central: KafkaConnection,
    kafka_local: KafkaConnection,
    postgres_url: str,
    opensearch_url: str,
    prometheus: object,
) -> TestBed:
    """Every server of the test bed, and MirrorMaker 2's jars (installed into the cache if missing)."""
    lib = os.environ.get("INGESTD_TESTBED_KAFKA_LIB")
    if not lib:
        from deploy.local._base import Layout
        from deploy.local.kafka_node import install_kafka_jars

        lib = str(install_kafka_jars(Layout.default()))
    return TestBed(
        central=kafka_central,
        local=kafka_local,
        postgres_url=postgres_url,
        opensearch_url=opensearch_url,
        kafka_lib=Path(lib),
        prometheus_targets_dir=prometheus.targets_dir,  # type: ignore[attr-defined]
        prometheus_url=prometheus.url,  # type: ignore[attr-defined]
    )
