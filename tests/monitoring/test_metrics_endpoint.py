"""``/metrics`` of every service: the whole exposition, or only the metrics a probe names."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry, Counter

from monitoring import HealthServer, HealthState


def test_name_filter_returns_only_the_named_metrics() -> None:
    registry = CollectorRegistry()
    events = Counter("ingestd_events", "Events.", ["outcome"], registry=registry)
    events.labels(outcome="registered").inc(7)
    Counter("ingestd_other", "Something else.", registry=registry).inc()
    server = HealthServer(HealthState(), registry).start()
    try:
        base = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(base, timeout=5) as response:
            whole = response.read().decode()
        with urllib.request.urlopen(base + "?name[]=ingestd_events_total", timeout=5) as response:
            named = response.read().decode()
    finally:
        server.stop()
    assert "ingestd_other_total" in whole
    assert 'ingestd_events_total{outcome="registered"} 7.0' in named
    assert "ingestd_other" not in named
