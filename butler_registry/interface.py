"""The registry contract: what the ingest engine asks of any registry implementation.

Two implementations honour it: the SQL registry of this package (PostgreSQL in
production, SQLite embedded) and an adapter over the real ``lsst-daf-butler``. One
contract test suite runs against both.

Design rules (the lessons of ``Butler.ingest``):

* **Per-item outcomes, never all-or-nothing.** A conflict or a missing dimension
  record in one item is reported for that item; every other item of the batch is
  still written, in the same transaction.
* **Idempotent by dataset UUID.** Registering an item that is already there with
  the same content is a success (:attr:`ItemStatus.already_present`), so replaying
  anything is always safe.
* **Transient versus permanent.** A database that is away raises
  :class:`TransientRegistryError` and nothing of the batch is committed; the caller
  retries the same batch. Problems with the data itself are item statuses, not
  exceptions.

Exception tree::

    RegistryError
    ├── TransientRegistryError     (connection lost, serialization failure, deadlock: retry)
    ├── SchemaVersionError         (database schema this code does not understand: stop)
    └── RegistryConfigurationError (bad URL, missing permissions: stop, fix settings)
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "DataIdValue",
    "DatasetRecord",
    "DatasetTypeSpec",
    "FileInfo",
    "ImportKind",
    "ImportRequest",
    "ImportResult",
    "ItemResult",
    "ItemStatus",
    "Provenance",
    "RegisterResult",
    "Registry",
    "RegistryConfigurationError",
    "RegistryError",
    "RegistryStats",
    "SchemaVersionError",
    "TransientRegistryError",
]

DataIdValue = int | str
"""A data ID value: integer ids (visit, detector, exposure, day_obs, tract, patch) or names."""


@dataclass(frozen=True, slots=True)
class DatasetTypeSpec:
    """A dataset type as a sidecar describes it.

    ``dimensions`` are the dataset type's *required* dimensions as the Butler lists
    them (e.g. ``("instrument", "visit")``); implied dimensions (band,
    physical_filter, day_obs, ...) may also appear in data IDs.
    """

    name: str
    dimensions: tuple[str, ...]
    storage_class: str


@dataclass(frozen=True, slots=True)
class FileInfo:
    """The file artifact of a dataset, as the facility sees it after URL mapping."""

    path: str
    """Absolute local path (or URI) of the file at this facility."""
    size: int | None = None
    adler32: str | None = None
    """Lower-case hex, 8 digits, as Rucio reports ``checksum-adler``."""
    md5: str | None = None
    formatter: str | None = None
    """Butler formatter class name, when known."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an ingested item came from; stored with the dataset for audit and reconciliation."""

    source: str
    """``kafka``, ``file``, ``rucio`` or ``dlq``."""
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    transfer_id: str | None = None
    """FTS transfer id (``transfer-id``)."""
    rse: str | None = None
    """Destination RSE (``dst-rse``)."""
    scope: str | None = None
    name: str | None = None
    """Rucio DID name of the file."""
    event_time: datetime | None = None
    """When Rucio's transfer finished (``transferred_at``), UTC."""


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """One dataset to register: what a ``data_product`` or ``raw_file`` event carries."""

    id: uuid.UUID
    dataset_type: DatasetTypeSpec
    run: str
    data_id: Mapping[str, DataIdValue]
    file: FileInfo | None = None
    provenance: Provenance | None = None
    dimension_records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
    """Dimension records shipped with the data ID (expanded sidecars of recent Butlers,
    ``dataId.records``), keyed by element name; inserted idempotently before the dataset."""


class ItemStatus(StrEnum):
    """What became of one item of a batch."""

    inserted = "inserted"
    """New dataset (or records) committed."""
    already_present = "already_present"
    """Same id with the same content was already there: success."""
    conflict = "conflict"
    """Same id with different content, or the same (type, data ID, run) under another id."""
    missing_dimensions = "missing_dimensions"
    """The data ID refers to dimension records the registry does not have (yet)."""
    invalid = "invalid"
    """The item can never be registered as given (e.g. data ID lacks a required dimension)."""

    @property
    def ok(self) -> bool:
        """True for the two successful statuses."""
        return self in (ItemStatus.inserted, ItemStatus.already_present)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The outcome of one item, with a reason an operator can act on when it failed."""

    dataset_id: uuid.UUID | None
    status: ItemStatus
    reason: str | None = None
    missing: tuple[str, ...] = ()
    """For ``missing_dimensions``: the missing records, e.g. ``("visit:HSC/328",)``."""


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """Outcomes of a :meth:`Registry.register` call, in the order of the batch."""

    items: tuple[ItemResult, ...]

    def count(self, status: ItemStatus) -> int:
        """How many items ended with ``status``."""
        return sum(1 for item in self.items if item.status is status)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Outcome of importing a Butler export file (``dim_file``) or a Butler zip (``zip_file``)."""

    status: ItemStatus
    """``inserted`` if anything new was written, ``already_present`` if all of it was there,
    ``conflict``/``invalid`` otherwise. A dimension export is all-or-nothing (nothing of it is
    written on a conflict); a zip is per item like :meth:`Registry.register`: its good datasets are
    written, ``datasets`` holds each item's status, and this field is the worst of them."""
    dimension_records_inserted: int = 0
    dimension_records_present: int = 0
    datasets: tuple[ItemResult, ...] = ()
    reason: str | None = None


