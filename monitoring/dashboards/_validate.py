"""Checks that dashboards only use what exists: catalogue metrics, mapped fields, resolvable references.

No Grafana or OpenSearch Dashboards server is needed: the checks read the files
as those servers would on import (saved-objects ndjson, dashboard JSON) and
report every problem found, not just the first, as sentences an operator can
act on. PromQL syntax is checked separately by promtool (see the tests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final

from monitoring.metrics import catalogue
from monitoring.opensearch import event_mappings

__all__ = [
    "aggregatable_fields",
    "grafana_expressions",
    "mapped_fields",
    "metric_names_in",
    "validate_grafana",
    "validate_saved_objects",
]

_HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")
_KNOWN_VIS_TYPES: Final = frozenset({"histogram", "line", "area", "table", "pie", "metric", "markdown"})
_SAVED_TYPES: Final = frozenset({"index-pattern", "visualization", "search", "dashboard"})
_REQUIRED_KEYS: Final = ("id", "type", "attributes", "references")
_METRIC_TOKEN: Final = re.compile(r"\b(ingestd_[a-z0-9_]+)\b")
_UP_SELECTOR: Final = re.compile(r"(?<![\w:])up\s*[{\[]")
_KUERY_FIELD: Final = re.compile(r"([A-Za-z_@][\w.@]*)\s*:")
_GRAFANA_VARIABLE: Final = re.compile(r"\$(?:\{)?([A-Za-z_]\w*)")
_GRAFANA_BUILTINS: Final = frozenset({"__rate_interval", "__interval", "__range", "__all"})


def metric_names_in(expression: str) -> set[str]:
    """Return the metric names an expression refers to: ``ingestd_*`` (histogram series folded to their
    metric) and Prometheus' own ``up``."""
    known = _exposed_names()
    names: set[str] = {"up"} if _UP_SELECTOR.search(expression) else set()
    for token in _METRIC_TOKEN.findall(expression):
        if token in known:
            names.add(token)
            continue
        for suffix in _HISTOGRAM_SUFFIXES:
            if token.endswith(suffix) and token.removesuffix(suffix) in known:
                names.add(token.removesuffix(suffix))
                break
        else:
            names.add(token)
    return names


def _exposed_names() -> set[str]:
    return {spec.name for spec in catalogue()}


