"""The operators' Grafana dashboard over the Prometheus metrics, built from code.

Built rather than hand-edited so every query names metrics of the catalogue
(a test extracts each metric name from each PromQL expression and checks it
exists, and has promtool parse every expression), and so panels stay laid out on
a regular grid. ``ingestd monitoring dashboards --write`` writes
``monitoring/grafana/ingestd.json``; a test fails when the file drifts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["GRAFANA_UID", "grafana_dashboard"]

GRAFANA_UID: Final = "ingestd-overview"

_DAEMON: Final = 'job=~"$job", instance=~"$instance"'
_MIRROR: Final = 'job=~"$mirror_job"'
_PUBLISHER: Final = 'job=~"$publisher_job"'


@dataclass
class _Panel:
    title: str
    description: str
    targets: list[tuple[str, str]]
    """(PromQL, legend) pairs."""
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 8
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)


def _quantiles(metric: str, selector: str) -> list[tuple[str, str]]:
    """p50, p95 and p99 of a histogram over all its series matching ``selector``."""
    return [
        (
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _rows() -> list[tuple[str, list[_Panel]]]:
    d, m, p = _DAEMON, _MIRROR, _PUBLISHER
    daemon = [
        _Panel(
            "Events by outcome",
            "Events reaching a final outcome per second. conflict and rejected go to the dead-letter topic.",
            [(f"sum by (outcome) (rate(ingestd_events_total{{{d}}}[$__rate_interval]))", "{{outcome}}")],
            unit="ops",
        ),
        _Panel(
            "Registered by facility and kind",
            "New registrations per second.",
            [
                (
                    "sum by (facility, kind) "
                    f'(rate(ingestd_events_total{{{d}, outcome="registered"}}[$__rate_interval]))',
                    "{{facility}} {{kind}}",
                )
            ],
            unit="ops",
        ),
        _Panel(
            "Bytes registered by facility",
            "Volume of newly registered files per second.",
            [
                (
                    f"sum by (facility) (rate(ingestd_registered_bytes_total{{{d}}}[$__rate_interval]))",
                    "{{facility}}",
                )
            ],
            unit="Bps",
        ),
        _Panel(
            "Consumer lag by topic",
            "Records waiting between the committed offset and the end of each topic.",
            [(f"sum by (topic) (ingestd_consumer_lag_records{{{d}}})", "{{topic}}")],
        ),
        _Panel(
            "Time since last successful ingest",
            "Seconds since an event was last registered or found already present, per instance.",
            [(f"time() - max by (instance) (ingestd_last_success_timestamp_seconds{{{d}}})", "{{instance}}")],
            unit="s",
            kind="stat",
        ),
        _Panel(
            "Dead letters by error class",
            "Events written to the dead-letter topic per second; any is worth a look.",
            [
                (
                    f"sum by (error_class) (rate(ingestd_dead_letters_total{{{d}}}[$__rate_interval]))",
                    "{{error_class}}",
                )
            ],
            unit="ops",
        ),
        _Panel(
            "End-to-end latency (Rucio transfer → registry commit)",
            "Median and 95th percentile of the time from transferred_at to the registry commit, by facility.",
            [
                (
                    f"histogram_quantile({q}, sum by (facility, le) "
                    f"(rate(ingestd_end_to_end_latency_seconds_bucket{{{d}}}[$__rate_interval])))",
                    f"{{{{facility}}}} p{int(q * 100)}",
                )
                for q in (0.5, 0.95)
            ],
            unit="s",
        ),
        _Panel(
            "Stage duration p95",
            "95th percentile wall time of each engine stage per batch.",
            [
                (
                    "histogram_quantile(0.95, sum by (stage, le) "
                    f"(rate(ingestd_stage_duration_seconds_bucket{{{d}}}[$__rate_interval])))",
                    "{{stage}}",
                )
            ],
            unit="s",
        ),
        _Panel(
            "Batch size",
            "Events per engine batch.",
            _quantiles("ingestd_batch_size", d),
        ),
        _Panel(
            "Registry and Kafka errors",
            "Errors per second by exception type or error class; transient ones are retried.",
            [
                (
                    f"sum by (error) (rate(ingestd_registry_errors_total{{{d}}}[$__rate_interval]))",
                    "registry {{error}}",
                ),
                (
                    f"sum by (error) (rate(ingestd_kafka_errors_total{{{d}}}[$__rate_interval]))",
                    "kafka {{error}}",
                ),
            ],
            unit="ops",
        ),
        _Panel(
            "Retries by stage",
            "Retries after transient failures per second.",
            [(f"sum by (stage) (rate(ingestd_retries_total{{{d}}}[$__rate_interval]))", "{{stage}}")],
            unit="ops",
        ),
        _Panel(
            "Parked events",
            "Events waiting for dimension records or files not yet visible, and parked events re-driven "
            "per second by outcome (`ingestd pending` lists what they wait for).",
            [
                (f"sum by (instance) (ingestd_parked_events{{{d}}})", "{{instance}}"),
                (
                    f"sum by (result) (rate(ingestd_redriven_total{{{d}}}[$__rate_interval]))",
                    "re-driven {{result}}/s",
                ),
            ],
        ),
        _Panel(
            "Oldest parked event",
            "How long the longest-waiting parked event has waited for its dimension records "
            "(dead-lettered at the parking horizon, 24 h by default).",
            [(f"max by (instance) (ingestd_parked_oldest_age_seconds{{{d}}})", "{{instance}}")],
            unit="s",
        ),
        _Panel(
            "OpenSearch event documents",
            "Documents indexed, failed or dropped per second, and waiting in the buffer.",
            [
                (
                    f"sum by (result) (rate(ingestd_opensearch_documents_total{{{d}}}[$__rate_interval]))",
                    "{{result}}/s",
                ),
                (f"sum(ingestd_opensearch_buffered_documents{{{d}}})", "buffered"),
            ],
        ),
        _Panel(
            "Versions",
            "Which ingestd version each instance runs.",
            [(f"max by (instance, version) (ingestd_build_info{{{d}}})", "{{instance}} {{version}}")],
            kind="table",
            width=8,
        ),
    ]
    mirror = [
        _Panel(
            "Mirrored records by topic",
            "Records copied to the local Kafka per second.",
            [(f"sum by (topic) (rate(ingestd_mirror_records_total{{{m}}}[$__rate_interval]))", "{{topic}}")],
            unit="ops",
        ),
        _Panel(
            "Mirrored bytes by topic",
            "Bytes copied per second.",
            [(f"sum by (topic) (rate(ingestd_mirror_bytes_total{{{m}}}[$__rate_interval]))", "{{topic}}")],
            unit="Bps",
        ),
        _Panel(
            "Mirror lag by topic",
            "Source end offset minus mirrored offset. USDF keeps records 6 hours.",
            [(f"sum by (topic) (ingestd_mirror_lag_records{{{m}}})", "{{topic}}")],
        ),
        _Panel(
            "Replication latency",
            "Source record timestamp to target commit.",
            _quantiles("ingestd_mirror_replication_latency_seconds", m),
            unit="s",
        ),
        _Panel(
            "Mirror transactions",
            "Target transactions per second, by how they ended.",
            [
                (
                    f"sum by (result) (rate(ingestd_mirror_transactions_total{{{m}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            unit="ops",
        ),
        _Panel(
            "Mirror errors",
            "Errors per second by class.",
            [(f"sum by (error) (rate(ingestd_mirror_errors_total{{{m}}}[$__rate_interval]))", "{{error}}")],
            unit="ops",
        ),
    ]
    publisher = [
        _Panel(
            "Published messages",
            "Transfer events published to the central Kafka per second, by facility and outcome.",
            [
                (
                    "sum by (facility, outcome) "
                    f"(rate(ingestd_publisher_messages_total{{{p}}}[$__rate_interval]))",
                    "{{facility}} {{outcome}}",
                )
            ],
            unit="ops",
        ),
        _Panel(
            "Publisher backlog",
            "Messages waiting in Rucio's messages table, and the age of the oldest.",
            [
                (f"sum(ingestd_publisher_backlog_messages{{{p}}})", "messages"),
                (f"max(ingestd_publisher_oldest_message_age_seconds{{{p}}})", "oldest (s)"),
            ],
        ),
        _Panel(
            "Publish batch duration",
            "Wall time of a publish batch.",
            _quantiles("ingestd_publisher_batch_duration_seconds", p),
            unit="s",
        ),
        _Panel(
            "Publisher errors",
            "Errors per second by class.",
            [
                (
                    f"sum by (error) (rate(ingestd_publisher_errors_total{{{p}}}[$__rate_interval]))",
                    "{{error}}",
                )
            ],
            unit="ops",
        ),
        _Panel(
            "Processes up",
            "1 when Prometheus scrapes the process, 0 when it is down.",
            [('up{job=~"ingestd-.*"}', "{{job}} {{instance}}")],
            kind="stat",
            width=16,
        ),
    ]
    return [("Ingest daemon", daemon), ("Mirror", mirror), ("Publisher and processes", publisher)]


def _panel_json(panel: _Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": panel.options
        or (
            {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
            if panel.kind == "timeseries"
            else {}
        ),
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
                "range": panel.kind != "table",
                "instant": panel.kind == "table",
            }
            for index, (expr, legend) in enumerate(panel.targets)
        ],
    }
    return body


def _variable(name: str, label: str, query: str, *, regex_default: str = ".*") -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": f"{name}-query"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": regex_default,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def grafana_dashboard() -> dict[str, Any]:
    """Return the Grafana dashboard model (JSON-serialisable)."""
    panels: list[dict[str, Any]] = []
    y = 0
    panel_id = 1
    for row_title, row_panels in _rows():
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row_panels:
            if x + panel.width > 24:
                x = 0
                y += row_height
                row_height = 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": GRAFANA_UID,
        "title": "ingestd — replication and ingest",
        "description": (
            "Operators' view of the ingestd daemon, mirror and publisher (Prometheus metrics; "
            "see docs/METRICS.md)."
        ),
        "tags": ["ingestd", "rubin", "rucio", "butler"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "refresh": 1,
                },
                _variable(
                    "job", "Daemon job", 'label_values(ingestd_build_info{job=~"ingestd-daemon.*"}, job)'
                ),
                _variable(
                    "instance", "Daemon instance", 'label_values(ingestd_build_info{job=~"$job"}, instance)'
                ),
                _variable("mirror_job", "Mirror job", "label_values(ingestd_mirror_transactions_total, job)"),
                _variable(
                    "publisher_job", "Publisher job", "label_values(ingestd_publisher_backlog_messages, job)"
                ),
            ]
        },
        "panels": panels,
    }
