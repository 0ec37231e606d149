"""The metrics catalogue: names, types and labels as documented; outcomes counted; promtool clean."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ingestd.work import ButlerKind, Outcome
from monitoring.metrics import (
    MAX_LABEL_VALUES,
    OTHER,
    UNKNOWN,
    BoundedLabel,
    DocumentResult,
    IngestMetrics,
    MirrorMetrics,
    PublisherMetrics,
    PublishOutcome,
    Stage,
    TransactionResult,
    catalogue,
    error_label,
    kind_label,
)

from .conftest import COMMITTED_AT, make_report


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _exercised_registry() -> CollectorRegistry:
    """A registry with every metric of every class observed at least once."""
    registry = CollectorRegistry()
    ingest = IngestMetrics(registry, version="1.2.3", facilities=["FrDF", "UKDF"])
    ingest.observe_reports(
        [
            make_report(1),
            make_report(2, outcome=Outcome.conflict, error_class="conflict"),
            make_report(3, outcome=Outcome.rejected, error_class="invalid_json", kind=None, facility=None),
        ]
    )
    ingest.batch_size.observe(3)
    for stage in Stage:
        ingest.stage_duration.labels(stage=stage.value).observe(0.01)
    ingest.retries.labels(stage=Stage.register.value).inc()
    ingest.set_consumer_lag("IN2P3_BUTLER_DISK-raw", 0, 12)
    ingest.observe_error(ingest.registry_errors, ConnectionError("db away"))
    ingest.observe_error(ingest.kafka_errors, "_TRANSPORT")
    ingest.parked.set(2)
    ingest.opensearch_documents.labels(result=DocumentResult.indexed.value).inc(3)
    ingest.opensearch_buffered.set(0)

    mirror = MirrorMetrics(registry)
    mirror.observe_copied("IN2P3_BUTLER_DISK-raw", 10, 18_000)
    mirror.set_lag("IN2P3_BUTLER_DISK-raw", 1, 4)
    mirror.replication_latency.observe(0.2)
    mirror.transactions.labels(result=TransactionResult.committed.value).inc()
    mirror.observe_error(TimeoutError())

    publisher = PublisherMetrics(registry, facilities=["FrDF"])
    publisher.observe_message("FrDF", PublishOutcome.delivered, 5)
    publisher.backlog.set(7)
    publisher.oldest_message_age.set(3.5)
    publisher.batch_duration.observe(0.05)
    publisher.observe_error("KafkaException")
    return registry


def test_promtool_check_metrics_is_clean() -> None:
    """`promtool check metrics` finds no naming or help problem in the exposition of all three classes."""
    exposition = generate_latest(_exercised_registry())
    completed = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, check=False
    )
    assert completed.returncode == 0, completed.stdout.decode() + completed.stderr.decode()
    assert completed.stdout.strip() == b"", completed.stdout.decode()


def test_exposition_matches_catalogue() -> None:
    """Every catalogue row is exposed with its type and labels, and nothing else is exposed."""
    registry = _exercised_registry()
    exposed = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        exposed[name] = (family.type, labels)
    documented = {spec.name: (spec.type, set(spec.labels)) for spec in catalogue()}
    assert exposed == documented


def test_names_follow_prometheus_conventions() -> None:
    """Counters end in _total, others do not; durations are _seconds; every name is ingestd_-prefixed."""
    for spec in catalogue():
        assert spec.name.startswith("ingestd_")
        assert spec.name.endswith("_total") == (spec.type == "counter"), spec.name
        if {"duration", "latency", "age"} & set(spec.name.split("_")):
            assert spec.name.endswith("_seconds"), spec.name
        assert spec.help.endswith("."), spec.name


def test_observe_reports_counts_each_outcome_once() -> None:
    """Events, dead letters, bytes, latency and last success follow from the reports alone."""
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry, version="test")
    reports = [
        make_report(0, size=100, latency_s=2.0),
        make_report(1, size=200, latency_s=30.0),
        make_report(2, size=400, outcome=Outcome.already_present),
        make_report(3, facility="UKDF", kind=ButlerKind.zip_file, size=1000),
        make_report(4, outcome=Outcome.conflict, error_class="conflict"),
        make_report(5, outcome=Outcome.conflict),  # no error class: the outcome names it
        make_report(6, outcome=Outcome.rejected, error_class="invalid_json", facility=None, kind=None),
        make_report(7, outcome=Outcome.parked),
        make_report(8, outcome=Outcome.skipped, committed_at=None),
    ]
    metrics.observe_reports(reports)

    def events(outcome: str, facility: str = "FrDF", kind: str = "raw_file") -> float:
        return _value(registry, "ingestd_events_total", outcome=outcome, facility=facility, kind=kind)

    assert events("registered") == 2
    assert events("registered", "UKDF", "zip_file") == 1
    assert events("already_present") == 1
    assert events("conflict") == 2
    assert events("rejected", UNKNOWN, OTHER) == 1
    assert events("parked") == 1
    assert events("skipped") == 1
    assert _value(registry, "ingestd_dead_letters_total", error_class="conflict") == 2
    assert _value(registry, "ingestd_dead_letters_total", error_class="invalid_json") == 1
    # Only newly registered files count as registered bytes; already present ones were counted before.
    assert _value(registry, "ingestd_registered_bytes_total", facility="FrDF") == 300
    assert _value(registry, "ingestd_registered_bytes_total", facility="UKDF") == 1000
    assert _value(registry, "ingestd_end_to_end_latency_seconds_count", facility="FrDF") == 2
    assert _value(registry, "ingestd_end_to_end_latency_seconds_sum", facility="FrDF") == pytest.approx(32.0)
    assert _value(registry, "ingestd_end_to_end_latency_seconds_bucket", facility="FrDF", le="2.5") == 1
    assert _value(registry, "ingestd_last_success_timestamp_seconds") == COMMITTED_AT.timestamp()
    assert _value(registry, "ingestd_build_info", version="test") == 1


def test_last_success_never_moves_backwards() -> None:
    """A late batch with older commit times (re-driven parked events) does not rewind the gauge."""
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    metrics.observe_reports([make_report(0)])
    metrics.observe_reports([make_report(1, committed_at=COMMITTED_AT - timedelta(hours=1))])
    assert _value(registry, "ingestd_last_success_timestamp_seconds") == COMMITTED_AT.timestamp()
    metrics.observe_reports(
        [make_report(2, outcome=Outcome.conflict, committed_at=COMMITTED_AT + timedelta(1))]
    )
    assert _value(registry, "ingestd_last_success_timestamp_seconds") == COMMITTED_AT.timestamp()


def test_closed_label_sets_exist_at_zero() -> None:
    """Series of closed label sets exist before the first event, so rate() and alerts see the first one."""
    registry = CollectorRegistry()
    IngestMetrics(registry, facilities=["FrDF"])
    MirrorMetrics(registry)
    for result in DocumentResult:
        assert registry.get_sample_value("ingestd_opensearch_documents_total", {"result": result.value}) == 0
    for transaction in TransactionResult:
        assert (
            registry.get_sample_value("ingestd_mirror_transactions_total", {"result": transaction.value}) == 0
        )
    for outcome in Outcome:
        for kind in ButlerKind:
            labels = {"outcome": outcome.value, "facility": "FrDF", "kind": kind.value}
            assert registry.get_sample_value("ingestd_events_total", labels) == 0
    # Dead letters are deliberately not pre-created: the alert spots a new class by its new series.
    assert registry.get_sample_value("ingestd_dead_letters_total", {"error_class": "conflict"}) is None


def test_bounded_label_caps_cardinality() -> None:
    """A bug that puts ids into a label costs one extra series ("other"), not an unbounded number."""
    label = BoundedLabel(limit=3)
    assert [label(v) for v in ("a", "b", "c")] == ["a", "b", "c"]
    assert label("d") == OTHER
    assert label("a") == "a"
    assert label(None) == UNKNOWN
    assert BoundedLabel()("no spaces/or slashes please") == "no_spaces_or_slashes_please"
    assert len(BoundedLabel()("x" * 500)) == 64

    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    metrics.observe_reports([make_report(i, facility=f"site-{i}") for i in range(MAX_LABEL_VALUES + 50)])
    facilities = {
        sample.labels["facility"]
        for family in registry.collect()
        if family.name == "ingestd_events"
        for sample in family.samples
    }
    assert len(facilities) == MAX_LABEL_VALUES + 1
    assert OTHER in facilities


def test_label_helpers() -> None:
    """Kinds outside ButlerKind read as other; error labels are type names, never messages."""
    assert kind_label(ButlerKind.dim_file) == "dim_file"
    assert kind_label("zip_file") == "zip_file"
    assert kind_label("something_new") == OTHER
    assert kind_label(None) == OTHER
    assert error_label(ValueError("secret path /data/x")) == "ValueError"
    assert error_label(KeyError) == "KeyError"
    assert error_label("_TRANSPORT") == "_TRANSPORT"


def test_consumer_lag_series_removed_on_revoke() -> None:
    """A revoked partition's lag disappears instead of freezing at its last value (it would alert)."""
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    metrics.set_consumer_lag("t", 0, 5)
    metrics.set_consumer_lag("t", 1, -3)
    assert _value(registry, "ingestd_consumer_lag_records", topic="t", partition="1") == 0
    metrics.forget_partition("t", 0)
    metrics.forget_partition("t", 7)  # never assigned: no error
    assert registry.get_sample_value("ingestd_consumer_lag_records", {"topic": "t", "partition": "0"}) is None


def test_two_services_share_one_registry_without_collision() -> None:
    """Daemon, mirror and publisher metrics can live in one process (tests, all-in-one deployments)."""
    registry = CollectorRegistry()
    IngestMetrics(registry)
    MirrorMetrics(registry)
    PublisherMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        IngestMetrics(registry)
