"""Dashboards as files: current with the code, every query valid, every field and reference resolvable."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from monitoring.dashboards import (
    GRAFANA_PATH,
    SAVED_OBJECTS_PATH,
    check_dashboard_files,
    grafana_dashboard,
    grafana_expressions,
    metric_names_in,
    render_saved_objects,
    validate_grafana,
    validate_saved_objects,
)
from monitoring.metrics import catalogue


def test_committed_files_match_code_and_validate() -> None:
    """The committed Grafana JSON and ndjson are what the code builds, and both validate cleanly."""
    assert check_dashboard_files() == []


def test_grafana_queries_use_only_catalogue_metrics() -> None:
    """Every PromQL expression of every panel names metrics of the catalogue (or `up`)."""
    model = json.loads(GRAFANA_PATH.read_text())
    expressions = grafana_expressions(model)
    assert len(expressions) >= 20
    known = {spec.name for spec in catalogue()} | {"up"}
    used: set[str] = set()
    for title, expression in expressions:
        names = metric_names_in(expression)
        assert names, f"{title}: no metric in {expression}"
        assert names <= known, f"{title}: {names - known}"
        used |= names
    # Every metric an operator may need appears on the dashboard.
    assert known - used == set()


def test_grafana_queries_parse_with_promtool(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule, with Grafana's variables substituted)."""
    rules = []
    for index, (_, expression) in enumerate(grafana_expressions(grafana_dashboard())):
        concrete = expression.replace("$__rate_interval", "5m")
        concrete = re.sub(r"\$\{?\w+\}?", ".*", concrete)
        rules.append({"record": f"grafana:panel_{index}", "expr": concrete})
    path = tmp_path / "grafana.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    completed = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_grafana_validator_reports_problems() -> None:
    """The validator catches an unknown metric, an undefined variable and overlapping panels."""
    model = grafana_dashboard()
    panel = next(p for p in model["panels"] if p["type"] != "row")
    panel["targets"][0]["expr"] = 'rate(ingestd_no_such_metric_total{job="$nope"}[5m])'
    model["panels"].append({**panel, "id": 999})
    problems = "\n".join(validate_grafana(model))
    assert "ingestd_no_such_metric_total is not in the catalogue" in problems
    assert "variable $nope is not defined" in problems
    assert "duplicate id" not in problems
    assert "overlaps" in problems


def _saved(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_saved_objects_structure() -> None:
    """Index pattern over ingestd-events-*, the four campaign questions, a dashboard referencing them all."""
    objects = _saved(SAVED_OBJECTS_PATH.read_text())
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in objects:
        by_type.setdefault(item["type"], []).append(item)
    (pattern,) = by_type["index-pattern"]
    assert pattern["attributes"] == {"title": "ingestd-events-*", "timeFieldName": "@timestamp"}
    titles = {v["attributes"]["title"] for v in by_type["visualization"]}
    for expected in (
        "ingestd: volume registered per facility per day",
        "ingestd: files registered per facility per day",
        "ingestd: ingest rate by outcome",
        "ingestd: latency percentiles (transfer to registry)",
        "ingestd: failures by reason",
    ):
        assert expected in titles
    (dashboard,) = by_type["dashboard"]
    referenced = {ref["id"] for ref in dashboard["references"]}
    assert referenced == {o["id"] for o in objects if o["type"] in ("visualization", "search")}
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    assert len(panels) == len(referenced)
    # Import order: what is referenced comes first.
    assert objects[0]["type"] == "index-pattern"
    assert objects[-1]["type"] == "dashboard"


def test_saved_objects_validator_reports_problems() -> None:
    """Broken references, unmapped fields, wrong field types and unparsable visState are each reported."""
    objects = _saved(render_saved_objects())
    vis = next(o for o in objects if o["id"] == "ingestd-volume-per-facility-per-day")
    state = json.loads(vis["attributes"]["visState"])
    state["aggs"][0]["params"]["field"] = "facility"  # sum over a keyword
    state["aggs"][2]["params"]["field"] = "site"  # not mapped
    vis["attributes"]["visState"] = json.dumps(state)
    per_rse = next(o for o in objects if "terms" in o["attributes"].get("visState", "") and o is not vis)
    terms_state = json.loads(per_rse["attributes"]["visState"])
    terms = next(agg for agg in terms_state["aggs"] if agg["type"] == "terms")
    terms["params"]["field"] = "dataset_id"  # mapped, but an identifier without doc values
    per_rse["attributes"]["visState"] = json.dumps(terms_state)
    rate = next(o for o in objects if o["id"] == "ingestd-ingest-rate")
    rate["attributes"]["visState"] = "{not json"
    dashboard = objects[-1]
    dashboard["references"][0]["id"] = "gone"
    text = "".join(json.dumps(o) + "\n" for o in objects) + "not json either\n"
    problems = "\n".join(validate_saved_objects(text))
    assert "sum needs a numeric field, 'facility' is not" in problems
    assert "unmapped field 'site'" in problems
    assert "uses 'dataset_id', which has no doc values" in problems
    assert "visState is not valid JSON" in problems
    assert "does not resolve" in problems
    assert "not JSON" in problems


def test_saved_objects_for_another_prefix() -> None:
    """A site with its own prefix gets an index pattern over it and nothing else changes."""
    objects = _saved(render_saved_objects("ingestd-events-frdf"))
    assert objects[0]["attributes"]["title"] == "ingestd-events-frdf-*"
    assert validate_saved_objects(render_saved_objects("ingestd-events-frdf")) == []
