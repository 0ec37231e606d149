"""Bulk look-ups of dimension records in a real Butler repository.

``Butler.ingest`` tells us only that *some* dimension record is missing (a
``LookupError`` while expanding data IDs, or a foreign-key violation). To report
which ones, per item, and to import export files idempotently with counts, we ask
the registry for the records we need, a few queries per element rather than one per
record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from butler_registry.interface import DataIdValue

from ._convert import record_label

if TYPE_CHECKING:
    from lsst.daf.butler import Butler, DimensionRecord, DimensionUniverse

__all__ = ["RecordKey", "existing_records", "missing_record_labels", "record_key", "wanted_keys"]

RecordKey = tuple[Hashable, ...]
"""The required values of a dimension record, in the order of ``element.required``."""

_IN_CHUNK = 1000
"""Values bound into one ``IN (...)`` expression; keeps queries well inside server limits."""


def record_key(record: DimensionRecord) -> RecordKey:
    """The required values of ``record`` in the order of its element's ``required`` dimensions."""
    names = record.definition.required.names
    return tuple(record.dataId[name] for name in names)


def existing_records(
    butler: Butler, element: str, keys: Iterable[RecordKey]
) -> dict[RecordKey, DimensionRecord]:
    """The records of ``element`` the repository has among ``keys``.

    Keys are grouped by their leading (governor) value and looked up with one
    ``IN`` expression per remaining dimension, then filtered exactly; a handful of
    queries serve a batch whatever its size.
    """
    wanted = set(keys)
    if not wanted:
        return {}
    definition = butler.dimensions[element]
    names = list(definition.required.names)
    found: dict[RecordKey, DimensionRecord] = {}
    if len(names) == 1:
        groups: dict[tuple[Hashable, ...], list[RecordKey]] = {(): sorted(wanted, key=repr)}
    else:
        groups = defaultdict(list)
        for key in wanted:
            groups[key[:1]].append(key)
    for prefix, group_keys in groups.items():
        data_id = dict(zip(names[: len(prefix)], prefix, strict=True))
        rest = names[len(prefix) :]
        # Chunk on the last dimension; the others are usually few (detectors, tracts).
        others = {
            name: sorted({key[names.index(name)] for key in group_keys}, key=repr) for name in rest[:-1]
        }
        last = rest[-1]
        last_values = sorted({key[-1] for key in group_keys}, key=repr)
        for start in range(0, len(last_values), _IN_CHUNK):
            bind: dict[str, Any] = {"last_values": last_values[start : start + _IN_CHUNK]}
            clauses = [f"{last} IN (last_values)"]
            for index, (name, values) in enumerate(others.items()):
                bind[f"other_{index}"] = values
                clauses.append(f"{name} IN (other_{index})")
            records = butler.query_dimension_records(
                element, data_id=data_id, where=" AND ".join(clauses), bind=bind, explain=False, limit=None
            )
            for record in records:
                key = record_key(record)
                if key in wanted:
                    found[key] = record
    return found


def _coerce(value: DataIdValue, python_type: type) -> Hashable | None:
    if python_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return None
    return value if isinstance(value, str) else None


def wanted_keys(
    data_id: Mapping[str, DataIdValue], dimensions: Iterable[str], universe: DimensionUniverse
) -> dict[str, RecordKey]:
    """The record keys a data ID refers to, per dimension with its own table.

    A dimension is included only when every one of its required values is in the
    data ID (implied values such as ``physical_filter`` are checked when the sidecar
    carries them; otherwise they come from the visit or exposure record).
    """
    keys: dict[str, RecordKey] = {}
    for name in dimensions:
        dimension = universe.dimensions[name]
        if not dimension.has_own_table:
            continue
        required = list(dimension.required.names)
        if not all(part in data_id for part in required):
            continue
        values = []
        for part in required:
            python_type = universe.dimensions[part].primaryKey.getPythonType()
            coerced = _coerce(data_id[part], python_type)
            if coerced is None:
                break
            values.append(coerced)
        else:
            keys[name] = tuple(values)
    return keys


def missing_record_labels(
    butler: Butler, data_ids: Sequence[tuple[Mapping[str, DataIdValue], Iterable[str]]]
) -> list[tuple[str, ...]]:
    """For each ``(data ID, dimension names)``, the labels of records the repository lacks.

    Returns
    -------
    missing
        One tuple per input, e.g. ``("visit:HSC/999",)``; empty when all are there.
    """
    universe = butler.dimensions
    per_item = [wanted_keys(data_id, names, universe) for data_id, names in data_ids]
    by_element: dict[str, set[RecordKey]] = defaultdict(set)
    for keys in per_item:
        for element, key in keys.items():
            by_element[element].add(key)
    present = {element: existing_records(butler, element, keys) for element, keys in by_element.items()}
    ordered = [element.name for element in universe.sorted(by_element)]
    result: list[tuple[str, ...]] = []
    for keys in per_item:
        result.append(
            tuple(
                record_label(element, keys[element])
                for element in ordered
                if element in keys and keys[element] not in present[element]
            )
        )
    return result
