"""The registry contract implemented on a real daf_butler repository.

For sites that want ingest to go straight into their existing Butler repository
(PostgreSQL or SQLite registry, file datastore). Everything goes through the public
``Butler`` API: ``ingest(transfer="direct", skip_existing=True)`` for datasets,
``ingest_zip`` for zips, dimension records through ``syncDimensionData`` /
``insertDimensionData``; only the batch isolation logic is ours (:mod:`._batch`).

daf_butler is the optional extra ``[butler]``: it is imported when a repository is
opened, never at import time, and its absence is reported as a configuration error
that names the extra to install.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from butler_registry.interface import (
    DatasetRecord,
    ImportResult,
    ItemResult,
    ItemStatus,
    Provenance,
    RegisterResult,
    Registry,
    RegistryConfigurationError,
    RegistryError,
    RegistryStats,
    SchemaVersionError,
    TransientRegistryError,
)
from ingestd.log import get_logger

from ._batch import BatchRegistration, RepoCache
from ._convert import difference, record_label
from ._errors import is_item_failure, is_transient, item_status_for
from ._records import existing_records, missing_record_labels, record_key
from ._settings import DafButlerSettings, TransferMode

if TYPE_CHECKING:
    from lsst.daf.butler import Butler, DatasetRef, DimensionRecord

__all__ = ["DafButlerRegistry"]

_log = get_logger(__name__)

_STATS_ELEMENTS = (
    "instrument",
    "detector",
    "physical_filter",
    "day_obs",
    "exposure",
    "visit",
    "skymap",
    "tract",
)
"""Dimension elements counted by :meth:`DafButlerRegistry.stats` (the ones operators ask about)."""


class DafButlerRegistry(Registry):
    """A :class:`~butler_registry.interface.Registry` writing into a real Butler repository.

    Parameters
    ----------
    settings
        Which repository and how to hand files to it.
    butler
        An already open, writeable Butler (tests, embedding); opened from
        ``settings.repo`` on first use otherwise.

    Notes
    -----
    One instance holds one Butler (one connection pool); it is not thread-safe,
    like ``Butler`` itself. After a transient error the Butler is dropped and
    reopened on the next call, so a restarted database is picked up without a
    restart of the daemon.

    Differences from the SQL registry, all imposed by the real Butler:

    * :class:`~butler_registry.interface.Provenance` is not stored: a Butler
      repository has no place for it (the daemon's event documents keep it).
    * A dataset needs its file: records without one are ``invalid``.
    * A zip whose datasets are partly registered already is refused whole
      (``conflict``): ``Butler.ingest_zip`` cannot ingest part of a zip.
    * Files are stat-ed by the datastore (``record_validation_info``); a file
      that is not there makes its item ``invalid``.
    """

    def __init__(self, settings: DafButlerSettings, *, butler: Butler | None = None) -> None:
        self._settings = settings
        self._butler = butler
        self._cache = RepoCache()

    @classmethod
    def open(
        cls,
        repo: str,
        *,
        transfer: TransferMode | str = TransferMode.direct,
        record_validation_info: bool = True,
    ) -> DafButlerRegistry:
        """Open the repository at ``repo`` (path, URI or index label) and check it is usable.

        Raises
        ------
        RegistryConfigurationError
            daf_butler missing, no repository there, or not writeable.
        SchemaVersionError
            The repository's schema is not one this daf_butler understands.
        TransientRegistryError
            The registry database is unreachable.
        """
        settings = DafButlerSettings(
            repo=repo, transfer=TransferMode(transfer), record_validation_info=record_validation_info
        )
        registry = cls(settings)
        registry.ping()
        return registry

    @property
    def settings(self) -> DafButlerSettings:
        """The settings this registry was built from."""
        return self._settings

    # -- connection --------------------------------------------------------------------------

    def _connect(self) -> Butler:
        if self._butler is not None:
            return self._butler
        try:
            from lsst.daf.butler import Butler
        except ImportError as error:
            raise RegistryConfigurationError(
                "the real Butler is not installed: install the optional extra, "
                "pip install 'df-ingestd[butler]' (lsst-daf-butler)"
            ) from error
        from lsst.daf.butler.registry.interfaces import IncompatibleVersionError

        try:
            butler = Butler.from_config(self._settings.repo, writeable=True)
        except IncompatibleVersionError as error:
            raise SchemaVersionError(
                f"Butler repository {self._settings.repo} has a schema this daf_butler cannot use: {error}"
            ) from error
        except Exception as error:
            if is_transient(error):
                raise TransientRegistryError(
                    f"Butler repository {self._settings.repo}: registry database unreachable: {error}"
                ) from error
            if isinstance(error, FileNotFoundError | ValueError | RuntimeError | KeyError):
                raise RegistryConfigurationError(
                    f"cannot open Butler repository {self._settings.repo!r}: {error}"
                ) from error
            raise
        if not butler.isWriteable():
            butler.close()
            raise RegistryConfigurationError(f"Butler repository {self._settings.repo} is not writeable")
        self._butler = butler
        return butler

    def _discard(self) -> None:
        """Drop the Butler and everything learnt through it (after a transient failure)."""
        butler, self._butler = self._butler, None
        self._cache = RepoCache()
        if butler is not None:
            try:
                butler.close()
            except Exception as error:  # closing a broken pool must not hide the original error
                _log.warning("daf_butler_close_failed", error=type(error).__name__, detail=str(error))

    @contextmanager
    def _guard(self, operation: str) -> Iterator[Butler]:
        """Open the Butler and turn lost connections into :class:`TransientRegistryError`."""
        butler = self._connect()
        try:
            yield butler
        except RegistryError:
            raise
        except Exception as error:
            # Whatever escaped may have left the Butler mid-transaction: start afresh next time.
            self._discard()
            if is_transient(error):
                _log.warning("daf_butler_transient_error", operation=operation, error=type(error).__name__)
                raise TransientRegistryError(
                    f"{operation}: registry database unavailable: {error}"
                ) from error
            raise

    def close(self) -> None:
        """Release the Butler's connections."""
        self._discard()

    # -- the contract ------------------------------------------------------------------------

    def register(self, batch: Sequence[DatasetRecord]) -> RegisterResult:
        """Register datasets through ``Butler.ingest``, one status per item.

        See :mod:`butler_registry.daf._batch` for how one failing item is kept from
        failing the batch.
        """
        if not batch:
            return RegisterResult(items=())
        with self._guard("register") as butler:
            items = BatchRegistration(butler, self._settings, self._cache, batch).run()
        return RegisterResult(items=items)

    def import_dimensions(self, export_file: Path, provenance: Provenance | None = None) -> ImportResult:
        """Import the dimension records of a Butler export YAML, idempotently, with counts.

        ``Butler.import_`` inserts with ``skip_existing`` and cannot tell present from
        different; here every record is compared with the repository's, and a
        difference rolls the whole file back (``conflict``).
        """
        with self._guard("import_dimensions") as butler:
            try:
                parsed = _read_export(butler, export_file)
            except Exception as error:
                if is_transient(error):
                    raise
                return ImportResult(
                    status=ItemStatus.invalid,
                    reason=f"cannot read Butler export {export_file}: {type(error).__name__}: {error}",
                )
            return self._import_records(butler, parsed, export_file)

    def _import_records(
        self, butler: Butler, parsed: dict[str, list[DimensionRecord]], export_file: Path
    ) -> ImportResult:
        inserted = present = 0
        conflicts: list[str] = []
        try:
            with butler.transaction():
                for element in butler.dimensions.sorted(parsed):
                    records = parsed[element.name]
                    if not records:
                        continue
                    have = existing_records(butler, element.name, [record_key(r) for r in records])
                    new: dict[Any, DimensionRecord] = {}
                    for record in records:
                        key = record_key(record)
                        existing = have.get(key)
                        if existing is None:
                            new.setdefault(key, record)
                        elif existing.toDict() == record.toDict():
                            present += 1
                        else:
                            conflicts.append(record_label(element.name, key))
                    if new:
                        butler.registry.insertDimensionData(element, *new.values())
                        inserted += len(new)
                if conflicts:
                    raise _RollBackError
        except _RollBackError:
            return ImportResult(
                status=ItemStatus.conflict,
                reason=(
                    f"{len(conflicts)} record(s) of {export_file.name} differ from the repository's: "
                    f"{', '.join(conflicts[:10])}{' ...' if len(conflicts) > 10 else ''}"
                ),
            )
        except Exception as error:
            if is_transient(error) or not is_item_failure(error):
                raise
            # A record whose parent is absent (a visit of an unknown instrument) fails its foreign key.
            return ImportResult(
                status=item_status_for(error),
                reason=f"cannot import {export_file.name}: {type(error).__name__}: {error}"[:1000],
            )
        status = ItemStatus.inserted if inserted else ItemStatus.already_present
        _log.info("daf_butler_dimensions_imported", file=str(export_file), inserted=inserted, present=present)
        return ImportResult(
            status=status, dimension_records_inserted=inserted, dimension_records_present=present
        )

    def import_zip(self, zip_file: Path, provenance: Provenance | None = None) -> ImportResult:
        """Register every dataset of a Butler zip through ``Butler.ingest_zip``.

        The real Butler cannot ingest a zip of which only some datasets are already
        registered; that case is reported as ``conflict`` with the reason.
        """
        with self._guard("import_zip") as butler:
            try:
                refs = _zip_refs(butler, zip_file)
            except Exception as error:
                if is_transient(error):
                    raise
                return ImportResult(
                    status=ItemStatus.invalid,
                    reason=f"not a Butler zip ({zip_file.name}): {type(error).__name__}: {error}"[:1000],
                )
            found = {ref.id: ref for ref in butler.get_many_datasets([ref.id for ref in refs])}
            verdict = _zip_verdict(refs, found)
            if verdict is not None:
                return verdict
            return self._ingest_zip(butler, zip_file, refs)

    def _ingest_zip(self, butler: Butler, zip_file: Path, refs: list[DatasetRef]) -> ImportResult:
        try:
            butler.ingest_zip(zip_file, transfer=self._settings.transfer.value, skip_existing=True)
        except Exception as error:
            if is_transient(error) or not is_item_failure(error):
                raise
            missing = missing_record_labels(
                butler, [(dict(ref.dataId.required), ref.datasetType.dimensions.names) for ref in refs]
            )
            if any(missing):
                datasets = tuple(
                    ItemResult(
                        ref.id,
                        ItemStatus.missing_dimensions if labels else ItemStatus.invalid,
                        None if labels else "zip not ingested: other datasets lack dimension records",
                        labels,
                    )
                    for ref, labels in zip(refs, missing, strict=True)
                )
                every = sorted({label for labels in missing for label in labels})
                return ImportResult(
                    status=ItemStatus.missing_dimensions,
                    datasets=datasets,
                    reason=f"dimension records not in the repository: {', '.join(every[:10])}",
                )
            status = item_status_for(error)
            if status is ItemStatus.missing_dimensions:
                status = ItemStatus.invalid
            reason = f"{type(error).__name__}: {error}"[:1000]
            return ImportResult(
                status=status,
                datasets=tuple(ItemResult(ref.id, status, reason) for ref in refs),
                reason=reason,
            )
        return ImportResult(
            status=ItemStatus.inserted,
            datasets=tuple(ItemResult(ref.id, ItemStatus.inserted) for ref in refs),
        )

    def ping(self) -> None:
        """Open the repository if needed and run one small query against its registry."""
        with self._guard("ping") as butler:
            butler.query_dimension_records("instrument", limit=1, explain=False)

    def stats(self) -> RegistryStats:
        """Counts from the repository's registry (one query per dataset type and element)."""
        from lsst.daf.butler import CollectionType  # type: ignore[attr-defined]
        from lsst.daf.butler.version import __version__

        with self._guard("stats") as butler:
            runs = [
                info.name
                for info in butler.collections.query_info("*", collection_types={CollectionType.RUN})
            ]
            dataset_types = list(butler.registry.queryDatasetTypes())
            datasets = 0
            if runs:
                with butler.query() as query:
                    for dataset_type in dataset_types:
                        datasets += query.datasets(dataset_type, collections=runs, find_first=False).count(
                            exact=True
                        )
            elements: dict[str, int] = {}
            with butler.query() as query:
                for name in _STATS_ELEMENTS:
                    if name in butler.dimensions.elements.names:
                        elements[name] = query.dimension_records(name).count(exact=True)
            universe = butler.dimensions
            return RegistryStats(
                schema_version=f"daf_butler {__version__} universe {universe.namespace}/{universe.version}",
                datasets=datasets,
                runs=len(runs),
                dataset_types=len(dataset_types),
                dimension_records=elements,
            )


class _RollBackError(Exception):
    """Raised inside a transaction only to roll it back (a conflict was found)."""


def _zip_verdict(refs: Sequence[DatasetRef], found: dict[Any, DatasetRef]) -> ImportResult | None:
    """The result of a zip whose datasets are (partly) registered already; ``None`` if none is.

    ``Butler.ingest_zip`` takes a zip whole or not at all: all present is success,
    any difference or a partial overlap is refused with the reason.
    """
    if not any(ref.id in found for ref in refs):
        return None
    items: list[ItemResult] = []
    differing = 0
    for ref in refs:
        existing = found.get(ref.id)
        why = None if existing is None else difference(existing, ref)
        if why is not None:
            differing += 1
            items.append(ItemResult(ref.id, ItemStatus.conflict, why))
        elif existing is not None:
            items.append(ItemResult(ref.id, ItemStatus.already_present))
        else:
            items.append(ItemResult(ref.id, ItemStatus.conflict, "not registered, but others of its zip are"))
    if all(item.status is ItemStatus.already_present for item in items):
        return ImportResult(status=ItemStatus.already_present, datasets=tuple(items))
    if differing:
        reason = f"{differing} dataset(s) of the zip exist in the repository with other content"
    else:
        reason = (
            "some datasets of this zip are registered already and others are not; "
            "the real Butler cannot ingest a zip partially"
        )
    return ImportResult(status=ItemStatus.conflict, datasets=tuple(items), reason=reason)


def _read_export(butler: Butler, export_file: Path) -> dict[str, list[DimensionRecord]]:
    """The dimension records of a Butler export YAML, migrated to the repository's universe.

    daf_butler's own reader is used so old exports (e.g. universe 3, before
    ``day_obs`` and ``group`` were dimensions) are upgraded exactly as
    ``butler import`` would.
    """
    from lsst.daf.butler.transfers import YamlRepoImportBackend

    with open(export_file, encoding="utf-8") as stream, warnings.catch_warnings():
        # Old exports warn that day_obs records get no timespan without the instrument class.
        warnings.simplefilter("ignore", UserWarning)
        backend = YamlRepoImportBackend(stream, butler)
    parsed: dict[str, list[DimensionRecord]] = {}
    for element, records in backend.dimensions.items():
        parsed.setdefault(element.name, []).extend(records)
    ignored = len(backend.datasetTypes) + len(backend.runs) + sum(len(v) for v in backend.datasets.values())
    if ignored:
        _log.warning(
            "daf_butler_export_non_dimension_entries_ignored", file=str(export_file), entries=ignored
        )
    return parsed


def _zip_refs(butler: Butler, zip_file: Path) -> list[DatasetRef]:
    """The refs listed in a Butler zip's index, in the repository's universe."""
    from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ZipIndex
    from lsst.resources import ResourcePath

    index = ZipIndex.from_zip_file(ResourcePath(zip_file))
    return list(index.refs.to_refs(universe=butler.dimensions))
