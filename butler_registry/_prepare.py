"""Checks of a batch that need no database: dataset types, data IDs, duplicates inside the batch.

Each item of a batch becomes either a :class:`PreparedItem` (to be written) or a final
:class:`~butler_registry.interface.ItemResult` (``invalid``, or a conflict with an earlier
item of the same batch). Doing this in pure Python first keeps the database work
set-based: the transaction only sees items that can be written.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ._records import CanonicalRecord, RecordError, canonical_record, data_key, json_scalar
from .interface import DataIdValue, DatasetRecord, DatasetTypeSpec, FileInfo, ItemResult, ItemStatus
from .universe import Universe, UniverseError

__all__ = [
    "DatasetTypeKey",
    "PreparedItem",
    "data_id_text",
    "hash_data_id",
    "normalise_dataset_type",
    "prepare_batch",
]


@dataclass(frozen=True, slots=True)
class DatasetTypeKey:
    """A dataset type as the registry compares them: name, required dimensions, storage class."""

    name: str
    dimensions: tuple[str, ...]
    """Required dimensions in the universe's order."""
    storage_class: str

    @property
    def dimensions_json(self) -> str:
        """How the ``dataset_type`` table stores the dimensions."""
        return json.dumps(list(self.dimensions), separators=(",", ":"))


@dataclass(slots=True)
class PreparedItem:
    """One item of a batch that passed the checks needing no database."""

    index: int
    """Position in the batch."""
    record: DatasetRecord
    dataset_type: DatasetTypeKey
    data_id: dict[str, DataIdValue]
    """Required dimensions only, in the universe's order."""
    data_id_text: str
    data_id_hash: bytes
    given_implied: dict[str, DataIdValue]
    """Implied values the item's data ID states; checked against the records."""
    records: list[CanonicalRecord] = field(default_factory=list)
    """Dimension records shipped with the item."""

    @property
    def dataset_id(self) -> uuid.UUID:
        """The dataset's UUID."""
        return self.record.id

    @property
    def file(self) -> FileInfo | None:
        """The dataset's file, if any."""
        return self.record.file


@dataclass(slots=True)
class PreparedBatch:
    """Outcome of :func:`prepare_batch`."""

    items: list[PreparedItem]
    """Items to write, in batch order, each id and (type, data ID, run) once."""
    results: dict[int, ItemResult]
    """Final results already known (invalid items, conflicts inside the batch)."""
    repeats: dict[int, int]
    """Later items that repeat an earlier item identically: batch index → index of the first."""


def data_id_text(data_id: Mapping[str, DataIdValue]) -> str:
    """Canonical JSON of a required data ID (keys already in the universe's order).

    The same text ``json.dumps(data_id, separators=(",", ":"), ensure_ascii=False)``
    gives, built by hand for speed.
    """
    return "{" + ",".join([f'"{name}":{json_scalar(value)}' for name, value in data_id.items()]) + "}"


