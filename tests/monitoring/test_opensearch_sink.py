"""The event sink against the real OpenSearch: one document per event, explicit mappings, no duplicates.

Also its behaviour with nothing listening (a closed port): submit stays
non-blocking, the buffer bounds memory, and every lost document is counted.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from opensearchpy import OpenSearch
from prometheus_client import CollectorRegistry

from ingestd.work import EventReport, Outcome
from monitoring.metrics import IngestMetrics
from monitoring.opensearch import (
    EventSink,
    OpenSearchSettings,
    TemplateInstall,
    install_template,
    make_client,
    template_name,
)

from .conftest import make_report


def _settings(url: str, prefix: str, **overrides: Any) -> OpenSearchSettings:
    values: dict[str, Any] = {
        "urls": url,
        "index_prefix": prefix,
        "number_of_replicas": 0,
        "flush_interval_s": 0.2,
        "flush_size": 200,
        "retry_backoff_s": 0.1,
        "retry_backoff_max_s": 0.5,
        "request_timeout_s": 5,
    }
    values.update(overrides)
    return OpenSearchSettings(**values)


def _documents(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("ingestd_opensearch_documents_total", {"result": result}) or 0.0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _known_batch() -> list[EventReport]:
    """60 FrDF, 30 UKDF and 10 USDF events; 5 FrDF ones dead-lettered, 3 UKDF ones skipped."""
    reports = []
    for offset in range(100):
        facility = "FrDF" if offset < 60 else "UKDF" if offset < 90 else "USDF"
        if offset < 5:
            reports.append(
                make_report(offset, facility=facility, outcome=Outcome.conflict, error_class="conflict",
                            reason="dataset id already registered with another run")
            )  # fmt: skip
        elif 60 <= offset < 63:
            reports.append(make_report(offset, facility=facility, outcome=Outcome.skipped))
        else:
            reports.append(make_report(offset, facility=facility, size=1_000 + offset))
    return reports


@pytest.mark.opensearch
def test_one_document_per_event_with_explicit_mappings(opensearch_url: str, index_prefix: str) -> None:
    """A known batch gives one document per event; terms by facility count them; mappings are applied."""
    registry = CollectorRegistry()
    settings = _settings(opensearch_url, index_prefix)
    sink = EventSink(settings, IngestMetrics(registry), host="test-host", version="9.9.9")
    sink.start()
    reports = _known_batch()
    sink.submit(reports[:50])
    sink.submit(reports[50:])
    assert sink.flush(60), sink.stats()
    sink.close(timeout_s=5)
    assert _documents(registry, "indexed") == 100
    assert _documents(registry, "failed") == _documents(registry, "dropped") == 0

    client = OpenSearch(hosts=[opensearch_url])
    index = f"{index_prefix}-2025.03.20"
    client.indices.refresh(index=index)
    assert client.count(index=f"{index_prefix}-*")["count"] == 100
    aggregations = client.search(
        index=f"{index_prefix}-*",
        body={
            "size": 0,
            "aggs": {
                "facility": {"terms": {"field": "facility"}},
                "outcome": {"terms": {"field": "outcome"}},
                "failed": {
                    "filter": {"term": {"outcome": "conflict"}},
                    "aggs": {"reason": {"terms": {"field": "reason.keyword"}}},
                },
                "volume": {"sum": {"field": "size_bytes"}},
                "latency": {"percentiles": {"field": "latency_seconds", "percents": [50]}},
                "per_day": {"date_histogram": {"field": "@timestamp", "calendar_interval": "day"}},
            },
        },
    )["aggregations"]
    facilities = {b["key"]: b["doc_count"] for b in aggregations["facility"]["buckets"]}
    assert facilities == {"FrDF": 60, "UKDF": 30, "USDF": 10}
    outcomes = {b["key"]: b["doc_count"] for b in aggregations["outcome"]["buckets"]}
    assert outcomes == {"registered": 92, "conflict": 5, "skipped": 3}
    assert aggregations["failed"]["reason"]["buckets"][0] == {
        "key": "dataset id already registered with another run",
        "doc_count": 5,
    }
    assert aggregations["latency"]["values"]["50.0"] == pytest.approx(12.5)
    assert [b["doc_count"] for b in aggregations["per_day"]["buckets"]] == [100]

    properties = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    for field in ("dataset_id", "transfer_id", "facility", "outcome", "run", "did"):
        assert properties[field]["type"] == "keyword", field
    for field in ("@timestamp", "ingested_at", "transferred_at"):
        assert properties[field]["type"] == "date", field
    assert properties["size_bytes"]["type"] == "long"
    assert properties["latency_seconds"]["type"] == "float"

    # A dataset id is found by exact term, as a keyword should be.
    wanted = str(reports[70].summary.dataset_id)
    hits = client.search(index=f"{index_prefix}-*", body={"query": {"term": {"dataset_id": wanted}}})
    assert hits["hits"]["total"]["value"] == 1
    assert hits["hits"]["hits"][0]["_source"]["host"] == "test-host"
    # Identifiers keep no doc values (cheaper to index) but stay searchable, by prefix too.
    assert properties["dataset_id"]["doc_values"] is False
    name = reports[70].summary.name
    assert name is not None
    hits = client.search(index=f"{index_prefix}-*", body={"query": {"prefix": {"name": name[:-3]}}})
    assert hits["hits"]["total"]["value"] == 1
    client.close()


@pytest.mark.opensearch
def test_resubmitted_events_overwrite_instead_of_duplicating(opensearch_url: str, index_prefix: str) -> None:
    """Reports sent twice (a retried bulk, a replay of the same transfers) leave one document each."""
    registry = CollectorRegistry()
    sink = EventSink(_settings(opensearch_url, index_prefix), IngestMetrics(registry))
    sink.start()
    reports = [make_report(offset) for offset in range(40)]
    sink.submit(reports)
    sink.submit(reports)
    assert sink.flush(60)
    sink.close(timeout_s=5)
    client = OpenSearch(hosts=[opensearch_url])
    client.indices.refresh(index=f"{index_prefix}-*")
    assert client.count(index=f"{index_prefix}-*")["count"] == 40
    assert _documents(registry, "indexed") == 80
    client.close()


@pytest.mark.opensearch
def test_template_install_is_idempotent(opensearch_url: str, index_prefix: str) -> None:
    """First install creates, a second changes nothing, a changed setting updates."""
    settings = _settings(opensearch_url, index_prefix)
    client = make_client(settings)
    assert install_template(client, settings) is TemplateInstall.created
    assert install_template(client, settings) is TemplateInstall.unchanged
    changed = _settings(opensearch_url, index_prefix, number_of_replicas=1)
    assert install_template(client, changed) is TemplateInstall.updated
    stored = client.indices.get_index_template(name=template_name(index_prefix))["index_templates"][0]
    assert stored["index_template"]["index_patterns"] == [f"{index_prefix}-*"]
    client.close()


@pytest.mark.opensearch
def test_refused_documents_are_counted_failed_not_retried(opensearch_url: str, index_prefix: str) -> None:
    """Documents OpenSearch refuses for good (here: an index with strict mappings) count as failed."""
    client = OpenSearch(hosts=[opensearch_url])
    client.indices.create(
        index=f"{index_prefix}-2025.03.20",
        body={
            "settings": {"number_of_replicas": 0},
            "mappings": {"dynamic": "strict", "properties": {"outcome": {"type": "keyword"}}},
        },
    )
    registry = CollectorRegistry()
    sink = EventSink(_settings(opensearch_url, index_prefix), IngestMetrics(registry))
    sink.start()
    sink.submit([make_report(offset) for offset in range(10)])
    assert sink.flush(30)
    sink.close(timeout_s=5)
    assert _documents(registry, "failed") == 10
    assert _documents(registry, "indexed") == 0
    assert sink.stats().reachable
    client.close()


def test_submit_never_blocks_while_opensearch_is_unreachable() -> None:
    """Nothing listening: submit of 10k reports is quick, the buffer keeps its bound, drops count."""
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    settings = _settings(
        f"http://127.0.0.1:{_closed_port()}", "unreachable", buffer_size=2_000, flush_size=500
    )
    sink = EventSink(settings, metrics)
    sink.start()
    reports = [make_report(offset) for offset in range(10_000)]
    started = time.perf_counter()
    for index in range(0, len(reports), 500):
        sink.submit(reports[index : index + 500])
    submit_s = time.perf_counter() - started
    deadline = time.monotonic() + 10
    while sink.stats().reachable and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = sink.stats()
    assert not stats.reachable
    assert stats.buffered <= settings.buffer_size
    assert stats.dropped >= 8_000  # everything past the bound, oldest first
    assert _documents(registry, "dropped") == stats.dropped
    assert registry.get_sample_value("ingestd_opensearch_buffered_documents") == stats.buffered
    sink.close(timeout_s=0.5)
    final = sink.stats()
    assert final.indexed == 0
    assert final.dropped == 10_000  # whatever was buffered at close is counted too
    assert _documents(registry, "dropped") == 10_000
    print(f"submit of 10k reports with OpenSearch unreachable: {submit_s * 1000:.2f} ms")


def test_submit_after_close_is_counted_not_raised() -> None:
    """A late report after shutdown is dropped and counted; it never raises into the engine."""
    registry = CollectorRegistry()
    sink = EventSink(_settings(f"http://127.0.0.1:{_closed_port()}", "closed"), IngestMetrics(registry))
    sink.close(timeout_s=0)
    sink.submit([make_report(1), make_report(2)])
    assert _documents(registry, "dropped") == 2


@pytest.mark.opensearch
def test_unusable_report_fails_alone(opensearch_url: str, index_prefix: str) -> None:
    """A report no document can be made of (an engine bug) is counted failed; its batch still goes through."""
    import dataclasses

    registry = CollectorRegistry()
    sink = EventSink(_settings(opensearch_url, index_prefix), IngestMetrics(registry))
    sink.start()
    broken = dataclasses.replace(make_report(0), committed_at="not a datetime")  # type: ignore[arg-type]
    sink.submit([broken, *(make_report(offset) for offset in range(1, 11))])
    assert sink.flush(30)
    sink.close(timeout_s=5)
    assert _documents(registry, "failed") == 1
    assert _documents(registry, "indexed") == 10
