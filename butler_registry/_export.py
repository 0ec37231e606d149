"""Writing a Butler export YAML so that the real Butler can take over what was registered.

``butler import REPO export.yaml`` (or ``Butler.import_``) reads the file: dimension
records, RUN/TAGGED/CHAINED collections, dataset types, datasets with their file paths,
TAGGED associations. The file is written as a stream, entry by entry, so exporting a
large registry needs memory for one chunk of datasets, not for the registry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import sqlalchemy as sa
import yaml

from ._butler_yaml import EXPORT_FORMAT_VERSION
from ._dimensions import RecordKey, record_references
from ._records import CanonicalRecord, data_key, export_values
from ._schema import (
    COLLECTION,
    COLLECTION_CHAIN,
    DATASET,
    DATASET_FILE,
    DATASET_TAG,
    DATASET_TYPE,
    DIMENSION_RECORD,
)
from ._values import ButlerYamlDumper
from .universe import ElementKind, Universe

__all__ = ["ExportSummary", "write_export"]

_DATASETS_PER_ENTRY = 10_000
_LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    dimension_records: int
    collections: int
    dataset_types: int
    datasets: int
    datasets_without_file: int
    """Datasets left out because they have no file (``butler import`` needs a path)."""


def _entry(stream: IO[str], entry: dict[str, Any]) -> None:
    stream.write(yaml.dump([entry], Dumper=ButlerYamlDumper, sort_keys=False, allow_unicode=True, width=100))


def _records_of_element(connection: sa.Connection, element: str) -> Iterator[CanonicalRecord]:
    query = (
        sa.select(DIMENSION_RECORD.c.data_key, DIMENSION_RECORD.c.record)
        .where(DIMENSION_RECORD.c.element == element)
        .order_by(DIMENSION_RECORD.c.data_key)
    )
    for key, values in connection.execution_options(stream_results=True, yield_per=2000).execute(query):
        yield CanonicalRecord(element, key, values)


def _lookup(connection: sa.Connection, keys: Iterable[RecordKey]) -> dict[RecordKey, dict[str, Any]]:
    keys = list(keys)
    found: dict[RecordKey, dict[str, Any]] = {}
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = keys[start : start + _LOOKUP_CHUNK]
        query = sa.select(
            DIMENSION_RECORD.c.element, DIMENSION_RECORD.c.data_key, DIMENSION_RECORD.c.record
        ).where(sa.tuple_(DIMENSION_RECORD.c.element, DIMENSION_RECORD.c.data_key).in_(chunk))
        for element, key, values in connection.execute(query):
            found[(element, key)] = values
    return found


def _reachable_records(
    connection: sa.Connection, universe: Universe, run_ids: Sequence[int]
) -> dict[str, list[CanonicalRecord]]:
    """Records the datasets of ``run_ids`` need, their own references, and join records among them."""
    wanted: set[RecordKey] = set()
    query = (
        sa.select(DATASET.c.data_id, DATASET_TYPE.c.dimensions)
        .join(DATASET_TYPE, DATASET_TYPE.c.id == DATASET.c.dataset_type_id)
        .where(DATASET.c.run_id.in_(run_ids))
        .distinct()
    )
    for data_id_text, dimensions_text in connection.execution_options(
        stream_results=True, yield_per=5000
    ).execute(query):
        data_id = json.loads(data_id_text)
        for name in universe.record_elements(tuple(json.loads(dimensions_text))):
            required = universe[name].required
            if all(dimension in data_id for dimension in required):
                wanted.add((name, data_key([data_id[d] for d in required])))
    found: dict[RecordKey, dict[str, Any]] = {}
    todo = wanted
    while todo:
        fetched = _lookup(connection, todo)
        found.update(fetched)
        follow: set[RecordKey] = set()
        for (element, key), values in fetched.items():
            follow.update(record_references(universe, CanonicalRecord(element, key, values)))
        todo = follow - found.keys()
        todo = {key for key in todo if key not in found}
        if not fetched:
            break
    by_element: dict[str, list[CanonicalRecord]] = {}
    for (element, key), values in found.items():
        by_element.setdefault(element, []).append(CanonicalRecord(element, key, values))
    for join in universe.elements:
        if join.kind is not ElementKind.join_element:
            continue
        joined = [
            record
            for record in _records_of_element(connection, join.name)
            if all(ref in found for ref in record_references(universe, record))
        ]
        if joined:
            by_element[join.name] = joined
    return by_element


def write_export(
    connection: sa.Connection, universe: Universe, stream: IO[str], runs: Sequence[str] | None = None
) -> ExportSummary:
    """Write a Butler export YAML of the registry, or of the datasets of ``runs``.

    Parameters
    ----------
    connection
        A connection (a read-only transaction is enough).
    universe
        The registry's universe.
    stream
        Where the YAML goes.
    runs
        RUN collections to export, with the dimension records their datasets need;
        ``None`` exports everything (all records, collections and datasets).

    Raises
    ------
    KeyError
        A run in ``runs`` is not a RUN collection of the registry.
    """
    collections = {row.name: (row.id, row.type, row.doc) for row in connection.execute(sa.select(COLLECTION))}
    if runs is None:
        run_names = sorted(name for name, (_id, kind, _doc) in collections.items() if kind == "RUN")
    else:
        unknown = [name for name in runs if collections.get(name, (0, ""))[1] != "RUN"]
        if unknown:
            raise KeyError(f"not RUN collections of this registry: {', '.join(unknown)}")
        run_names = list(dict.fromkeys(runs))
    run_ids = [collections[name][0] for name in run_names]

    if runs is None:
        present = {row[0] for row in connection.execute(sa.select(DIMENSION_RECORD.c.element).distinct())}
        elements = [e.name for e in universe.elements if e.name in present]
        records: dict[str, Iterable[CanonicalRecord]] = {
            name: _records_of_element(connection, name) for name in elements
        }
    else:
        reachable = _reachable_records(connection, universe, run_ids)
        elements = [e.name for e in universe.elements if e.name in reachable]
        records = {name: sorted(reachable[name], key=lambda r: r.key) for name in elements}
    newest = max((universe[name].since for name in elements), default=0)
    universe_version = max(newest, universe.oldest_compatible_version)

    stream.write(
        yaml.dump(
            {
                "description": "Butler Data Repository Export",
                "version": ".".join(map(str, EXPORT_FORMAT_VERSION)),
                "universe_version": universe_version,
                "universe_namespace": universe.namespace,
            },
            Dumper=ButlerYamlDumper,
            sort_keys=False,
        )
    )
    stream.write("data:\n")
    record_count = 0
    for name in elements:
        batch = [export_values(universe, record) for record in records[name]]
        if batch:
            _entry(stream, {"type": "dimension", "element": name, "records": batch})
            record_count += len(batch)

    collection_count = 0
    for name in run_names:
        entry: dict[str, Any] = {"type": "collection", "collection_type": "RUN", "name": name}
        if collections[name][2] is not None:
            entry["doc"] = collections[name][2]
        entry.update({"host": None, "timespan_begin": None, "timespan_end": None})
        _entry(stream, entry)
        collection_count += 1
    if runs is None:
        collection_count += _write_other_collections(connection, stream, collections)

    type_count, dataset_count, without_file = _write_datasets(
        connection, universe, stream, run_names, collections
    )
    if runs is None:
        _write_associations(connection, stream, collections)
    return ExportSummary(record_count, collection_count, type_count, dataset_count, without_file)


def _write_other_collections(
    connection: sa.Connection, stream: IO[str], collections: dict[str, tuple[int, str, str | None]]
) -> int:
    names = {collection_id: name for name, (collection_id, _kind, _doc) in collections.items()}
    count = 0
    for name, (collection_id, kind, doc) in sorted(collections.items()):
        if kind == "RUN":
            continue
        entry: dict[str, Any] = {"type": "collection", "collection_type": kind, "name": name}
        if doc is not None:
            entry["doc"] = doc
        if kind == "CHAINED":
            query = (
                sa.select(COLLECTION_CHAIN.c.child_id)
                .where(COLLECTION_CHAIN.c.parent_id == collection_id)
                .order_by(COLLECTION_CHAIN.c.position)
            )
            entry["children"] = [names[child] for (child,) in connection.execute(query)]
        _entry(stream, entry)
        count += 1
    return count


def _write_datasets(
    connection: sa.Connection,
    universe: Universe,
    stream: IO[str],
    run_names: Sequence[str],
    collections: dict[str, tuple[int, str, str | None]],
) -> tuple[int, int, int]:
    types = {
        row.id: (row.name, json.loads(row.dimensions), row.storage_class, row.is_calibration)
        for row in connection.execute(sa.select(DATASET_TYPE))
    }
    written_types: set[int] = set()
    dataset_count = 0
    without_file = 0
    for run in run_names:
        run_id = collections[run][0]
        type_ids = sorted(
            type_id
            for (type_id,) in connection.execute(
                sa.select(DATASET.c.dataset_type_id).where(DATASET.c.run_id == run_id).distinct()
            )
        )
        for type_id in type_ids:
            name, dimensions, storage_class, is_calibration = types[type_id]
            if type_id not in written_types:
                _entry(
                    stream,
                    {
                        "type": "dataset_type",
                        "name": name,
                        "dimensions": universe.sorted(universe.closure(dimensions)),
                        "storage_class": storage_class,
                        "is_calibration": bool(is_calibration),
                    },
                )
                written_types.add(type_id)
            query = (
                sa.select(DATASET.c.id, DATASET.c.data_id, DATASET_FILE.c.path, DATASET_FILE.c.formatter)
                .select_from(
                    DATASET.outerjoin(
                        DATASET_FILE,
                        sa.and_(DATASET_FILE.c.dataset_id == DATASET.c.id, DATASET_FILE.c.component == ""),
                    )
                )
                .where(DATASET.c.run_id == run_id, DATASET.c.dataset_type_id == type_id)
                .order_by(DATASET.c.id)
            )
            chunk: list[dict[str, Any]] = []
            for dataset_id, data_id, path, formatter in connection.execution_options(
                stream_results=True, yield_per=5000
            ).execute(query):
                if path is None:
                    without_file += 1
                    continue
                record: dict[str, Any] = {
                    "dataset_id": [
                        dataset_id if isinstance(dataset_id, uuid.UUID) else uuid.UUID(str(dataset_id))
                    ],
                    "data_id": [json.loads(data_id)],
                    "path": path,
                }
                if formatter:
                    record["formatter"] = formatter
                chunk.append(record)
                if len(chunk) >= _DATASETS_PER_ENTRY:
                    _entry(stream, {"type": "dataset", "dataset_type": name, "run": run, "records": chunk})
                    dataset_count += len(chunk)
                    chunk = []
            if chunk:
                _entry(stream, {"type": "dataset", "dataset_type": name, "run": run, "records": chunk})
                dataset_count += len(chunk)
    return len(written_types), dataset_count, without_file


def _write_associations(
    connection: sa.Connection, stream: IO[str], collections: dict[str, tuple[int, str, str | None]]
) -> None:
    for name, (collection_id, kind, _doc) in sorted(collections.items()):
        if kind != "TAGGED":
            continue
        ids = [
            dataset_id if isinstance(dataset_id, uuid.UUID) else uuid.UUID(str(dataset_id))
            for (dataset_id,) in connection.execute(
                sa.select(DATASET_TAG.c.dataset_id)
                .where(DATASET_TAG.c.collection_id == collection_id)
                .order_by(DATASET_TAG.c.dataset_id)
            )
        ]
        if ids:
            _entry(
                stream,
                {"type": "associations", "collection": name, "collection_type": "TAGGED", "dataset_ids": ids},
            )