def hash_data_id(text: str) -> bytes:
    """The 16-byte digest that carries the one-dataset-per-data-ID-in-a-run rule."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def normalise_dataset_type(
    universe: Universe, name: str, dimensions: Sequence[str], storage_class: str
) -> DatasetTypeKey:
    """A dataset type in comparable form.

    Raises
    ------
    UniverseError
        A dimension that is not in the universe.
    """
    return DatasetTypeKey(name, universe.required_dimensions(dimensions), storage_class)


def _coerce_value(universe: Universe, dimension: str, value: Any) -> DataIdValue:
    expected_int = universe.key_type(dimension) == "int"
    if type(value) is (int if expected_int else str):
        return value
    if expected_int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"data ID value {dimension}={value!r} must be an integer")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"data ID value {dimension}={value!r} must be a string")
    return str(value)


@dataclass(frozen=True, slots=True)
class _TypePlan:
    """What checking data IDs of one dataset type needs, computed once per batch."""

    key: DatasetTypeKey
    required: tuple[tuple[str, bool], ...]
    """Required dimensions and whether each takes integers."""
    group: frozenset[str]


def _type_plan(universe: Universe, spec: DatasetTypeSpec) -> _TypePlan:
    return _type_plan_of(universe, spec.name, tuple(spec.dimensions), spec.storage_class)


@lru_cache(maxsize=4096)
def _type_plan_of(
    universe: Universe, name: str, dimensions: tuple[str, ...], storage_class: str
) -> _TypePlan:
    # Memoised across batches: the dimension closure behind it took ~0.5 ms per type and
    # batch, and every zip of a daemon batch is a batch of its own.
    key = normalise_dataset_type(universe, name, dimensions, storage_class)
    required = tuple((dimension, universe.key_type(dimension) == "int") for dimension in key.dimensions)
    return _TypePlan(key, required, universe.group(key.dimensions))


def _file_signature(file: FileInfo | None) -> tuple[Any, ...] | None:
    if file is None:
        return None
    return (file.path, file.size, file.adler32, file.md5, file.formatter)


def _signature(item: PreparedItem) -> tuple[Any, ...]:
    return (item.dataset_type, item.record.run, item.data_id_text, _file_signature(item.file))


def _prepare_item(
    universe: Universe,
    index: int,
    record: DatasetRecord,
    types: dict[tuple[str, tuple[str, ...], str], _TypePlan],
) -> PreparedItem | ItemResult:
    spec = record.dataset_type
    if not spec.name or not record.run:
        return ItemResult(record.id, ItemStatus.invalid, "dataset type name and run must not be empty")
    type_cache_key = (spec.name, tuple(spec.dimensions), spec.storage_class)
    plan = types.get(type_cache_key)
    if plan is None:
        try:
            plan = _type_plan(universe, spec)
        except UniverseError as error:
            return ItemResult(record.id, ItemStatus.invalid, f"dataset type {spec.name}: {error}")
        types[type_cache_key] = plan
    data_id = record.data_id
    required: dict[str, DataIdValue] = {}
    try:
        for name, takes_int in plan.required:
            value = data_id.get(name)
            if type(value) is not (int if takes_int else str):
                if value is None:
                    lacking = [n for n, _ in plan.required if data_id.get(n) is None]
                    return ItemResult(
                        record.id,
                        ItemStatus.invalid,
                        f"data ID {dict(data_id)} lacks required dimension(s) {', '.join(lacking)} "
                        f"of dataset type {spec.name}",
                    )
                value = _coerce_value(universe, name, value)
            required[name] = value
        given_implied: dict[str, DataIdValue] = {}
        if len(data_id) > len(required):
            for name, value in data_id.items():
                if name in required or value is None:
                    continue
                if name in plan.group:
                    given_implied[name] = _coerce_value(universe, name, value)
                elif name not in universe:
                    return ItemResult(
                        record.id, ItemStatus.invalid, f"data ID names unknown dimension {name!r}"
                    )
    except ValueError as error:
        return ItemResult(record.id, ItemStatus.invalid, str(error))
    text = data_id_text(required)
    item = PreparedItem(
        index=index,
        record=record,
        dataset_type=plan.key,
        data_id=required,
        data_id_text=text,
        data_id_hash=hash_data_id(text),
        given_implied=given_implied,
    )
    if record.dimension_records:
        try:
            for element, rows in record.dimension_records.items():
                if element in universe and not universe[element].has_records:
                    continue  # band and skypix levels have no records to store
                item.records.extend(canonical_record(universe, element, row) for row in rows)
        except (RecordError, UniverseError) as error:
            return ItemResult(record.id, ItemStatus.invalid, f"shipped dimension record: {error}")
    return item


def prepare_batch(universe: Universe, batch: Sequence[DatasetRecord]) -> PreparedBatch:
    """Check a batch without the database and settle duplicates inside it.

    An id repeated with identical content is written once and reported
    ``already_present`` for its repeats; repeated with other content, or a second id
    for the same (dataset type, data ID, run), is a conflict naming the first item.
    """
    items: list[PreparedItem] = []
    results: dict[int, ItemResult] = {}
    repeats: dict[int, int] = {}
    by_id: dict[uuid.UUID, PreparedItem] = {}
    by_data_id: dict[tuple[str, str, str], PreparedItem] = {}
    types: dict[tuple[str, tuple[str, ...], str], _TypePlan] = {}
    for index, record in enumerate(batch):
        prepared = _prepare_item(universe, index, record, types)
        if isinstance(prepared, ItemResult):
            results[index] = prepared
            continue
        first = by_id.get(record.id)
        if first is not None:
            if _signature(first) == _signature(prepared):
                repeats[index] = first.index
            else:
                results[index] = ItemResult(
                    record.id,
                    ItemStatus.conflict,
                    f"dataset {record.id} appears twice in the batch with different content "
                    f"(items {first.index} and {index})",
                )
            continue
        data_id_key = (prepared.dataset_type.name, record.run, prepared.data_id_text)
        other = by_data_id.get(data_id_key)
        if other is not None:
            results[index] = ItemResult(
                record.id,
                ItemStatus.conflict,
                f"dataset type {data_id_key[0]} with data ID {prepared.data_id_text} in run {record.run} "
                f"is already item {other.index} of the batch, as dataset {other.dataset_id}",
            )
            continue
        by_id[record.id] = prepared
        by_data_id[data_id_key] = prepared
        items.append(prepared)
    return PreparedBatch(items, results, repeats)


def record_key(universe: Universe, element: str, values: Mapping[str, DataIdValue]) -> str | None:
    """The data key of ``element``'s record for a data ID, or ``None`` if a value is unknown."""
    required = universe[element].required
    if any(name not in values for name in required):
        return None
    return data_key([values[name] for name in required])
