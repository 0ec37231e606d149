"""The real Prometheus scrapes a service's /metrics and its query API returns the counts of a known batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ingestd.work import ButlerKind, Outcome
from monitoring import HealthServer, HealthState
from monitoring.metrics import IngestMetrics, Stage
from tests.conftest import PrometheusServer

from .conftest import make_report


def _wait_for(
    prometheus: PrometheusServer,
    query: str,
    check: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 45,
) -> list[dict[str, Any]]:
    """Poll an instant query until ``check`` accepts its result (scrapes run every second)."""
    deadline = time.monotonic() + timeout_s
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = prometheus.query(query)
        if check(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{query} never matched; last result {result}")


def _by(label: str, result: list[dict[str, Any]]) -> dict[str, float]:
    return {sample["metric"].get(label, ""): float(sample["value"][1]) for sample in result}


@pytest.mark.prometheus
def test_prometheus_scrapes_known_batch(prometheus: PrometheusServer) -> None:
    """Counts by outcome, facility and kind, dead letters, bytes and latency reach Prometheus as observed."""
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry, version="scrape-test", facilities=["FrDF", "UKDF"])
    state = HealthState()
    state.set_ready()
    server = HealthServer(state, registry).start()
    try:
        instance = prometheus.scrape(server.port, job="ingestd-daemon")
        selector = f'instance="{instance}"'
        reports = (
            [make_report(i, size=1_000) for i in range(40)]
            + [make_report(100 + i, facility="UKDF", kind=ButlerKind.zip_file, size=5_000) for i in range(10)]
            + [make_report(200 + i, outcome=Outcome.already_present) for i in range(7)]
            + [make_report(300 + i, outcome=Outcome.conflict, error_class="conflict") for i in range(3)]
            + [
                make_report(
                    400, outcome=Outcome.rejected, error_class="invalid_json", facility=None, kind=None
                )
            ]
        )
        metrics.observe_reports(reports)
        metrics.batch_size.observe(len(reports))
        metrics.stage_duration.labels(stage=Stage.register.value).observe(0.2)
        metrics.set_consumer_lag("IN2P3_BUTLER_DISK-raw", 0, 17)

        expected = {"registered": 50, "already_present": 7, "conflict": 3, "rejected": 1}
        result = _wait_for(
            prometheus,
            f"sum by (outcome) (ingestd_events_total{{{selector}}}) > 0",
            lambda r: _by("outcome", r) == expected,
        )
        assert _by("outcome", result) == expected
        facilities = prometheus.query(
            f'sum by (facility) (ingestd_events_total{{{selector}, outcome="registered"}})'
        )
        assert _by("facility", facilities) == {"FrDF": 40, "UKDF": 10}
        kinds = prometheus.query(f"sum by (kind) (ingestd_events_total{{{selector}}}) > 0")
        assert _by("kind", kinds) == {"raw_file": 50, "zip_file": 10, "other": 1}
        dead = prometheus.query(f"sum by (error_class) (ingestd_dead_letters_total{{{selector}}})")
        assert _by("error_class", dead) == {"conflict": 3, "invalid_json": 1}
        volume = prometheus.query(f"sum by (facility) (ingestd_registered_bytes_total{{{selector}}})")
        assert _by("facility", volume) == {"FrDF": 40_000, "UKDF": 50_000}
        latency = prometheus.query(f"sum(ingestd_end_to_end_latency_seconds_count{{{selector}}})")
        assert float(latency[0]["value"][1]) == 50
        lag = prometheus.query(f"ingestd_consumer_lag_records{{{selector}}}")
        assert float(lag[0]["value"][1]) == 17
        build = prometheus.query(f"ingestd_build_info{{{selector}}}")
        assert build[0]["metric"]["version"] == "scrape-test"

        # A second batch moves the counters; Prometheus follows.
        metrics.observe_reports([make_report(500 + i) for i in range(25)])
        _wait_for(
            prometheus,
            f'sum(ingestd_events_total{{{selector}, outcome="registered"}})',
            lambda r: bool(r) and float(r[0]["value"][1]) == 75,
        )
        up = prometheus.query(f"up{{{selector}}}")
        assert float(up[0]["value"][1]) == 1
    finally:
        server.stop()


@pytest.mark.prometheus
def test_grafana_queries_return_data_from_real_prometheus(prometheus: PrometheusServer) -> None:
    """Every Grafana panel query evaluates on the real Prometheus and returns series for a live service."""
    from monitoring.dashboards import grafana_dashboard, grafana_expressions
    from monitoring.metrics import MirrorMetrics, PublisherMetrics, PublishOutcome, TransactionResult

    registry = CollectorRegistry()
    ingest = IngestMetrics(registry, facilities=["FrDF"])
    mirror = MirrorMetrics(registry)
    publisher = PublisherMetrics(registry, facilities=["FrDF"])
    server = HealthServer(HealthState(), registry).start()
    try:
        instance = prometheus.scrape(server.port, job="ingestd-all")
        selector = f'instance="{instance}"'
        ingest.observe_reports(
            [make_report(1), make_report(2, outcome=Outcome.conflict, error_class="conflict")]
        )
        ingest.batch_size.observe(2)
        for stage in Stage:
            ingest.stage_duration.labels(stage=stage.value).observe(0.01)
        ingest.set_consumer_lag("t", 0, 3)
        ingest.observe_error(ingest.registry_errors, "OperationalError")
        ingest.observe_error(ingest.kafka_errors, "_TRANSPORT")
        ingest.parked.set(1)
        mirror.observe_copied("t", 5, 500)
        mirror.set_lag("t", 0, 2)
        mirror.replication_latency.observe(0.3)
        mirror.transactions.labels(result=TransactionResult.committed.value).inc()
        mirror.observe_error("KafkaException")
        publisher.observe_message("FrDF", PublishOutcome.delivered, 4)
        publisher.backlog.set(2)
        publisher.oldest_message_age.set(1.5)
        publisher.batch_duration.observe(0.02)
        publisher.observe_error("KafkaException")
        # Two scrapes at least, so rate() has two samples.
        _wait_for(
            prometheus,
            f"count_over_time(ingestd_build_info{{{selector}}}[1m])",
            lambda r: bool(r) and float(r[0]["value"][1]) >= 3,
        )

        for title, expression in grafana_expressions(grafana_dashboard()):
            if expression.startswith("up{"):
                continue  # the scrape job here is the test bed's, not ingestd-*
            concrete = (
                expression.replace('job=~"$job", instance=~"$instance"', selector)
                .replace('job=~"$mirror_job"', selector)
                .replace('job=~"$publisher_job"', selector)
                .replace("$__rate_interval", "1m")
            )
            assert "$" not in concrete, concrete
            assert prometheus.query(concrete), f"{title}: no data for {concrete}"
    finally:
        server.stop()
