"""Reading the index of a Butler zip (``Butler.retrieve_artifacts_zip``, the ``zip_file`` case).

daf_butler writes ``_butler_zip_index.json`` at the top of the zip (its ``ZipIndex``,
``index_version: V1``):

* ``refs`` (``container_version: V1``): the universe, ``dataset_types`` by name
  (``name``, ``storageClass``, ``dimensions``), ``compact_refs`` by dataset UUID
  (``dataset_type_name``, ``run``, ``data_id`` with implied values) and, from newer
  Butlers, ``dimension_records`` by element in compact list form;
* ``artifact_map``: each member of the zip with its datastore record (``formatter``,
  ``path``, ``storage_class``, ``component``, ``checksum``, ``file_size``) and the ``ids``
  of the datasets it holds.

A dataset's file is recorded as ``<zip path>#zip-path=<member>``, the URI form daf_butler
itself uses for artifacts inside a zip.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._records import RecordError, records_from_key_value
from .interface import DatasetRecord, DatasetTypeSpec, FileInfo, Provenance
from .universe import Universe, UniverseError

__all__ = ["ZIP_INDEX_NAME", "ZipContents", "ZipFormatError", "read_zip"]

ZIP_INDEX_NAME = "_butler_zip_index.json"
"""Name of the index daf_butler puts inside its zips."""


class ZipFormatError(ValueError):
    """The file is not a Butler zip this registry can read."""


@dataclass(slots=True)
class ComponentFile:
    """An artifact holding one component of a disassembled dataset."""

    dataset_id: uuid.UUID
    component: str
    file: FileInfo


@dataclass(slots=True)
class ZipContents:
    """Datasets and dimension records of a Butler zip."""

    datasets: list[DatasetRecord] = field(default_factory=list)
    components: list[ComponentFile] = field(default_factory=list)
    records: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    universe_version: int = 0
    warnings: list[str] = field(default_factory=list)


def _member_uri(zip_path: str, member: str) -> str:
    return f"{zip_path}#zip-path={member}"


def read_zip(path: Path, universe: Universe, provenance: Provenance | None = None) -> ZipContents:
    """Read a Butler zip's index into datasets with file records pointing inside the zip.

    Raises
    ------
    ZipFormatError
        Not a zip, no index, an index version or universe this registry cannot read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(ZIP_INDEX_NAME)
    except KeyError:
        raise ZipFormatError(f"{path.name} has no {ZIP_INDEX_NAME}: not a Butler zip") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise ZipFormatError(f"{path.name} is not a readable zip: {error}") from None
    try:
        index = json.loads(raw)
    except ValueError as error:
        raise ZipFormatError(f"{ZIP_INDEX_NAME} is not JSON: {error}") from None
    if not isinstance(index, Mapping) or index.get("index_version", "V1") != "V1":
        raise ZipFormatError(f"zip index version {index.get('index_version')!r} is not V1")
    refs = index.get("refs")
    if not isinstance(refs, Mapping) or refs.get("container_version") != "V1":
        raise ZipFormatError("zip index refs are not a V1 dataset ref container")
    namespace = refs.get("universe_namespace", universe.namespace)
    if namespace != universe.namespace:
        raise ZipFormatError(f"zip of universe namespace {namespace!r}, registry uses {universe.namespace!r}")
    contents = ZipContents(universe_version=int(refs.get("universe_version", 0)))
    dataset_types = {
        name: DatasetTypeSpec(name, tuple(spec.get("dimensions") or ()), str(spec.get("storageClass")))
        for name, spec in (refs.get("dataset_types") or {}).items()
    }
    zip_path = os.path.abspath(path)
    files: dict[uuid.UUID, FileInfo] = {}
    for member, artifact in (index.get("artifact_map") or {}).items():
        info = artifact.get("info", {})
        file = FileInfo(
            path=_member_uri(zip_path, member),
            size=info.get("file_size"),
            formatter=info.get("formatter"),
        )
        for raw_id in artifact.get("ids", []):
            dataset_id = uuid.UUID(str(raw_id))
            if info.get("component"):
                contents.components.append(ComponentFile(dataset_id, str(info["component"]), file))
            else:
                files[dataset_id] = file
    for raw_id, ref in (refs.get("compact_refs") or {}).items():
        dataset_id = uuid.UUID(str(raw_id))
        spec = dataset_types.get(ref["dataset_type_name"])
        if spec is None:
            raise ZipFormatError(
                f"dataset {dataset_id} has type {ref['dataset_type_name']} missing from the index"
            )
        contents.datasets.append(
            DatasetRecord(
                id=dataset_id,
                dataset_type=spec,
                run=str(ref["run"]),
                data_id=dict(ref["data_id"]),
                file=files.get(dataset_id),
                provenance=provenance,
            )
        )
    for element, rows in (refs.get("dimension_records") or {}).items():
        try:
            if not universe[element].has_records:
                continue
            contents.records.append((element, records_from_key_value(universe, element, rows)))
        except (RecordError, UniverseError) as error:
            # Records of another universe version: the registry must already hold them.
            contents.warnings.append(str(error))
    return contents
