"""Turning :class:`~butler_registry.interface.DatasetRecord` into the real Butler's objects.

Everything here is a pure function of a record and the repository's dimension
universe: no database access. A record that cannot be expressed in the universe
raises :class:`InvalidRecordError` with a reason naming the field at fault, which
the adapter reports as :attr:`~butler_registry.interface.ItemStatus.invalid`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from butler_registry.interface import DataIdValue, DatasetRecord, DatasetTypeSpec

if TYPE_CHECKING:
    from lsst.daf.butler import (
        DataCoordinate,
        DatasetRef,
        DatasetType,
        DimensionRecord,
        DimensionUniverse,
        FileDataset,
    )

__all__ = [
    "InvalidRecordError",
    "data_coordinate_for",
    "dataset_type_for",
    "difference",
    "dimension_records_for",
    "file_dataset_for",
    "normalised_data_id",
    "record_label",
    "ref_for",
]


class InvalidRecordError(ValueError):
    """The record cannot be expressed in this repository's dimension universe; never retried."""


def dataset_type_for(spec: DatasetTypeSpec, universe: DimensionUniverse) -> DatasetType:
    """The daf_butler dataset type a sidecar describes.

    Raises
    ------
    InvalidRecordError
        Unknown dimension, malformed name, or a component (components are never ingested).
    """
    from lsst.daf.butler import DatasetType

    unknown = [name for name in spec.dimensions if name not in universe.getStaticDimensions().names]
    if unknown:
        raise InvalidRecordError(
            f"dataset type {spec.name!r} names dimensions unknown to universe "
            f"{universe.namespace} v{universe.version}: {', '.join(sorted(unknown))}"
        )
    if DatasetType.splitDatasetTypeName(spec.name)[1] is not None:
        raise InvalidRecordError(f"dataset type {spec.name!r} is a component; only parents are ingested")
    try:
        return DatasetType(spec.name, spec.dimensions, spec.storage_class, universe=universe)
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidRecordError(f"dataset type {spec.name!r} is not valid: {error}") from error


