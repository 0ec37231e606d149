"""Export to the Butler's own export YAML, read back by the registry's importer.

The round trip through the real ``butler import`` is tested by the daf_butler room
(``tests/registry_butler``); here the file's shape and its re-import are checked.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from butler_registry import SqlRegistry
from butler_registry._values import ButlerYamlLoader, Region, TaiTime
from butler_registry.interface import ItemStatus

from .contract import DatasetFactory, statuses


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    database: str = request.getfixturevalue("postgres_database")
    return database


@pytest.fixture
def filled(url: str, samples_dir: Path, tmp_path: Path, open_sql: Callable[..., SqlRegistry]) -> SqlRegistry:
    registry = open_sql(url, create=True)
    registry.import_dimensions(samples_dir / "prep.yaml")
    datasets = DatasetFactory(tmp_path)
    registry.register([*datasets.calexps(range(4)), datasets.visit_summary(), datasets.raw(2)])
    registry.register(datasets.calexps(range(2), run="HSC/runs/other"))
    return registry


def _export(registry: SqlRegistry, runs: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    stream = io.StringIO()
    registry.export(stream, runs)
    text = stream.getvalue()
    return text, yaml.load(text, Loader=ButlerYamlLoader)


def test_export_has_the_butler_shape(filled: SqlRegistry) -> None:
    text, document = _export(filled)
    assert text.startswith(
        "description: Butler Data Repository Export\nversion: 1.0.2\nuniverse_version: 7\n"
    )
    assert document["universe_namespace"] == "daf_butler"
    kinds = [entry["type"] for entry in document["data"]]
    assert kinds.index("collection") > max(i for i, kind in enumerate(kinds) if kind == "dimension")
    dimensions = {
        entry["element"]: entry["records"] for entry in document["data"] if entry["type"] == "dimension"
    }
    assert len(dimensions["detector"]) == 112
    assert "band" not in dimensions
    (visit,) = dimensions["visit"]
    assert isinstance(visit["region"], Region)
    assert visit["datetime_begin"] == TaiTime(1_395_741_827_628_000_000)
    assert visit["physical_filter"] == "HSC-Y"
    assert visit["day_obs"] == 20140325
    (exposure,) = dimensions["exposure"]
    assert exposure["group"] == "330"
    assert "group_name" not in exposure
    assert "!butler_time/tai/iso '2014-03-25 10:03:47.628000000'" in text
    runs = [entry for entry in document["data"] if entry["type"] == "collection"]
    assert {run["name"] for run in runs} == {
        "HSC/runs/RC2/w_2023_32/DM-40356/20230814T170253Z",
        "HSC/raw/all",
        "HSC/runs/other",
    }
    assert all(run.keys() >= {"collection_type", "host", "timespan_begin", "timespan_end"} for run in runs)
    types = {entry["name"]: entry for entry in document["data"] if entry["type"] == "dataset_type"}
    assert types["calexp"]["dimensions"] == [
        "band",
        "instrument",
        "day_obs",
        "detector",
        "physical_filter",
        "visit",
    ]
    assert types["raw"]["storage_class"] == "Exposure"
    records = [r for e in document["data"] if e["type"] == "dataset" for r in e["records"]]
    assert len(records) == 8
    assert all(isinstance(r["dataset_id"][0], uuid.UUID) for r in records)
    assert all(Path(r["path"]).is_file() for r in records)
    calexp = next(e for e in document["data"] if e["type"] == "dataset" and e["dataset_type"] == "calexp")
    assert calexp["records"][0]["data_id"][0].keys() == {"instrument", "detector", "visit"}


def test_export_of_one_run_carries_the_records_it_needs(filled: SqlRegistry) -> None:
    _text, document = _export(filled, ["HSC/runs/other"])
    dimensions = {
        entry["element"]: entry["records"] for entry in document["data"] if entry["type"] == "dimension"
    }
    # calexps of detectors 0 and 1: their detectors, visit, and what the visit implies.
    assert sorted(record["id"] for record in dimensions["detector"]) == [0, 1]
    assert set(dimensions) >= {"instrument", "visit", "physical_filter", "day_obs", "visit_detector_region"}
    assert "exposure" not in dimensions
    assert len(dimensions["visit_detector_region"]) == 2
    datasets = [r for e in document["data"] if e["type"] == "dataset" for r in e["records"]]
    assert len(datasets) == 2
    with pytest.raises(KeyError, match="nowhere"):
        filled.export(io.StringIO(), ["nowhere"])


def test_export_reimports_into_a_fresh_registry(
    filled: SqlRegistry, tmp_path: Path, open_sql: Callable[..., SqlRegistry]
) -> None:
    export = tmp_path / "export.yaml"
    with export.open("w") as stream:
        summary = filled.export(stream)
    assert (summary.datasets, summary.collections, summary.dataset_types) == (8, 3, 3)
    fresh = open_sql(f"sqlite:///{tmp_path / 'fresh.sqlite3'}", create=True)
    result = fresh.import_dimensions(export)
    assert result.status is ItemStatus.inserted, result
    assert statuses(result.datasets) == [ItemStatus.inserted] * 8
    again = fresh.import_dimensions(export)
    assert again.status is ItemStatus.already_present
    original, copy = filled.stats(), fresh.stats()
    assert (copy.datasets, copy.runs, copy.dataset_types) == (
        original.datasets,
        original.runs,
        original.dataset_types,
    )
    assert copy.dimension_records == original.dimension_records
    # The copy's export is the original's, byte for byte.
    assert _export(fresh)[0] == _export(filled)[0]
