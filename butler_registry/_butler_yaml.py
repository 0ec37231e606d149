"""Reading a Butler export YAML (``butler export`` / ``Butler.export``, the ``dim_file`` case).

The file is a mapping with ``description: Butler Data Repository Export``, a format
``version`` (1.x.y), the universe it was written with, and a ``data`` list of entries:
``dimension`` (records of one element), ``collection`` (RUN, TAGGED, CHAINED),
``dataset_type``, ``dataset`` (refs with file paths) and ``associations`` (TAGGED
membership). Records of universes older than 6 are brought up to date the way
``butler import`` does (:func:`butler_registry._records.upgrade_export_records`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from ._records import upgrade_export_records
from ._values import ButlerYamlLoader
from .interface import DatasetRecord, DatasetTypeSpec, FileInfo, Provenance
from .universe import Universe

__all__ = ["EXPORT_FORMAT_VERSION", "ExportContents", "ExportFormatError", "read_export"]

EXPORT_FORMAT_VERSION = (1, 0, 2)
"""The export format version daf_butler writes and reads (major must match, minor not newer)."""


class ExportFormatError(ValueError):
    """The file is not a Butler export this registry can read."""


@dataclass(slots=True)
class ExportContents:
    """What an export file holds, in registry terms."""

    universe_namespace: str
    universe_version: int
    records: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    """Dimension records by element, upgraded to the current universe."""
    runs: dict[str, str | None] = field(default_factory=dict)
    """RUN collections and their documentation."""
    tagged: dict[str, str | None] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)
    datasets: list[DatasetRecord] = field(default_factory=list)
    associations: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    """Entries this registry cannot represent (CALIBRATION collections), for the log."""


def _version(value: Any) -> tuple[int, int, int]:
    if value in (0, "0"):
        return (1, 0, 0)
    try:
        parts = tuple(int(part) for part in str(value).split("."))
    except ValueError:
        raise ExportFormatError(f"export format version {value!r} is not MAJOR.MINOR.PATCH") from None
    if len(parts) != 3:
        raise ExportFormatError(f"export format version {value!r} is not MAJOR.MINOR.PATCH")
    return (parts[0], parts[1], parts[2])


def read_export(
    source: Path | IO[str], universe: Universe, provenance: Provenance | None = None
) -> ExportContents:
    """Parse a Butler export file.

    Parameters
    ----------
    source
        The file (relative dataset paths are taken relative to its directory), or a stream.
    universe
        The registry's universe (exports of another namespace are refused).
    provenance
        Attached to every dataset of the file.

    Raises
    ------
    ExportFormatError
        Not YAML, not an export, a format version this code cannot read, another universe.
    """
    base: Path | None = None
    try:
        if isinstance(source, Path):
            base = source.parent
            with source.open(encoding="utf-8") as stream:
                document = yaml.load(stream, Loader=ButlerYamlLoader)
        else:
            document = yaml.load(source, Loader=ButlerYamlLoader)
    except yaml.YAMLError as error:
        raise ExportFormatError(f"not readable YAML: {error}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("data"), list):
        raise ExportFormatError("not a Butler export: no 'data' list")
    version = _version(document.get("version", 0))
    if version[0] != EXPORT_FORMAT_VERSION[0] or version[1] > EXPORT_FORMAT_VERSION[1]:
        raise ExportFormatError(
            f"export format version {'.'.join(map(str, version))} cannot be read "
            f"(this registry reads {EXPORT_FORMAT_VERSION[0]}.0-{EXPORT_FORMAT_VERSION[1]}.x)"
        )
    namespace = str(document.get("universe_namespace", "daf_butler"))
    universe_version = int(document.get("universe_version", 0))
    if namespace != universe.namespace:
        raise ExportFormatError(
            f"export of universe namespace {namespace!r}, registry uses {universe.namespace!r}"
        )
    contents = ExportContents(namespace, universe_version)
    dataset_types: dict[str, DatasetTypeSpec] = {}
    dataset_entries: list[Mapping[str, Any]] = []
    raw_records: list[tuple[str, list[dict[str, Any]]]] = []
    for position, entry in enumerate(document["data"]):
        if not isinstance(entry, Mapping) or "type" not in entry:
            raise ExportFormatError(f"data entry {position} has no 'type'")
        kind = entry["type"]
        if kind == "dimension":
            records = entry.get("records") or []
            if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
                raise ExportFormatError(
                    f"dimension entry {position} ({entry.get('element')}) has no record list"
                )
            raw_records.append((str(entry["element"]), [dict(r) for r in records]))
        elif kind == "collection":
            _read_collection(entry, contents)
        elif kind == "run":
            contents.runs[str(entry["name"])] = None
        elif kind == "dataset_type":
            name = str(entry["name"])
            dataset_types[name] = DatasetTypeSpec(
                name, tuple(entry["dimensions"]), str(entry["storage_class"])
            )
        elif kind == "dataset":
            dataset_entries.append(entry)
        elif kind == "associations":
            if entry.get("collection_type") == "TAGGED":
                ids = [uuid.UUID(str(i)) for i in entry.get("dataset_ids", [])]
                contents.associations.setdefault(str(entry["collection"]), []).extend(ids)
            else:
                contents.ignored.append(
                    f"{entry.get('collection_type')} associations of {entry.get('collection')}"
                )
        else:
            raise ExportFormatError(f"data entry {position} has unknown type {kind!r}")
    contents.records = list(upgrade_export_records(universe, universe_version, namespace, raw_records))
    for entry in dataset_entries:
        contents.datasets.extend(_read_datasets(entry, dataset_types, base, provenance))
    return contents


def _read_collection(entry: Mapping[str, Any], contents: ExportContents) -> None:
    name = str(entry["name"])
    kind = entry.get("collection_type")
    if entry.get("doc") is not None:
        contents.docs[name] = str(entry["doc"])
    if kind == "RUN":
        contents.runs[name] = entry.get("doc")
    elif kind == "TAGGED":
        contents.tagged[name] = entry.get("doc")
    elif kind == "CHAINED":
        children = []
        for child in entry.get("children", []):
            children.append(str(child if isinstance(child, str) else child[0]))
        contents.chains[name] = children
    else:
        contents.ignored.append(f"{kind} collection {name}")


def _read_datasets(
    entry: Mapping[str, Any],
    dataset_types: Mapping[str, DatasetTypeSpec],
    base: Path | None,
    provenance: Provenance | None,
) -> list[DatasetRecord]:
    type_name = str(entry["dataset_type"])
    spec = dataset_types.get(type_name)
    if spec is None:
        raise ExportFormatError(f"datasets of type {type_name} without a dataset_type entry")
    run = str(entry["run"])
    datasets = []
    for record in entry.get("records", []):
        ids = record["dataset_id"] if isinstance(record["dataset_id"], list) else [record["dataset_id"]]
        data_ids = record["data_id"] if isinstance(record["data_id"], list) else [record["data_id"]]
        if len(ids) != len(data_ids):
            raise ExportFormatError(
                f"dataset record of {type_name} has {len(ids)} ids for {len(data_ids)} data IDs"
            )
        path = record.get("path")
        file = None
        if path is not None:
            path = str(path)
            if base is not None and "://" not in path and not os.path.isabs(path):
                path = str(base / path)
            file = FileInfo(path=path, formatter=record.get("formatter"))
        for dataset_id, data_id in zip(ids, data_ids, strict=True):
            if isinstance(dataset_id, int):
                raise ExportFormatError("integer dataset ids (exports before UUIDs) are not supported")
            datasets.append(
                DatasetRecord(
                    id=uuid.UUID(str(dataset_id)),
                    dataset_type=spec,
                    run=run,
                    data_id=dict(data_id),
                    file=file,
                    provenance=provenance,
                )
            )
    return datasets
