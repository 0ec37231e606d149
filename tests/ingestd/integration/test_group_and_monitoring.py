"""Group behaviour and what monitoring sees: a rebalance between two daemons, a stop during an outage,
metrics on the HTTP port, one OpenSearch document per event."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

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
from ingestd.engine import BatchAbandonedError, Runner, StopToken
from ingestd.engine._assembly import build_pipeline, subscription, wait_for_topics
from ingestd.sources import KafkaGroupSource
from ingestd.work import Outcome

from .events import SAMPLES, synthetic_datasets
from .harness import DaemonThread, IngestSetup
from .kafka_helpers import committed_offsets, produce
from .processes import DaemonProcess, dataset_count

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _import_dimensions(ingest: IngestSetup) -> None:
    with open_registry(ingest.registry_url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")


def _members_with_partitions(ingest: IngestSetup) -> int:
    """Members of the test's group that hold at least one partition of its topic."""
    from ingestd.kafka import make_admin

    admin = make_admin(ingest.kafka)  # kept referenced: its futures resolve only while it lives
    try:
        description = admin.describe_consumer_groups([ingest.group])[ingest.group].result(10)
    except Exception:
        return 0
    return sum(
        1
        for member in description.members
        if member.assignment and any(tp.topic == ingest.topic for tp in member.assignment.topic_partitions)
    )


def test_rebalance_between_two_daemons_loses_nothing(ingest: IngestSetup) -> None:
    """A second daemon joins mid-stream and the first leaves: every event registered once, all committed."""
    _import_dimensions(ingest)
    datasets = list(synthetic_datasets(3000, seed=ingest.topic))
    events = [d.event() for d in datasets]
    produce(ingest.kafka, ingest.topic, events[:1500])
    settings = ingest.settings(batching={"max_events": 100, "max_wait_s": 0.2})
    first = DaemonThread(settings).start()
    first.wait_for(lambda: first.count() >= 300, 60, "the first daemon to start")
    second = DaemonThread(settings).start()
    second.wait_for(lambda: _members_with_partitions(ingest) == 2, 60, "the group to rebalance onto both")
    produce(ingest.kafka, ingest.topic, events[1500:])
    second.wait_for(lambda: second.count() >= 1, 60, "the second daemon to process events")
    assert first.stop_and_join() == 0
    second.wait_for(lambda: dataset_count(ingest.registry_url) >= 3000, 90, "every event registered")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        committed = committed_offsets(ingest.kafka, ingest.group, ingest.topic)
        if sum(committed.values()) == 3000:
            break
        time.sleep(0.2)
    assert second.stop_and_join() == 0
    assert sum(committed_offsets(ingest.kafka, ingest.group, ingest.topic).values()) == 3000
    assert dataset_count(ingest.registry_url) == 3000
    outcomes = [r.outcome for r in first.reports + second.reports]
    assert set(outcomes) <= {Outcome.registered, Outcome.already_present}
    assert outcomes.count(Outcome.registered) == 3000


class AwayRegistry(Registry):
    """A registry whose database is away for good (every write raises as transient)."""

    def __init__(self, inner: Registry) -> None:
        self.inner = inner
        self.attempts = 0

    def register(self, batch: Sequence[DatasetRecord]) -> RegisterResult:
        self.attempts += 1
        raise TransientRegistryError("connection refused (injected)")

    def import_dimensions(self, export_file: Path, provenance: Provenance | None = None) -> ImportResult:
        raise TransientRegistryError("connection refused (injected)")

    def import_zip(self, zip_file: Path, provenance: Provenance | None = None) -> ImportResult:
        raise TransientRegistryError("connection refused (injected)")

    def ping(self) -> None:
        self.inner.ping()

    def stats(self) -> RegistryStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


def test_stop_during_an_outage_is_bounded_and_acknowledges_nothing(ingest: IngestSetup) -> None:
    _import_dimensions(ingest)
    produce(ingest.kafka, ingest.topic, [d.event() for d in synthetic_datasets(50, seed=ingest.topic)])
    settings = ingest.settings()
    stop = StopToken(grace_s=2.0)
    away = AwayRegistry(open_registry(ingest.registry_url))
    pipeline = build_pipeline(settings, stop=stop, registry=away)
    wait_for_topics(settings, pipeline.engine.retrier)
    source = KafkaGroupSource(ingest.kafka, ingest.group, subscription(settings), session_timeout_s=6)
    runner = Runner(pipeline.engine, source, stop=stop, max_events=100, max_wait_s=0.5)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while away.attempts < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    asked = time.monotonic()
    stop.request("test")
    thread.join(15)
    took = time.monotonic() - asked
    source.close()
    pipeline.close()
    assert not thread.is_alive()
    assert took < 5, f"stop took {took:.1f} s with a 2 s grace"
    assert len(failure) == 1
    assert isinstance(failure[0], BatchAbandonedError)
    assert committed_offsets(ingest.kafka, ingest.group, ingest.topic) == {0: -1001, 1: -1001, 2: -1001}
    assert runner.stats.events == 0


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not exposed")


def test_metrics_on_the_health_port(ingest: IngestSetup) -> None:
    _import_dimensions(ingest)
    produce(
        ingest.kafka, ingest.topic, [d.event() for d in synthetic_datasets(120, seed=ingest.topic)] + [b"{"]
    )
    daemon = DaemonProcess(ingest.write_config(), ingest.workdir).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            daemon.assert_running()
            if (
                sum(max(o, 0) for o in committed_offsets(ingest.kafka, ingest.group, ingest.topic).values())
                == 121
            ):
                break
            time.sleep(0.2)
        assert daemon.health("/healthz")[0] == 200
        assert daemon.health("/readyz") == (200, {"ok": True, "not_ready": {}})
        time.sleep(0.5)  # observers run after the commit, on their own thread
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port()}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    assert _metric(text, "ingestd_events_total", outcome="registered", kind="data_product") == 120
    assert _metric(text, "ingestd_events_total", outcome="rejected") == 1
    assert _metric(text, "ingestd_dead_letters_total", error_class="invalid_json") == 1
    assert _metric(text, "ingestd_batch_size_count") >= 1
    assert _metric(text, "ingestd_stage_duration_seconds_count", stage="register") >= 1
    assert _metric(text, "ingestd_last_success_timestamp_seconds") > 0
    assert "ingestd_consumer_lag_records" in text


@pytest.mark.opensearch
def test_one_opensearch_document_per_event(
    ingest: IngestSetup, opensearch_url: str, unique_name: Callable[[str], str]
) -> None:
    _import_dimensions(ingest)
    produce(
        ingest.kafka, ingest.topic, [d.event() for d in synthetic_datasets(40, seed=ingest.topic)] + [b"nope"]
    )
    prefix = unique_name("ingestd-events").lower().replace(".", "-")[:60]
    settings = ingest.settings(
        opensearch={
            "urls": [opensearch_url],
            "index_prefix": prefix,
            "number_of_replicas": 0,
            "flush_interval_s": 0.2,
        }
    )
    daemon = DaemonThread(settings).start()
    try:
        daemon.wait_for(lambda: daemon.count() >= 41, 60, "every event")
    finally:
        assert daemon.stop_and_join() == 0  # closing the sink flushes it
    deadline = time.monotonic() + 30
    count = 0
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{opensearch_url}/{prefix}-*/_refresh", data=b"", timeout=5).close()
            with urllib.request.urlopen(f"{opensearch_url}/{prefix}-*/_count", timeout=5) as response:
                count = json.load(response)["count"]
        except OSError:
            count = 0
        if count >= 41:
            break
        time.sleep(0.5)
    assert count == 41