def grafana_expressions(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (panel title, PromQL) for every target of every panel, rows included."""
    found: list[tuple[str, str]] = []

    def visit(panels: Iterable[Mapping[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append((str(panel.get("title", "")), str(target["expr"])))
            visit(panel.get("panels", []))

    visit(model.get("panels", []))
    return found


def validate_grafana(model: Mapping[str, Any]) -> list[str]:
    """Return the problems of a Grafana dashboard model (empty when it is sound)."""
    problems: list[str] = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in model:
            problems.append(f"dashboard has no {key!r}")
    known = _exposed_names() | {"up"}
    variables = {str(v.get("name")) for v in model.get("templating", {}).get("list", [])}
    ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in model.get("panels", []):
        title = str(panel.get("title", "?"))
        panel_id = panel.get("id")
        if panel_id in ids:
            problems.append(f"panel {title!r}: duplicate id {panel_id}")
        ids.add(panel_id)
        grid = panel.get("gridPos", {})
        x, y, w, h = (int(grid.get(k, -1)) for k in ("x", "y", "w", "h"))
        if min(x, y, w, h) < 0 or x + w > 24:
            problems.append(f"panel {title!r}: gridPos {grid} is outside the 24-column grid")
        for column in range(max(x, 0), max(x, 0) + max(w, 0)):
            for row in range(max(y, 0), max(y, 0) + max(h, 0)):
                if (column, row) in cells:
                    problems.append(f"panel {title!r} overlaps panel {cells[(column, row)]!r}")
                    break
                cells[(column, row)] = title
            else:
                continue
            break
        if panel.get("type") != "row" and not panel.get("targets"):
            problems.append(f"panel {title!r} has no query")
    for title, expression in grafana_expressions(model):
        for name in sorted(metric_names_in(expression) - known):
            problems.append(f"panel {title!r}: metric {name} is not in the catalogue (monitoring/metrics.py)")
        for variable in _GRAFANA_VARIABLE.findall(expression):
            if variable not in variables and variable not in _GRAFANA_BUILTINS:
                problems.append(f"panel {title!r}: variable ${variable} is not defined in templating")
    return problems


def _leaf_fields(mappings: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Every leaf field of the event mappings (dotted, sub-fields included) with its mapping."""
    fields: dict[str, Mapping[str, Any]] = {}

    def visit(properties: Mapping[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            path = f"{prefix}{name}"
            if "properties" in spec:
                visit(spec["properties"], f"{path}.")
                continue
            fields[path] = spec
            for sub, sub_spec in spec.get("fields", {}).items():
                fields[f"{path}.{sub}"] = sub_spec

    visit((mappings or event_mappings())["properties"], "")
    return fields


def mapped_fields(mappings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Return every searchable field of the event mappings (dotted, sub-fields included) with its type."""
    return {path: str(spec.get("type", "object")) for path, spec in _leaf_fields(mappings).items()}


def aggregatable_fields(mappings: Mapping[str, Any] | None = None) -> set[str]:
    """Fields an aggregation or sort can use: those that keep their doc values (text never does)."""
    return {
        path
        for path, spec in _leaf_fields(mappings).items()
        if spec.get("type") != "text" and spec.get("doc_values", True) is not False
    }


def _json_attribute(problems: list[str], where: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        problems.append(f"{where} must be a JSON string")
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        problems.append(f"{where} is not valid JSON: {error}")
        return None


def _check_query(problems: list[str], where: str, source: Any, fields: Mapping[str, str]) -> None:
    if not isinstance(source, dict):
        return
    query = source.get("query", {})
    text = query.get("query", "") if isinstance(query, dict) else ""
    for field in _KUERY_FIELD.findall(str(text)):
        if field not in fields:
            problems.append(f"{where}: query field {field!r} is not mapped")


def _check_aggs(
    problems: list[str],
    where: str,
    vis: Mapping[str, Any],
    fields: Mapping[str, str],
    aggregatable: Collection[str],
) -> None:
    for key in ("title", "type", "aggs", "params"):
        if key not in vis:
            problems.append(f"{where}: visState has no {key!r}")
    if vis.get("type") not in _KNOWN_VIS_TYPES:
        problems.append(f"{where}: unknown visualization type {vis.get('type')!r}")
    agg_ids: set[str] = set()
    for agg in vis.get("aggs", []):
        for key in ("id", "type", "schema", "params"):
            if key not in agg:
                problems.append(f"{where}: aggregation {agg} has no {key!r}")
        agg_ids.add(str(agg.get("id")))
        field = agg.get("params", {}).get("field")
        if field is not None and field not in fields:
            problems.append(f"{where}: aggregation {agg.get('id')} uses unmapped field {field!r}")
        elif field is not None and field not in aggregatable:
            problems.append(
                f"{where}: aggregation {agg.get('id')} uses {field!r}, which has no doc values "
                "(an identifier field; see monitoring/opensearch/_template.py)"
            )
        if agg.get("type") in ("sum", "avg", "percentiles") and fields.get(field or "") not in (
            "long",
            "integer",
            "float",
            "double",
        ):
            problems.append(f"{where}: {agg.get('type')} needs a numeric field, {field!r} is not")
        if agg.get("type") == "date_histogram" and fields.get(field or "") != "date":
            problems.append(f"{where}: date_histogram needs a date field, {field!r} is not")
        order_by = agg.get("params", {}).get("orderBy")
        if agg.get("type") == "terms" and order_by not in (None, "_key", *agg_ids):
            problems.append(f"{where}: terms aggregation orders by missing aggregation {order_by!r}")


def validate_saved_objects(text: str, mappings: Mapping[str, Any] | None = None) -> list[str]:
    """Return the problems of a saved-objects ndjson export (empty when it would import cleanly)."""
    problems: list[str] = []
    fields = mapped_fields(mappings)
    aggregatable = aggregatable_fields(mappings)
    objects: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"line {number}: not JSON: {error}")
            continue
        if not isinstance(item, dict):
            problems.append(f"line {number}: not a JSON object")
            continue
        if "exportedCount" in item:  # the export summary line
            continue
        missing = [key for key in _REQUIRED_KEYS if key not in item]
        if missing:
            problems.append(f"line {number}: missing {missing}")
            continue
        objects.append(item)
    by_key = {(o["type"], o["id"]) for o in objects}
    if len(by_key) != len(objects):
        problems.append("duplicate (type, id) pairs")
    for item in objects:
        where = f"{item['type']} {item['id']!r}"
        attributes = item["attributes"]
        if item["type"] not in _SAVED_TYPES:
            problems.append(f"{where}: unknown saved-object type")
        if not attributes.get("title"):
            problems.append(f"{where}: no title")
        names = set()
        for reference in item["references"]:
            names.add(reference.get("name"))
            if (reference.get("type"), reference.get("id")) not in by_key:
                problems.append(f"{where}: reference {reference} does not resolve to an object of this file")
        meta = attributes.get("kibanaSavedObjectMeta", {})
        if "searchSourceJSON" in meta:
            source = _json_attribute(problems, f"{where} searchSourceJSON", meta["searchSourceJSON"])
            if isinstance(source, dict) and "indexRefName" in source and source["indexRefName"] not in names:
                problems.append(f"{where}: indexRefName {source['indexRefName']!r} has no reference")
            _check_query(problems, where, source, fields)
        if item["type"] == "index-pattern":
            time_field = attributes.get("timeFieldName")
            if fields.get(time_field or "") != "date":
                problems.append(f"{where}: timeFieldName {time_field!r} is not a date field of the mappings")
        elif item["type"] == "visualization":
            vis = _json_attribute(problems, f"{where} visState", attributes.get("visState"))
            if isinstance(vis, dict):
                if vis.get("title") != attributes.get("title"):
                    problems.append(f"{where}: visState title differs from the object title")
                _check_aggs(problems, where, vis, fields, aggregatable)
            _json_attribute(problems, f"{where} uiStateJSON", attributes.get("uiStateJSON", "{}"))
        elif item["type"] == "search":
            for column in attributes.get("columns", []):
                if column not in fields:
                    problems.append(f"{where}: column {column!r} is not mapped")
        elif item["type"] == "dashboard":
            panels = _json_attribute(problems, f"{where} panelsJSON", attributes.get("panelsJSON"))
            _json_attribute(problems, f"{where} optionsJSON", attributes.get("optionsJSON", "{}"))
            for panel in panels if isinstance(panels, list) else []:
                if panel.get("panelRefName") not in names:
                    problems.append(f"{where}: panel {panel.get('panelIndex')} has no matching reference")
                grid = panel.get("gridData", {})
                if not all(key in grid for key in ("x", "y", "w", "h", "i")) or grid["x"] + grid["w"] > 48:
                    problems.append(f"{where}: panel {panel.get('panelIndex')} has bad gridData {grid}")
    return problems