def _normalised(dimension: str, value: DataIdValue, python_type: type) -> DataIdValue:
    """Coerce decimal strings to int for integer dimensions; refuse anything else mismatched."""
    if python_type is int:
        if isinstance(value, bool):
            raise InvalidRecordError(f"data ID value {dimension}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise InvalidRecordError(f"data ID value {dimension}={value!r} is not an integer")
    if isinstance(value, str):
        return value
    raise InvalidRecordError(f"data ID value {dimension}={value!r} is not a string")


def normalised_data_id(
    data_id: Mapping[str, DataIdValue], dataset_type: DatasetType
) -> dict[str, DataIdValue]:
    """The data ID restricted to the dataset type's dimensions, values of the right Python type.

    Keys outside the dataset type's dimensions (required or implied) are dropped, as
    ``DataCoordinate.standardize`` does.

    Raises
    ------
    InvalidRecordError
        A required dimension is missing or a value has the wrong type.
    """
    group = dataset_type.dimensions
    universe = group.universe
    missing = [name for name in group.required if name not in data_id]
    if missing:
        raise InvalidRecordError(
            f"data ID lacks required dimension(s) {', '.join(missing)} of dataset type {dataset_type.name!r}"
        )
    values: dict[str, DataIdValue] = {}
    for name, value in data_id.items():
        if name in group.names:
            python_type = universe.dimensions[name].primaryKey.getPythonType()
            values[name] = _normalised(name, value, python_type)
    return values


def data_coordinate_for(data_id: Mapping[str, DataIdValue], dataset_type: DatasetType) -> DataCoordinate:
    """A standardized data coordinate holding the required and any implied values given.

    Raises
    ------
    InvalidRecordError
        A required dimension is missing or a value has the wrong type.
    """
    from lsst.daf.butler import DataCoordinate

    values = normalised_data_id(data_id, dataset_type)
    try:
        return DataCoordinate.standardize(values, dimensions=dataset_type.dimensions)
    except (LookupError, ValueError, TypeError) as error:
        raise InvalidRecordError(f"data ID {dict(data_id)} is not valid: {error}") from error


def ref_for(record: DatasetRecord, dataset_type: DatasetType) -> DatasetRef:
    """The resolved ``DatasetRef`` of ``record`` (same UUID, run and data ID).

    Raises
    ------
    InvalidRecordError
        The data ID or run cannot be expressed.
    """
    from lsst.daf.butler import DatasetRef

    if not record.run or record.run != record.run.strip():
        raise InvalidRecordError(f"run name {record.run!r} is empty or has surrounding blanks")
    coordinate = data_coordinate_for(record.data_id, dataset_type)
    try:
        return DatasetRef(dataset_type, coordinate, run=record.run, id=record.id)
    except (ValueError, TypeError) as error:
        raise InvalidRecordError(f"dataset {record.id} cannot be expressed: {error}") from error


def file_dataset_for(record: DatasetRecord, ref: DatasetRef) -> FileDataset:
    """A fresh ``FileDataset`` for ``Butler.ingest``.

    A new object is made for every attempt: ``Butler.ingest`` rewrites the paths,
    formatters and refs of what it is given, even when it then fails.

    Raises
    ------
    InvalidRecordError
        The record has no file: the real Butler only ingests datasets with an artifact.
    """
    from lsst.daf.butler import FileDataset

    if record.file is None:
        raise InvalidRecordError(
            f"dataset {record.id} has no file; Butler.ingest registers datasets with their artifact only"
        )
    return FileDataset(path=record.file.path, refs=[ref], formatter=record.file.formatter)


def difference(existing: DatasetRef, wanted: DatasetRef) -> str | None:
    """Why ``existing`` (in the registry) is not the dataset ``wanted``; ``None`` when they agree.

    Two refs of the same UUID agree when dataset type name, run and the required
    data ID values match: that is what the Butler's unique keys are made of.
    Implied values (band, day_obs, ...) come from dimension records in the Butler,
    so a sidecar cannot change them.
    """
    if existing.datasetType.name != wanted.datasetType.name:
        return (
            f"dataset {wanted.id} exists with type {existing.datasetType.name!r}, "
            f"not {wanted.datasetType.name!r}"
        )
    if existing.run != wanted.run:
        return f"dataset {wanted.id} exists in run {existing.run!r}, not {wanted.run!r}"
    have = dict(existing.dataId.required)
    want = dict(wanted.dataId.required)
    if have != want:
        return f"dataset {wanted.id} exists with data ID {have}, not {want}"
    return None


def record_label(element: str, required_values: Sequence[Any]) -> str:
    """The operator-facing name of a dimension record: ``visit:HSC/328``, ``instrument:LATISS``."""
    return f"{element}:{'/'.join(str(value) for value in required_values)}"


def dimension_records_for(
    shipped: Mapping[str, Sequence[Mapping[str, Any]]], universe: DimensionUniverse
) -> list[tuple[str, DimensionRecord]]:
    """The dimension records shipped with a data ID, as daf_butler records, parents first.

    Values are in the form ``DatasetRef.to_json`` writes them (``dataId.records``):
    regions as hex-encoded sphgeom, timespans as ``[begin, end]`` TAI nanoseconds.

    Raises
    ------
    InvalidRecordError
        Unknown element or values that do not fit it.
    """
    from lsst.daf.butler import DimensionRecord
    from lsst.daf.butler.dimensions import SerializedDimensionRecord

    unknown = [name for name in shipped if name not in universe.elements.names]
    if unknown:
        raise InvalidRecordError(f"shipped dimension records of unknown element(s): {', '.join(unknown)}")
    converted: list[tuple[str, DimensionRecord]] = []
    for element in universe.sorted(shipped):
        name = element.name
        for values in shipped[name]:
            if not element.has_own_table:
                continue  # e.g. band: its values live in other records, nothing to insert
            try:
                record = DimensionRecord.from_simple(
                    SerializedDimensionRecord(definition=name, record=dict(values)), universe=universe
                )
            except (ValueError, TypeError, KeyError) as error:
                raise InvalidRecordError(
                    f"shipped {name} record {dict(values)} is not valid: {error}"
                ) from error
            converted.append((name, record))
    return converted
