"""The campaign managers' OpenSearch Dashboards objects over the event documents, built from code.

An index pattern over ``ingestd-events-*``, one visualization per question a
campaign manager asks (how much reached each facility each day, how fast, how
late, what failed and why), a saved search of failed events, and a dashboard
that lays them out. Written as the saved-objects export format (ndjson) that
Dashboards Management → Saved objects → Import reads.

Visualization states use the OpenSearch Dashboards 2.x (Kibana 7.10 lineage)
schema; every field they aggregate on is checked against the index template's
mappings by :func:`monitoring.dashboards.validate_saved_objects`.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["INDEX_PATTERN_ID", "saved_objects"]

INDEX_PATTERN_ID: Final = "ingestd-events"
DASHBOARD_ID: Final = "ingestd-campaign-ingest"
_INDEX_REF: Final = "kibanaSavedObjectMeta.searchSourceJSON.index"
_FAILED_QUERY: Final = "outcome:conflict or outcome:rejected"
_DASHBOARDS_VERSION: Final = "2.19.2"


def _search_source(query: str, *, with_index: bool = True) -> str:
    source: dict[str, Any] = {"query": {"query": query, "language": "kuery"}, "filter": []}
    if with_index:
        source["indexRefName"] = _INDEX_REF
    return json.dumps(source)


def _index_reference() -> list[dict[str, str]]:
    return [{"name": _INDEX_REF, "type": "index-pattern", "id": INDEX_PATTERN_ID}]


def _terms(agg_id: str, field: str, schema: str, size: int, order_by: str = "1") -> dict[str, Any]:
    return {
        "id": agg_id,
        "enabled": True,
        "type": "terms",
        "schema": schema,
        "params": {
            "field": field,
            "orderBy": order_by,
            "order": "desc",
            "size": size,
            "otherBucket": True,
            "otherBucketLabel": "Other",
            "missingBucket": True,
            "missingBucketLabel": "Unknown",
        },
    }


def _date_histogram(agg_id: str, interval: str) -> dict[str, Any]:
    return {
        "id": agg_id,
        "enabled": True,
        "type": "date_histogram",
        "schema": "segment",
        "params": {
            "field": "@timestamp",
            "useNormalizedOpenSearchInterval": True,
            "interval": interval,
            "drop_partials": False,
            "min_doc_count": 1,
            "extended_bounds": {},
        },
    }


def _count(agg_id: str = "1") -> dict[str, Any]:
    return {"id": agg_id, "enabled": True, "type": "count", "schema": "metric", "params": {}}


def _xy_params(chart: str, axis_title: str, metric_label: str, mode: str = "stacked") -> dict[str, Any]:
    return {
        "type": chart,
        "grid": {"categoryLines": False},
        "categoryAxes": [
            {
                "id": "CategoryAxis-1",
                "type": "category",
                "position": "bottom",
                "show": True,
                "style": {},
                "scale": {"type": "linear"},
                "labels": {"show": True, "filter": True, "truncate": 100},
                "title": {},
            }
        ],
        "valueAxes": [
            {
                "id": "ValueAxis-1",
                "name": "LeftAxis-1",
                "type": "value",
                "position": "left",
                "show": True,
                "style": {},
                "scale": {"type": "linear", "mode": "normal"},
                "labels": {"show": True, "rotate": 0, "filter": False, "truncate": 100},
                "title": {"text": axis_title},
            }
        ],
        "seriesParams": [
            {
                "show": True,
                "type": chart,
                "mode": mode,
                "data": {"label": metric_label, "id": "1"},
                "valueAxis": "ValueAxis-1",
                "drawLinesBetweenPoints": True,
                "lineWidth": 2,
                "showCircles": True,
            }
        ],
        "addTooltip": True,
        "addLegend": True,
        "legendPosition": "right",
        "times": [],
        "addTimeMarker": False,
        "labels": {"show": False},
        "thresholdLine": {"show": False, "value": 10, "width": 1, "style": "full", "color": "#E7664C"},
    }


def _visualization(
    vis_id: str,
    title: str,
    *,
    description: str,
    vis_type: str,
    aggs: list[dict[str, Any]],
    params: dict[str, Any],
    query: str = "",
) -> dict[str, Any]:
    uses_index = bool(aggs)
    return {
        "id": vis_id,
        "type": "visualization",
        "attributes": {
            "title": title,
            "description": description,
            "visState": json.dumps({"title": title, "type": vis_type, "aggs": aggs, "params": params}),
            "uiStateJSON": "{}",
            "version": 1,
            "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(query, with_index=uses_index)},
        },
        "references": _index_reference() if uses_index else [],
        "migrationVersion": {"visualization": "7.10.0"},
    }


def _visualizations() -> list[dict[str, Any]]:
    return [
        _visualization(
            "ingestd-about",
            "ingestd: about these panels",
            description="How to read the campaign dashboard.",
            vis_type="markdown",
            aggs=[],
            params={
                "fontSize": 12,
                "openLinksInNewTab": False,
                "markdown": (
                    "One document per Rucio transfer event that ingestd brought to a final outcome: "
                    "**registered** (new in the Butler registry), **already_present** (replayed, same "
                    "content), **parked** (waiting for dimension records), **conflict** and **rejected** "
                    "(dead-lettered, see *failures by reason*), **skipped** (not for this site). "
                    "Latency runs from Rucio's `transferred_at` to the registry commit."
                ),
            },
        ),
        _visualization(
            "ingestd-files-per-facility-per-day",
            "ingestd: files registered per facility per day",
            description="Newly registered files per facility and day (UTC).",
            vis_type="histogram",
            aggs=[_count(), _date_histogram("2", "d"), _terms("3", "facility", "group", 20)],
            params=_xy_params("histogram", "Files", "Files"),
            query="outcome:registered",
        ),
        _visualization(
            "ingestd-volume-per-facility-per-day",
            "ingestd: volume registered per facility per day",
            description="Bytes of newly registered files per facility and day (UTC).",
            vis_type="histogram",
            aggs=[
                {
                    "id": "1",
                    "enabled": True,
                    "type": "sum",
                    "schema": "metric",
                    "params": {"field": "size_bytes"},
                },
                _date_histogram("2", "d"),
                _terms("3", "facility", "group", 20),
            ],
            params=_xy_params("histogram", "Bytes", "Sum of size_bytes"),
            query="outcome:registered",
        ),
        _visualization(
            "ingestd-ingest-rate",
            "ingestd: ingest rate by outcome",
            description="Events per time bucket, split by outcome.",
            vis_type="line",
            aggs=[_count(), _date_histogram("2", "auto"), _terms("3", "outcome", "group", 10)],
            params=_xy_params("line", "Events", "Events", mode="normal"),
        ),
        _visualization(
            "ingestd-latency-percentiles",
            "ingestd: latency percentiles (transfer to registry)",
            description="Median, 90th and 99th percentile of transfer-to-registry latency in seconds.",
            vis_type="line",
            aggs=[
                {
                    "id": "1",
                    "enabled": True,
                    "type": "percentiles",
                    "schema": "metric",
                    "params": {"field": "latency_seconds", "percents": [50, 90, 99]},
                },
                _date_histogram("2", "auto"),
            ],
            params=_xy_params("line", "Seconds", "Percentiles of latency_seconds", mode="normal"),
            query="outcome:registered",
        ),
        _visualization(
            "ingestd-failures-by-reason",
            "ingestd: failures by reason",
            description="Dead-lettered events by error class and reason.",
            vis_type="table",
            aggs=[
                _count(),
                _terms("2", "error_class", "bucket", 20),
                _terms("3", "reason.keyword", "bucket", 10),
                _terms("4", "facility", "bucket", 10),
            ],
            params={
                "perPage": 20,
                "showPartialRows": False,
                "showMetricsAtAllLevels": False,
                "showTotal": True,
                "totalFunc": "sum",
                "percentageCol": "",
            },
            query=_FAILED_QUERY,
        ),
        _visualization(
            "ingestd-outcomes",
            "ingestd: events by outcome",
            description="Share of each outcome over the selected time range.",
            vis_type="pie",
            aggs=[_count(), _terms("2", "outcome", "segment", 10)],
            params={
                "type": "pie",
                "addTooltip": True,
                "addLegend": True,
                "legendPosition": "right",
                "isDonut": True,
                "labels": {"show": True, "values": True, "last_level": True, "truncate": 100},
            },
        ),
    ]


def _failed_search() -> dict[str, Any]:
    return {
        "id": "ingestd-failed-events",
        "type": "search",
        "attributes": {
            "title": "ingestd: failed events",
            "description": "Dead-lettered events, newest first, with their reason.",
            "hits": 0,
            "columns": ["facility", "outcome", "error_class", "reason", "did", "run"],
            "sort": [["@timestamp", "desc"]],
            "version": 1,
            "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(_FAILED_QUERY)},
        },
        "references": _index_reference(),
        "migrationVersion": {"search": "7.9.3"},
    }


def _dashboard(panels: list[tuple[dict[str, Any], int, int, int, int]]) -> dict[str, Any]:
    panel_json = []
    references = []
    for index, (saved, x, y, w, h) in enumerate(panels):
        panel_index = str(index + 1)
        panel_json.append(
            {
                "version": _DASHBOARDS_VERSION,
                "gridData": {"x": x, "y": y, "w": w, "h": h, "i": panel_index},
                "panelIndex": panel_index,
                "embeddableConfig": {},
                "panelRefName": f"panel_{index}",
            }
        )
        references.append({"name": f"panel_{index}", "type": saved["type"], "id": saved["id"]})
    return {
        "id": DASHBOARD_ID,
        "type": "dashboard",
        "attributes": {
            "title": "ingestd — campaign ingest",
            "description": (
                "Ingest volume, rate, latency and failures per Data Facility (ingestd event documents)."
            ),
            "hits": 0,
            "panelsJSON": json.dumps(panel_json),
            "optionsJSON": json.dumps({"hidePanelTitles": False, "useMargins": True}),
            "version": 1,
            "timeRestore": True,
            "timeFrom": "now-7d",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 60000},
            "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source("", with_index=False)},
        },
        "references": references,
        "migrationVersion": {"dashboard": "7.9.3"},
    }


def saved_objects(index_prefix: str = "ingestd-events") -> list[dict[str, Any]]:
    """Return the saved objects, index pattern first, dashboard last (import order)."""
    index_pattern = {
        "id": INDEX_PATTERN_ID,
        "type": "index-pattern",
        "attributes": {"title": f"{index_prefix}-*", "timeFieldName": "@timestamp"},
        "references": [],
        "migrationVersion": {"index-pattern": "7.6.0"},
    }
    about, files, volume, rate, latency, failures, outcomes = _visualizations()
    search = _failed_search()
    layout = [
        (about, 0, 0, 12, 6),
        (outcomes, 12, 0, 12, 6),
        (files, 0, 6, 24, 12),
        (volume, 0, 18, 24, 12),
        (rate, 0, 30, 24, 12),
        (latency, 0, 42, 24, 12),
        (failures, 0, 54, 24, 14),
        (search, 0, 68, 24, 15),
    ]
    return [
        index_pattern,
        about,
        files,
        volume,
        rate,
        latency,
        failures,
        outcomes,
        search,
        _dashboard(layout),
    ]