class ImportKind(StrEnum):
    """The two kinds of file a registry imports whole."""

    dimensions = "dim_file"
    """A Butler export YAML (:meth:`Registry.import_dimensions`)."""
    zip = "zip_file"
    """A Butler zip (:meth:`Registry.import_zip`)."""


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """One file of a batched import (:meth:`Registry.import_files`)."""

    kind: ImportKind
    path: Path
    provenance: Provenance | None = None
    reading: object | None = field(default=None, compare=False, repr=False)
    """The file as :meth:`Registry.read_import` read it ahead (the registry's own form), or None."""


@dataclass(frozen=True, slots=True)
class RegistryStats:
    """Counts for ``ingestd registry stats`` and the readiness probe."""

    schema_version: str
    datasets: int
    runs: int
    dataset_types: int
    dimension_records: Mapping[str, int] = field(default_factory=dict)


class RegistryError(Exception):
    """Base of every error a registry raises."""


class TransientRegistryError(RegistryError, ConnectionError):
    """The database is unreachable or the transaction lost a race; nothing was committed. Retry."""


class SchemaVersionError(RegistryError, RuntimeError):
    """The database schema is not one this code understands; run ``ingestd registry upgrade``."""


class RegistryConfigurationError(RegistryError, ValueError):
    """The registry cannot be used as configured (bad URL, missing privilege, uninitialised)."""


class Registry(ABC):
    """A Butler-faithful dataset registry, written in batches.

    Notes
    -----
    Every write method runs in its own transaction and is idempotent. A method
    either commits all of its successful items or raises
    :class:`TransientRegistryError` having committed nothing.
    """

    @abstractmethod
    def register(self, batch: Sequence[DatasetRecord]) -> RegisterResult:
        """Register datasets (and their file records and provenance) in one transaction.

        Parameters
        ----------
        batch
            Datasets to register; duplicates of one id inside the batch are allowed.

        Returns
        -------
        result
            One :class:`ItemResult` per input item, in order.

        Raises
        ------
        TransientRegistryError
            The database is away or the transaction must be retried; nothing was written.
        """

    @abstractmethod
    def import_dimensions(self, export_file: Path, provenance: Provenance | None = None) -> ImportResult:
        """Import the dimension records of a Butler export YAML (a ``dim_file``), idempotently.

        Records already present with identical values count as present; a record
        with the same key and different values is a conflict and nothing of the
        file is written.
        """

    @abstractmethod
    def import_zip(self, zip_file: Path, provenance: Provenance | None = None) -> ImportResult:
        """Register every dataset of a Butler zip (``Butler.retrieve_artifacts_zip``), idempotently."""

    def read_import(self, request: ImportRequest) -> ImportRequest:
        """Read and check ``request``'s file ahead of :meth:`import_files`, without the database.

        Returns the request carrying what was read (:attr:`ImportRequest.reading`),
        or unchanged when the file could not be read now: :meth:`import_files` then
        reads it, and reports what is wrong with it. Safe to call on another thread.

        The daemon calls it on its decoding thread, so that the thread writing to the
        registry does no file I/O: under a busy interpreter lock each system call there
        costs a wait for the lock, and that thread is the pipeline's critical path.
        The default reads nothing.
        """
        return request

    def import_files(self, requests: Sequence[ImportRequest]) -> list[ImportResult]:
        """Import several files, in order, each with its own result.

        Each file keeps the semantics of :meth:`import_dimensions` or
        :meth:`import_zip` (a refused dimension export writes nothing of itself), and
        one refused file does not spoil the others; a later file sees what an earlier
        one wrote (dimension exports before the zips that need their records).
        Implementations may write the whole list in one transaction, which is why
        the daemon calls this rather than one method per file: most of the cost of
        a small import is its commit.

        The default calls the per-file methods one after the other.

        Raises
        ------
        TransientRegistryError
            The database is away; files before the failing one may have been
            committed (imports are idempotent, so the caller repeats the whole list).
        """
        results: list[ImportResult] = []
        for request in requests:
            if request.kind is ImportKind.dimensions:
                results.append(self.import_dimensions(request.path, request.provenance))
            else:
                results.append(self.import_zip(request.path, request.provenance))
        return results

    @abstractmethod
    def ping(self) -> None:
        """Check the registry is reachable and its schema is usable.

        Raises
        ------
        TransientRegistryError
            Unreachable.
        SchemaVersionError
            Schema missing or of another version.
        """

    @abstractmethod
    def stats(self) -> RegistryStats:
        """Counts of what the registry holds."""

    def iter_dataset_files(
        self, path_prefix: str, *, chunk_size: int = 10_000
    ) -> Iterator[tuple[uuid.UUID, str]]:
        """Stream ``(dataset id, file path)`` of every dataset whose file lies under ``path_prefix``.

        For reconciliation against Rucio (``ingestd reconcile``): read in chunks of
        ``chunk_size`` rows, so memory stays flat however large the registry. Zip
        members come as ``<zip path>#zip-path=<member>``. Implementations that cannot
        list their files raise :class:`NotImplementedError` (the default).

        Raises
        ------
        TransientRegistryError
            The database is away.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list its datasets by file path")

    def close(self) -> None:  # noqa: B027 - optional hook, most implementations need it
        """Release connections."""

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
