"""Observability for every ingestd service: metrics, health endpoints, OpenSearch documents, alerts.

- :mod:`monitoring.metrics`: the Prometheus metrics catalogue (daemon, mirror, publisher).
- :mod:`monitoring.http_server`: ``/healthz``, ``/readyz`` and ``/metrics`` on one port.
- :mod:`monitoring.opensearch`: one document per event, bulk-indexed without ever blocking ingest.
- :mod:`monitoring.dashboards`, ``monitoring/grafana``, ``monitoring/prometheus``: dashboards and alert
  rules as files, checked against the catalogue; :mod:`monitoring.docs` renders ``docs/METRICS.md``.
"""

from .http_server import HealthServer, HealthState, StallWatch
from .metrics import IngestMetrics, MirrorMetrics, PublisherMetrics

__all__ = ["HealthServer", "HealthState", "IngestMetrics", "MirrorMetrics", "PublisherMetrics", "StallWatch"]
