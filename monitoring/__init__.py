"""Observability for every ingestd service: metrics, health endpoints, OpenSearch documents, alerts."""

from .http_server import HealthServer, HealthState

__all__ = ["HealthServer", "HealthState"]
