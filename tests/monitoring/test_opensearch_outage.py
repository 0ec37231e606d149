"""OpenSearch stopped mid-run: ingest keeps handing over reports, losses are counted, documents resume.

Uses a PRIVATE OpenSearch node (never the shared one), started from the test
bed's cached distribution, stopped and started again by this test.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opensearchpy import OpenSearch
from prometheus_client import CollectorRegistry

from deploy.local._base import Layout
from deploy.local.opensearch import OpenSearchServer
from ingestd.work import EventReport
from monitoring.metrics import IngestMetrics
from monitoring.opensearch import EventSink, OpenSearchSettings

from .conftest import make_report

PREFIX = "outage-events"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def private_opensearch() -> Iterator[OpenSearchServer]:
    """A private single-node OpenSearch under the test bed's state folder (traversable by its user)."""
    default = Layout.default()
    state = default.state / "private" / f"monitoring-{uuid.uuid4().hex[:8]}"
    state.mkdir(parents=True)
    server = OpenSearchServer(
        Layout(state=state, cache=default.cache), port=_free_port(), transport_port=_free_port()
    )
    try:
        server.install()
        server.configure()
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class _Ingest:
    """Stands in for the engine: hands reports to the sink batch after batch, timing each hand-over."""

    sink: EventSink
    submit_seconds: list[float] = field(default_factory=list)
    next_offset: int = 0

    def run_batches(self, batches: int, size: int) -> list[EventReport]:
        sent: list[EventReport] = []
        for _ in range(batches):
            batch = [make_report(self.next_offset + i) for i in range(size)]
            self.next_offset += size
            started = time.perf_counter()
            self.sink.submit(batch)
            self.submit_seconds.append(time.perf_counter() - started)
            sent += batch
        return sent


def _count(url: str) -> int:
    client = OpenSearch(hosts=[url])
    try:
        client.indices.refresh(index=f"{PREFIX}-*")
        return int(client.count(index=f"{PREFIX}-*")["count"])
    finally:
        client.close()


def _documents(registry: CollectorRegistry, result: str) -> int:
    return int(registry.get_sample_value("ingestd_opensearch_documents_total", {"result": result}) or 0)


@pytest.mark.opensearch
@pytest.mark.slow
def test_opensearch_outage_never_blocks_ingest(private_opensearch: OpenSearchServer) -> None:
    """Before, during and after an outage: submits stay instant, drops are counted, indexing resumes."""
    url = f"http://127.0.0.1:{private_opensearch.port}"
    registry = CollectorRegistry()
    settings = OpenSearchSettings(
        urls=url,
        index_prefix=PREFIX,
        number_of_replicas=0,
        buffer_size=3_000,
        flush_size=250,
        flush_interval_s=0.2,
        retry_backoff_s=0.2,
        retry_backoff_max_s=1.0,
        request_timeout_s=3,
    )
    sink = EventSink(settings, IngestMetrics(registry))
    sink.start()
    ingest = _Ingest(sink)
    try:
        # 1. Healthy: everything is indexed.
        ingest.run_batches(batches=10, size=100)
        assert sink.flush(60), sink.stats()
        assert _count(url) == 1_000

        # 2. OpenSearch stops; ingest goes on at its own pace in a thread and must finish untroubled.
        private_opensearch.stop()
        worker = threading.Thread(target=ingest.run_batches, kwargs={"batches": 50, "size": 100})
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "submit blocked while OpenSearch was down"
        deadline = time.monotonic() + 30
        while sink.stats().reachable and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = sink.stats()
        assert not stats.reachable
        assert stats.buffered <= settings.buffer_size
        assert stats.dropped >= 5_000 - settings.buffer_size - settings.flush_size
        assert _documents(registry, "dropped") == stats.dropped
        assert registry.get_sample_value("ingestd_opensearch_buffered_documents") == stats.buffered

        # 3. OpenSearch returns: the buffer drains by itself and new documents flow again.
        private_opensearch.start()
        private_opensearch.wait_ready()
        ingest.run_batches(batches=5, size=100)
        assert sink.flush(120), sink.stats()
        stats = sink.stats()
        assert stats.reachable
        assert stats.submitted == 6_500
        assert stats.indexed + stats.dropped + stats.failed == 6_500
        assert stats.indexed > 1_000 + 500  # buffered documents came through, not just the new ones
        assert _count(url) == stats.indexed
    finally:
        sink.close(timeout_s=5)
    slowest_ms = max(ingest.submit_seconds) * 1000
    print(
        f"outage: {len(ingest.submit_seconds)} submits of 100 reports, slowest {slowest_ms:.2f} ms; "
        f"indexed {sink.stats().indexed}, dropped {sink.stats().dropped}"
    )
