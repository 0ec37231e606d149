"""Transient failures: the registry away (a private PostgreSQL stopped for 30 s), registry errors mid-batch.

Nothing is acknowledged while a failure lasts, nothing is dead-lettered for it,
readiness says why, and the daemon recovers by itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from butler_registry import open_registry
from butler_registry.interface import (
    DatasetRecord,
    ImportResult,
    Provenance,
    RegisterResult,
    Registry,
    RegistryStats,
    TransientRegistryError,
)
from ingestd.engine import Runner, StopToken
from ingestd.engine._assembly import build_pipeline, subscription, wait_for_topics
from ingestd.kafka import KafkaConnection, make_admin
from ingestd.sources import KafkaGroupSource, RawRecord

from .events import SAMPLES, synthetic_datasets
from .harness import IngestSetup, make_setup
from .kafka_helpers import committed_offsets, produce, read_all
from .processes import DaemonProcess, dataset_count

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

OUTAGE_S = 30.0


def _committed_total(ingest: IngestSetup) -> int:
    return sum(
        max(offset, 0) for offset in committed_offsets(ingest.kafka, ingest.group, ingest.topic).values()
    )


def _wait(
    condition: Callable[[], bool], timeout_s: float, what: str, daemon: DaemonProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if daemon is not None:
            daemon.assert_running()
        time.sleep(0.25)
    if daemon is not None:
        daemon.dump_stacks()
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{daemon.tail()}" if daemon else ""))


def test_postgres_stopped_for_30_seconds_mid_stream(
    private_postgres: Any, kafka_local: KafkaConnection, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{private_postgres.port}/postgres"
    ingest = make_setup(kafka_local, unique_name, url, tmp_path)
    with open_registry(url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    datasets = list(synthetic_datasets(2000, seed=ingest.topic))
    events = [d.event() for d in datasets]
    produce(ingest.kafka, ingest.topic, events[:1000])

    config = ingest.write_config(retry={"initial_backoff_s": 0.5, "max_backoff_s": 4})
    daemon = DaemonProcess(config, tmp_path).start()
    try:
        _wait(lambda: dataset_count(url) == 1000, 60, "the first 1000 events", daemon)
        _wait(lambda: _committed_total(ingest) == 1000, 30, "their offsets", daemon)
        assert daemon.health()[0] == 200

        private_postgres.stop()
        stopped = time.monotonic()
        produce(ingest.kafka, ingest.topic, events[1000:])
        _wait(lambda: daemon.health()[0] == 503, 25, "readiness to drop", daemon)
        _status, body = daemon.health()
        assert "registry" in body["not_ready"], body
        while time.monotonic() - stopped < OUTAGE_S:
            daemon.assert_running()
            assert _committed_total(ingest) == 1000, "offsets moved while the registry was away"
            time.sleep(1.0)

        private_postgres.start()
        private_postgres.wait_ready()
        _wait(lambda: dataset_count(url) == 2000, 90, "the daemon to recover and register the rest", daemon)
        _wait(lambda: _committed_total(ingest) == 2000, 30, "every offset committed", daemon)
        _wait(lambda: daemon.health()[0] == 200, 30, "readiness to return", daemon)
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.stop_quietly()

    assert dataset_count(url) == 2000
    admin = make_admin(ingest.kafka)
    if ingest.dead_letter_topic in admin.list_topics(timeout=10).topics:
        assert read_all(ingest.kafka, ingest.dead_letter_topic, timeout_s=3) == [], (
            "a transient failure was dead-lettered"
        )
    log = daemon.log.read_text()
    assert "stage_retry" in log
    assert "stage_recovered" in log


class FlakyRegistry(Registry):
    """A real registry whose first ``failures`` register calls raise as if the database were away.

    Before each call it records what Kafka holds as committed, so the test can
    check offsets never move before the registry has committed.
    """

    def __init__(self, inner: Registry, failures: int, probe: Callable[[], int]) -> None:
        self.inner = inner
        self.failures = failures
        self.probe = probe
        self.timeline: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def register(self, batch: Sequence[DatasetRecord]) -> RegisterResult:
        with self._lock:
            self.timeline.append(("register", self.probe()))
            if self.failures > 0:
                self.failures -= 1
                raise TransientRegistryError("connection to the database lost (injected)")
        result = self.inner.register(batch)
        with self._lock:
            self.timeline.append(("committed", len(batch)))
        return result

    def import_dimensions(self, export_file: Path, provenance: Provenance | None = None) -> ImportResult:
        return self.inner.import_dimensions(export_file, provenance)

    def import_zip(self, zip_file: Path, provenance: Provenance | None = None) -> ImportResult:
        return self.inner.import_zip(zip_file, provenance)

    def ping(self) -> None:
        self.inner.ping()

    def stats(self) -> RegistryStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


class RecordingSource(KafkaGroupSource):
    """The real group source, noting when it acknowledges."""

    timeline: list[tuple[str, int]]

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        super().acknowledge(records)
        self.timeline.append(("acknowledged", len(records)))


def test_offsets_committed_only_after_the_registry_commits(ingest: IngestSetup) -> None:
    with open_registry(ingest.registry_url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    datasets = list(synthetic_datasets(300, seed=ingest.topic))
    produce(ingest.kafka, ingest.topic, [d.event() for d in datasets])

    settings = ingest.settings(batching={"max_events": 1000, "max_wait_s": 1.0})
    stop = StopToken(10)
    flaky = FlakyRegistry(
        open_registry(ingest.registry_url), failures=4, probe=lambda: _committed_total(ingest)
    )
    pipeline = build_pipeline(settings, stop=stop, registry=flaky)
    wait_for_topics(settings, pipeline.engine.retrier)
    source = RecordingSource(ingest.kafka, ingest.group, subscription(settings), session_timeout_s=6)
    source.timeline = flaky.timeline
    runner = Runner(
        pipeline.engine,
        source,
        stop=stop,
        max_events=1000,
        max_wait_s=1.0,
        health=pipeline.health,
        observers=pipeline.observers,
    )
    pipeline.health.set_ready()
    reasons: set[str] = set()
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while runner.stats.events < 300 and time.monotonic() < deadline:
            reasons.update(pipeline.health.ready()[1]["not_ready"])
            time.sleep(0.02)
    finally:
        stop.request("test")
        thread.join(20)
        source.close()
        pipeline.close()

    assert runner.stats.events == 300
    steps = [step for step, _ in flaky.timeline]
    first_commit = steps.index("committed")
    assert steps[:first_commit] == ["register"] * 5, steps  # four injected failures, then success
    assert all(value == 0 for step, value in flaky.timeline[:first_commit]), (
        "offsets moved before the registry committed"
    )
    assert steps.index("acknowledged") > first_commit
    assert "registry" in reasons, "readiness must drop while the registry fails"
    assert pipeline.health.ready()[0], pipeline.health.ready()
    assert pipeline.metrics.retries.labels(stage="register")._value.get() == 4
    assert dataset_count(ingest.registry_url) == 300
    assert _committed_total(ingest) == 300


BROKER_OUTAGE_S = 15.0


def test_broker_away_then_back(
    private_kafka: Any, postgres_database: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """The facility's Kafka stops: the daemon stays up, reports not ready, and carries on when it returns."""
    kafka = KafkaConnection(bootstrap_servers=f"127.0.0.1:{private_kafka.port}")
    ingest = make_setup(kafka, unique_name, postgres_database, tmp_path)
    with open_registry(postgres_database) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    events = [d.event() for d in synthetic_datasets(600, seed=ingest.topic)]
    produce(kafka, ingest.topic, events[:300])
    config = ingest.write_config(
        retry={"initial_backoff_s": 0.5, "max_backoff_s": 3}, dead_letters={"delivery_timeout_s": 5}
    )
    daemon = DaemonProcess(config, tmp_path, faults=True, env={"INGESTD_FAULT_STACKS_ON_USR1": "1"}).start()
    try:
        _wait(lambda: _committed_total(ingest) == 300, 60, "the first 300 events", daemon)
        private_kafka.stop()
        stopped = time.monotonic()
        _wait(lambda: daemon.health()[0] == 503, 30, "readiness to drop", daemon)
        assert "kafka" in daemon.health()[1]["not_ready"]
        while time.monotonic() - stopped < BROKER_OUTAGE_S:
            daemon.assert_running()
            time.sleep(1.0)
        private_kafka.start()
        private_kafka.wait_ready()
        produce(kafka, ingest.topic, events[300:])
        _wait(
            lambda: dataset_count(postgres_database) == 600, 90, "the rest after the broker returned", daemon
        )
        _wait(lambda: _committed_total(ingest) == 600, 60, "every offset committed", daemon)
        _wait(lambda: daemon.health()[0] == 200, 30, "readiness to return", daemon)
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.stop_quietly()
    assert dataset_count(postgres_database) == 600
