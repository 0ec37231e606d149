"""Dashboards as files: Grafana over the metrics, OpenSearch Dashboards over the event documents.

Both are generated from code (:func:`grafana_dashboard`, :func:`saved_objects`)
and committed; :func:`check_dashboard_files` reports drift between the files and
the code, and every problem :func:`validate_grafana` and
:func:`validate_saved_objects` find. ``ingestd monitoring dashboards`` prints,
writes or checks them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from ._grafana import GRAFANA_UID, grafana_dashboard
from ._saved_objects import INDEX_PATTERN_ID, saved_objects
from ._validate import (
    aggregatable_fields,
    grafana_expressions,
    mapped_fields,
    metric_names_in,
    validate_grafana,
    validate_saved_objects,
)

__all__ = [
    "GRAFANA_PATH",
    "GRAFANA_UID",
    "INDEX_PATTERN_ID",
    "SAVED_OBJECTS_PATH",
    "aggregatable_fields",
    "check_dashboard_files",
    "grafana_dashboard",
    "grafana_expressions",
    "mapped_fields",
    "metric_names_in",
    "render_grafana",
    "render_saved_objects",
    "saved_objects",
    "validate_grafana",
    "validate_saved_objects",
    "write_dashboard_files",
]

_MONITORING: Final = Path(__file__).resolve().parent.parent
GRAFANA_PATH: Final = _MONITORING / "grafana" / "ingestd.json"
SAVED_OBJECTS_PATH: Final = Path(__file__).resolve().parent / "ingestd-events.ndjson"


def render_grafana() -> str:
    """Return the Grafana dashboard file's text."""
    return json.dumps(grafana_dashboard(), indent=2, ensure_ascii=False) + "\n"


def render_saved_objects(index_prefix: str = "ingestd-events") -> str:
    """Return the saved-objects ndjson for ``index_prefix`` (one object per line)."""
    return "".join(
        json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in saved_objects(index_prefix)
    )


def write_dashboard_files() -> list[Path]:
    """Write both dashboard files from code; returns their paths."""
    GRAFANA_PATH.write_text(render_grafana())
    SAVED_OBJECTS_PATH.write_text(render_saved_objects())
    return [GRAFANA_PATH, SAVED_OBJECTS_PATH]


def check_dashboard_files() -> list[str]:
    """Return every problem of the committed dashboard files: drift from the code, then validation."""
    problems: list[str] = []
    for path, expected in ((GRAFANA_PATH, render_grafana()), (SAVED_OBJECTS_PATH, render_saved_objects())):
        if not path.exists():
            problems.append(f"{path} is missing; run `ingestd monitoring dashboards --write`")
        elif path.read_text() != expected:
            problems.append(f"{path} differs from the code; run `ingestd monitoring dashboards --write`")
    if GRAFANA_PATH.exists():
        problems += [
            f"{GRAFANA_PATH.name}: {p}" for p in validate_grafana(json.loads(GRAFANA_PATH.read_text()))
        ]
    if SAVED_OBJECTS_PATH.exists():
        problems += [
            f"{SAVED_OBJECTS_PATH.name}: {p}" for p in validate_saved_objects(SAVED_OBJECTS_PATH.read_text())
        ]
    return problems
