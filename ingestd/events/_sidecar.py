"""The ``rubin_sidecar``: a serialized Butler ``DatasetRef`` (daf_butler's ``SerializedDatasetRef``).

What ``DatasetRef.to_json()`` writes and HermesK forwards verbatim::

    {"id": "0ef08762-b0dd-4a02-8b1c-e09b1544992d",
     "datasetType": {"name": "visitSummary", "storageClass": "ExposureCatalog",
                     "dimensions": ["instrument", "visit"]},
     "dataId": {"dataId": {"instrument": "HSC", "visit": 328, "band": "y",
                           "physical_filter": "HSC-Y"},
                "records": {"visit": {"definition": "visit", "record": {...}}}},
     "run": "HSC/runs/RC2/w_2023_32/DM-40356/20230814T170253Z"}

Forms real Butlers have written, all accepted:

* ``datasetType.dimensions`` as a list of names (current), or as the older
  ``SerializedDimensionGraph`` object ``{"names": [...]}`` (other keys of that
  object, e.g. a universe version, are ignored);
* ``dataId.records`` present only for expanded refs: one
  ``SerializedDimensionRecord`` (``{"definition": ..., "record": {...}}``) per element;
* ``dataId`` without the inner ``dataId`` level (a bare mapping of values);
* component refs (``datasetType.name`` ``"calexp.wcs"`` with
  ``parentStorageClass``, or a ``component`` key): a component shares its parent's
  dataset id, so the parent dataset is what gets registered;
* ``isCalibration`` and any other key, kept as extras.

This module needs no daf_butler.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from butler_registry.interface import DataIdValue, DatasetRecord, DatasetTypeSpec, FileInfo, Provenance

__all__ = ["Sidecar", "SidecarDataCoordinate", "SidecarDatasetType", "SidecarDimensionRecord"]


@lru_cache(maxsize=4096)
def _dataset_type_spec(name: str, dimensions: tuple[str, ...], storage_class: str) -> DatasetTypeSpec:
    """One shared (immutable) spec per dataset type: a campaign has few types and many datasets."""
    return DatasetTypeSpec(name=name, dimensions=dimensions, storage_class=storage_class)


def _dimension_names(value: Any) -> Any:
    """Accept ``["a", "b"]`` and the older ``{"names": ["a", "b"], ...}``."""
    if isinstance(value, Mapping) and "names" in value:
        return value["names"]
    return value


Name = Annotated[StrictStr, Field(min_length=1)]


class SidecarDatasetType(BaseModel):
    """``SerializedDatasetType``: the dataset type a sidecar names."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_by_name=True, validate_by_alias=True)

    name: Name = Field(..., title="Dataset type name", examples=["visitSummary", "calexp.wcs"])
    storage_class: Name | None = Field(None, alias="storageClass", examples=["ExposureCatalog"])
    dimensions: Annotated[tuple[Name, ...], BeforeValidator(_dimension_names)] = Field(
        ..., title="Required dimensions", examples=[["instrument", "visit"]]
    )
    parent_storage_class: Name | None = Field(None, alias="parentStorageClass")
    is_calibration: StrictBool = Field(False, alias="isCalibration")

    @property
    def component(self) -> str | None:
        """The component of a component dataset type name (``calexp.wcs`` -> ``wcs``)."""
        _, dot, component = self.name.partition(".")
        return component if dot else None


class SidecarDimensionRecord(BaseModel):
    """``SerializedDimensionRecord``: one dimension record of an expanded data ID."""

    model_config = ConfigDict(extra="allow", frozen=True)

    definition: Name = Field(..., title="Dimension element", examples=["visit"])
    record: dict[StrictStr, Any] = Field(..., title="Record fields and values")


def _nest_flat_data_id(value: Any) -> Any:
    """A bare ``{"instrument": "HSC", ...}`` is read as ``{"dataId": {...}}``."""
    if isinstance(value, Mapping) and "dataId" not in value and "records" not in value:
        return {"dataId": value}
    return value


