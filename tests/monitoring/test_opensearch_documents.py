"""Event documents, their ids and indices, the index template and the settings: pure logic, no server."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ingestd.work import EventReport, EventSummary, Outcome, Position
from monitoring.dashboards import mapped_fields
from monitoring.opensearch import (
    OpenSearchSettings,
    document_id,
    event_document,
    index_name,
    index_template,
    prepare,
)

from .conftest import COMMITTED_AT, make_report


def _flatten(document: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in document.items():
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_document_fields_are_all_mapped() -> None:
    """Every field a document can carry is mapped explicitly (nothing left to dynamic mapping)."""
    full = make_report(1, outcome=Outcome.conflict, error_class="conflict", reason="same id, other run")
    document = event_document(full, ingested_at=COMMITTED_AT, host="node-1", version="0.1.0")
    fields = mapped_fields()
    assert _flatten(document) <= set(fields)
    assert fields["dataset_id"] == "keyword"
    assert fields["transferred_at"] == "date"
    assert fields["size_bytes"] == "long"
    assert fields["latency_seconds"] == "float"


def test_document_content() -> None:
    """A registered raw file: ids, DID, sizes, checksums, times in UTC ISO 8601, latency in seconds."""
    report = make_report(7, latency_s=12.5)
    document = event_document(report, ingested_at=COMMITTED_AT)
    summary = report.summary
    assert document["@timestamp"] == "2025-03-20T20:15:43.153Z"
    assert document["transferred_at"] == "2025-03-20T20:15:30.653Z"
    assert document["latency_seconds"] == 12.5
    assert document["outcome"] == "registered"
    assert document["dataset_id"] == str(summary.dataset_id)
    assert document["did"] == f"raw:{summary.name}"
    assert document["kind"] == "raw_file"
    assert document["size_bytes"] == 1000
    assert document["source"] == {
        "type": "kafka",
        "topic": "IN2P3_BUTLER_DISK-raw",
        "partition": 1,
        "offset": 7,
    }
    assert "error_class" not in document
    assert "reason" not in document


def test_undecodable_event_document() -> None:
    """A rejected event known only by its position still gets a document with its reason."""
    report = EventReport(
        position=Position(source="file", line=12),
        outcome=Outcome.rejected,
        summary=EventSummary(),
        reason="x" * 5000,
        error_class="invalid_json",
    )
    document = event_document(report, ingested_at=datetime(2025, 1, 1, 12))  # naive means UTC
    assert document["@timestamp"] == "2025-01-01T12:00:00.000Z"
    assert document["source"] == {"type": "file", "line": 12}
    assert len(document["reason"]) == 2000
    assert "latency_seconds" not in document
    assert "facility" not in document


def test_document_ids_are_stable_and_distinct() -> None:
    """Same event, same id (retries overwrite); another outcome or another event, another id."""
    dataset = uuid.uuid4()
    first = make_report(1, dataset_id=dataset)
    assert document_id(first) == document_id(make_report(1, dataset_id=dataset))
    assert document_id(first) != document_id(make_report(1, dataset_id=dataset, outcome=Outcome.parked))
    assert document_id(first) != document_id(make_report(2, dataset_id=dataset))  # other transfer
    by_position = EventReport(
        Position(source="kafka", topic="t", partition=0, offset=5), Outcome.rejected, EventSummary()
    )
    other_offset = EventReport(
        Position(source="kafka", topic="t", partition=0, offset=6), Outcome.rejected, EventSummary()
    )
    assert document_id(by_position) != document_id(other_offset)
    assert uuid.UUID(document_id(by_position)).version == 5  # no transfer time: a name-based UUID


def test_document_ids_start_with_the_transfer_time() -> None:
    """Ids sort as transfer times do (what keeps OpenSearch's id lookups cheap) and a replay keeps its id."""
    dataset = uuid.uuid4()
    report = make_report(1, dataset_id=dataset, latency_s=12.5)
    identifier = document_id(report)
    transferred_at = report.summary.transferred_at
    assert transferred_at is not None
    assert len(identifier) == 32
    assert int(identifier[:12], 16) == int(transferred_at.timestamp() * 1000)
    # The same transfer ingested again later (a replay): same transfer time, same id.
    replayed = make_report(
        1, dataset_id=dataset, latency_s=3600 + 12.5, committed_at=COMMITTED_AT + timedelta(hours=1)
    )
    assert document_id(replayed) == identifier
    ids = [document_id(make_report(n, latency_s=100.0 - n)) for n in range(50)]
    assert ids == sorted(ids)  # later transfers, larger ids
    # Ten events of one millisecond stay apart.
    assert len({document_id(make_report(n, latency_s=1.0)) for n in range(10)}) == 10


def test_daily_index_by_ingest_date_in_utc() -> None:
    """Index names follow the ingest date in UTC, whatever the timezone of the datetime given."""
    from datetime import timezone

    late_evening_chile = datetime(2025, 3, 20, 22, 30, tzinfo=timezone(timedelta(hours=-3)))
    assert index_name("ingestd-events", late_evening_chile) == "ingestd-events-2025.03.21"
    skipped = make_report(1, outcome=Outcome.skipped, committed_at=None)
    prepared = prepare(skipped, prefix="p", received_at=COMMITTED_AT)
    assert prepared.index == "p-2025.03.20"
    assert prepared.source["ingested_at"] == "2025-03-20T20:15:43.153Z"


def test_index_template_body() -> None:
    """The template matches <prefix>-*, maps explicitly with dynamic off, and hashes its own body."""
    settings = OpenSearchSettings(urls="http://127.0.0.1:9200", index_prefix="ingestd-events-frdf")
    body = index_template(settings)
    assert body["index_patterns"] == ["ingestd-events-frdf-*"]
    assert body["template"]["mappings"]["dynamic"] is False
    assert body["template"]["mappings"]["date_detection"] is False
    assert body["_meta"]["body_hash"] == index_template(settings)["_meta"]["body_hash"]
    other = OpenSearchSettings(urls="http://127.0.0.1:9200", number_of_replicas=0)
    assert index_template(other)["_meta"]["body_hash"] != body["_meta"]["body_hash"]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """URLs come comma-separated; the password from a file; TLS options reach the client arguments."""
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv(
        "INGESTD_OPENSEARCH_URLS", "https://os-1.example.org:9200, https://os-2.example.org:9200"
    )
    monkeypatch.setenv("INGESTD_OPENSEARCH_USERNAME", "ingestd")
    monkeypatch.setenv("INGESTD_OPENSEARCH_PASSWORD_FILE", str(password))
    monkeypatch.setenv("INGESTD_OPENSEARCH_CA_FILE", str(ca))
    settings = OpenSearchSettings()
    assert settings.enabled
    kwargs = settings.client_kwargs()
    assert kwargs["hosts"] == ["https://os-1.example.org:9200", "https://os-2.example.org:9200"]
    assert kwargs["http_auth"] == ("ingestd", "s3cret")
    assert kwargs["use_ssl"] is True
    assert kwargs["ca_certs"] == str(ca)
    assert kwargs["max_retries"] == 0
    assert "s3cret" not in repr(settings)


def test_settings_disabled_without_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No URL: the sink is off and ingest runs without documents."""
    monkeypatch.delenv("INGESTD_OPENSEARCH_URLS", raising=False)
    from prometheus_client import CollectorRegistry

    from monitoring.metrics import IngestMetrics
    from monitoring.opensearch import NullSink, make_sink

    settings = OpenSearchSettings()
    assert not settings.enabled
    sink = make_sink(settings, IngestMetrics(CollectorRegistry()))
    assert isinstance(sink, NullSink)
    sink.start()
    sink.submit([make_report(1)])
    sink.close(1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"username": "u"}, "needs INGESTD_OPENSEARCH_PASSWORD_FILE"),
        ({"password": "p"}, "needs INGESTD_OPENSEARCH_USERNAME"),
        ({"index_prefix": "Ingestd Events"}, "index_prefix"),
        ({"flush_size": 10, "buffer_size": 5}, "cannot exceed buffer_size"),
        ({"retry_backoff_s": 5, "retry_backoff_max_s": 1}, "at least retry_backoff_s"),
        ({"unknown_key": 1}, "Extra inputs are not permitted"),
        ({"urls": "ftp://x"}, "URL scheme should be 'http' or 'https'"),
    ],
)
def test_settings_refuse_bad_combinations(overrides: dict[str, Any], message: str) -> None:
    """Mistakes are reported at start-up with the setting to fix."""
    with pytest.raises(ValidationError, match=message):
        OpenSearchSettings(**{"urls": "http://127.0.0.1:9200", **overrides})


def test_bulk_response_items_settle_by_status() -> None:
    """Per-item statuses of a bulk response: 2xx indexed, 429/5xx retried up to max_retries, 4xx failed."""
    from prometheus_client import CollectorRegistry

    from monitoring.metrics import IngestMetrics
    from monitoring.opensearch import EventSink
    from monitoring.opensearch._sink import _Pending

    registry = CollectorRegistry()
    settings = OpenSearchSettings(urls="http://127.0.0.1:9", max_retries=1)
    sink = EventSink(settings, IngestMetrics(registry))
    batch = [_Pending(prepare(make_report(i), prefix="p", received_at=COMMITTED_AT)) for i in range(4)]
    batch[3] = _Pending(batch[3].document, attempts=1)  # already retried once
    response = {
        "errors": True,
        "items": [
            {"index": {"status": 201}},
            {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception"}}},
            {"index": {"status": 503, "error": {"type": "unavailable_shards_exception"}}},
        ],
    }
    retry = sink._settle(batch, response)
    assert [pending.document.id for pending in retry] == [batch[1].document.id]
    assert retry[0].attempts == 1
    assert registry.get_sample_value("ingestd_opensearch_documents_total", {"result": "indexed"}) == 1
    assert registry.get_sample_value("ingestd_opensearch_documents_total", {"result": "failed"}) == 2