class SidecarDataCoordinate(BaseModel):
    """``SerializedDataCoordinate``: the data ID, and its records when the ref was expanded."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_by_name=True, validate_by_alias=True)

    values: dict[StrictStr, StrictInt | StrictStr] = Field(
        ...,
        alias="dataId",
        title="Data ID values",
        description="Dimension name -> integer id or string name.",
        examples=[{"instrument": "HSC", "visit": 328}],
    )
    records: dict[StrictStr, SidecarDimensionRecord] | None = Field(
        None, title="Dimension records (expanded refs only)"
    )


class Sidecar(BaseModel):
    """``SerializedDatasetRef``: the dataset a ``data_product`` or ``raw_file`` event registers."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_by_name=True, validate_by_alias=True)

    id: uuid.UUID = Field(..., title="Dataset id (UUID)")
    dataset_type: SidecarDatasetType = Field(..., alias="datasetType")
    data_id: Annotated[SidecarDataCoordinate, BeforeValidator(_nest_flat_data_id)] = Field(
        ..., alias="dataId"
    )
    run: Name = Field(..., title="RUN collection", examples=["LATISS/raw/all"])
    component: Name | None = Field(None, title="Component (component refs only)")

    @model_validator(mode="after")
    def _component_has_parent(self) -> Sidecar:
        component = self.component or self.dataset_type.component
        if component is not None and self.dataset_type.parent_storage_class is None:
            raise ValueError(
                f"component ref ({self.dataset_type.name!r}, component {component!r}) lacks "
                "datasetType.parentStorageClass, so its parent dataset cannot be registered"
            )
        if component is None and self.dataset_type.storage_class is None:
            raise ValueError("datasetType.storageClass: required but missing")
        return self

    def parent_dataset_type(self) -> DatasetTypeSpec:
        """The dataset type to register: the parent's for a component ref (same dataset id)."""
        dataset_type = self.dataset_type
        if self.component is not None or dataset_type.component is not None:
            storage_class = dataset_type.parent_storage_class
        else:
            storage_class = dataset_type.storage_class
        assert storage_class is not None  # guaranteed by _component_has_parent
        return _dataset_type_spec(dataset_type.name.partition(".")[0], dataset_type.dimensions, storage_class)

    def dimension_records(self) -> dict[str, list[dict[str, Any]]] | None:
        """The embedded records as :attr:`DatasetRecord.dimension_records` wants them (by element)."""
        if not self.data_id.records:
            return None
        return {element: [dict(entry.record)] for element, entry in self.data_id.records.items()}

    def inconsistencies(self) -> list[str]:
        """Where the embedded dimension records contradict the data ID (empty when consistent).

        Checked: each record's ``definition`` is the element it is filed under; a
        record of an element that is in the data ID has that value as its ``id``
        or ``name``; a record's ``instrument`` equals the data ID's. The registry
        would otherwise insert records describing another exposure than the one
        the dataset claims.
        """
        problems: list[str] = []
        if not self.data_id.records:
            return problems
        values: Mapping[str, DataIdValue] = self.data_id.values
        for element, entry in self.data_id.records.items():
            if entry.definition != element:
                problems.append(f"dataId.records.{element}.definition is {entry.definition!r}")
            record = entry.record
            if element in values:
                keys = [record[key] for key in ("id", "name") if key in record]
                if keys and values[element] not in keys:
                    problems.append(
                        f"dataId.records.{element} describes {keys[0]!r} but dataId.{element} is "
                        f"{values[element]!r}"
                    )
            instrument = record.get("instrument")
            if instrument is not None and "instrument" in values and instrument != values["instrument"]:
                problems.append(
                    f"dataId.records.{element}.instrument is {instrument!r} but dataId.instrument is "
                    f"{values['instrument']!r}"
                )
        return problems

    def to_record(
        self, *, file: FileInfo | None = None, provenance: Provenance | None = None
    ) -> DatasetRecord:
        """The registry item for this ref, with the facility's file and the event's provenance."""
        return DatasetRecord(
            id=self.id,
            dataset_type=self.parent_dataset_type(),
            run=self.run,
            data_id=self.data_id.values,
            file=file,
            provenance=provenance,
            dimension_records=self.dimension_records(),
        )
