"""The SQL registry: the registry contract on PostgreSQL (production) or SQLite (embedded)."""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from ingestd.log import get_logger

from ._access import grant_readonly
from ._butler_yaml import ExportContents, ExportFormatError, read_export
from ._cache import BoundedCache
from ._datasets import MAX_SINGLE_STATEMENT_ROWS, Row, insert_datasets
from ._dimensions import DataIdChecker, DimensionStore, RecordKey, record_references
from ._engine import WRITE_OPTIONS, Backend, backend_of, create_registry_engine, translate_errors
from ._export import ExportSummary, write_export
from ._migrate import check_schema, schema_state, upgrade
from ._overlay import TransactionCaches
from ._prepare import PreparedBatch, prepare_batch
from ._records import CanonicalRecord, RecordError, canonical_record
from ._schema import (
    ATTRIBUTES,
    COLLECTION,
    COLLECTION_CHAIN,
    DATASET,
    DATASET_FILE,
    DATASET_TAG,
    DATASET_TYPE,
    DIMENSION_RECORD,
    IMPORT_LOG,
)
from ._writer import BatchWriter, Learned, RegistryCaches, compare_raced
from ._zip import ZipContents, ZipFormatError, read_zip
from .interface import (
    DatasetRecord,
    ImportKind,
    ImportRequest,
    ImportResult,
    ItemResult,
    ItemStatus,
    Provenance,
    RegisterResult,
    Registry,
    RegistryStats,
    SchemaVersionError,
)
from .universe import Universe, UniverseError, default_universe

__all__ = ["SqlRegistry", "open_registry"]

_log = get_logger(__name__)

_STATUS_SEVERITY = {
    ItemStatus.invalid: 4,
    ItemStatus.conflict: 3,
    ItemStatus.missing_dimensions: 2,
    ItemStatus.inserted: 1,
    ItemStatus.already_present: 0,
}


class _RollbackError(Exception):
    """Leave a transaction without committing, carrying the result to report."""

    def __init__(self, result: ImportResult) -> None:
        super().__init__(result.reason)
        self.result = result


class _GroupRacedError(Exception):
    """A record of a grouped import was stored differently by a concurrent writer (rare)."""

    def __init__(self, record: str) -> None:
        super().__init__(record)
        self.record = record


def _records_refused(
    conflicts: dict[RecordKey, str], missing: dict[RecordKey, list[str]]
) -> ImportResult | None:
    """The result of a file whose records cannot all be written (None when they can)."""
    if conflicts:
        shown = list(conflicts.values())[:5]
        more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        return ImportResult(ItemStatus.conflict, reason="; ".join(shown) + more)
    if missing:
        absent = sorted({name for names in missing.values() for name in names})
        return ImportResult(
            ItemStatus.missing_dimensions,
            reason=f"{len(missing)} record(s) refer to records the registry does not have: "
            + ", ".join(absent[:10]),
        )
    return None


def _records_only(reading: _Reading) -> bool:
    """An export that holds dimension records and nothing else (no datasets, collections or tags)."""
    export = reading.export
    return (
        export is not None
        and reading.prepared is None
        and not (export.datasets or export.runs or export.tagged or export.chains or export.associations)
    )


@dataclass(frozen=True, slots=True)
class _Reading:
    """A file of an import, parsed and checked without the database."""

    request: ImportRequest
    records: list[CanonicalRecord]
    """The export's records, or the zip's (which all of its datasets share)."""
    prepared: PreparedBatch | None
    """The file's datasets (``None`` for an export without datasets)."""
    export: ExportContents | None = None
    zipped: ZipContents | None = None


@dataclass(frozen=True, slots=True)
class _ImportOutcome:
    records_inserted: int
    records_present: int
    datasets: tuple[ItemResult, ...]


class SqlRegistry(Registry):
    """A Butler-faithful registry on SQLAlchemy Core.

    Use :func:`open_registry` to get one; the constructor assumes the schema was checked.

    Parameters
    ----------
    engine
        Engine of the registry database.
    universe
        Dimension universe (daf_butler's default).
    record_cache_size
        Committed dimension records kept in memory between batches.

    Notes
    -----
    Each write method is one transaction. Caches hold only committed facts that never
    change (dataset type definitions, run ids, dimension records), each bounded, so
    memory does not grow with the registry.
    """

    def __init__(
        self, engine: sa.Engine, *, universe: Universe | None = None, record_cache_size: int = 20_000
    ) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._writer = engine.execution_options(**WRITE_OPTIONS)
        self._backend = backend_of(engine)
        self.universe = universe or default_universe()
        self._checker = DataIdChecker(self.universe)
        self._caches = RegistryCaches(
            dataset_types=BoundedCache(4096),
            runs=BoundedCache(16_384),
            records=DimensionStore(self.universe, record_cache_size),
        )

    # -- writes -----------------------------------------------------------------------------

    def register(self, batch: Sequence[DatasetRecord]) -> RegisterResult:
        """Register a batch in one transaction; see :meth:`Registry.register`."""
        if not batch:
            return RegisterResult(())
        prepared = prepare_batch(self.universe, batch)
        results = self._register_from_caches(prepared)
        if results is None:
            writer = BatchWriter(self.universe, self._caches, None, self._checker)
            with translate_errors("registering a batch"), self._writer.begin() as connection:
                writer.attach(connection)
                results = writer.write(prepared)
            writer.learned.apply(self._caches)
        return RegisterResult(tuple(results[index] for index in range(len(batch))))

    def _register_from_caches(self, prepared: PreparedBatch) -> dict[int, ItemResult] | None:
        """The steady-state path on PostgreSQL: one statement, no explicit transaction.

        When the caches settle every check, the batch's only write is the statement that
        inserts datasets and file records; a single statement is atomic on its own, so
        it runs in autocommit mode and the batch costs one round trip (plus one read
        when some items were already there). ``None`` when the full path is needed.
        """
        if self._backend is not Backend.postgresql or len(prepared.items) > MAX_SINGLE_STATEMENT_ROWS:
            return None
        writer = BatchWriter(self.universe, self._caches, None, self._checker)
        rows = writer.plan_from_caches(prepared)
        if rows is None:
            return None
        with translate_errors("registering a batch"), self._autocommit.connect() as connection:
            writer.attach(connection)
            return writer.finish(prepared, rows)

    def import_dimensions(self, export_file: Path, provenance: Provenance | None = None) -> ImportResult:
        """Import a Butler export YAML: its dimension records, and its collections and datasets if any.

        All of the file's records are written or none: a record that contradicts the
        registry (or another copy in the file) makes the result ``conflict``, a record
        whose references are absent ``missing_dimensions``, an unreadable file
        ``invalid``; in each case nothing is written. Datasets of the file are then
        registered as a batch would be (per-item results in ``datasets``).
        """
        return self.import_files([ImportRequest(ImportKind.dimensions, Path(export_file), provenance)])[0]

    def import_zip(self, zip_file: Path, provenance: Provenance | None = None) -> ImportResult:
        """Register the datasets of a Butler zip, with file records pointing inside it.

        Dimension records the index carries are imported first (insert or compare).
        Datasets get per-item results as in :meth:`register`: good ones are written
        even when another one conflicts; the overall status is the most severe one
        (invalid > conflict > missing_dimensions > inserted > already_present).
        """
        return self.import_files([ImportRequest(ImportKind.zip, Path(zip_file), provenance)])[0]

    def import_files(self, requests: Sequence[ImportRequest]) -> list[ImportResult]:
        """Import several files in one transaction, each in a savepoint; see :meth:`Registry.import_files`.

        Every file is read and checked without the database first (an unreadable one is
        ``invalid`` and costs no statement). Then one transaction looks up every
        dimension record the files name in one statement, writes each dimension export
        in a savepoint (a refused one rolls back its own savepoint only; a zip's items
        fail one by one and need none), logs the imports in one multi-row insert and
        commits once: a small import costs a few statements instead of a transaction of
        its own. A transient failure rolls the whole list back (nothing is cached).
        """
        readings: list[ImportResult | _Reading] = [
            request.reading if isinstance(request.reading, _Reading) else self._read_import(request)
            for request in requests
        ]
        results: list[ImportResult | None] = [
            reading if isinstance(reading, ImportResult) else None for reading in readings
        ]
        to_write = [(index, r) for index, r in enumerate(readings) if not isinstance(r, ImportResult)]
        if to_write:
            try:
                self._write_imports(requests, to_write, results, group_records=True)
            except _GroupRacedError as raced:
                # Rolled back whole (nothing cached): redo it file by file, each in its savepoint.
                _log.info("registry_import_group_raced", files=len(to_write), record=raced.record)
                for index, _reading in to_write:
                    results[index] = None
                self._write_imports(requests, to_write, results, group_records=False)
        final = [result for result in results if result is not None]
        assert len(final) == len(requests)
        return final

    def read_import(self, request: ImportRequest) -> ImportRequest:
        """Parse and check the file now (see :meth:`Registry.read_import`); only a good reading is kept.

        A file that cannot be read or is refused is read again by :meth:`import_files`,
        which reports why (a file not visible yet must be noticed there, not here).
        """
        try:
            reading = self._read_import(request)
        except Exception:  # whatever it is, import_files meets it again and reports it
            return request
        if isinstance(reading, ImportResult):
            return request
        return dataclasses.replace(request, reading=reading)

    def _read_import(self, request: ImportRequest) -> ImportResult | _Reading:
        """Parse one file and settle what needs no database (``invalid`` files end here)."""
        path = Path(request.path)
        if request.kind is ImportKind.dimensions:
            try:
                contents = read_export(path, self.universe, request.provenance)
                records = self._canonical_records(contents.records)
            except (ExportFormatError, RecordError, UniverseError, OSError) as error:
                return ImportResult(ItemStatus.invalid, reason=f"{path.name}: {error}")
            for ignored in contents.ignored:
                _log.warning("registry_import_entry_ignored", file=str(path), entry=ignored)
            prepared = prepare_batch(self.universe, contents.datasets) if contents.datasets else None
            return _Reading(request, records, prepared, export=contents)
        try:
            zipped = read_zip(path, self.universe, request.provenance)
            shared = self._canonical_records(zipped.records)
        except (ZipFormatError, RecordError, UniverseError, OSError, KeyError, ValueError) as error:
            return ImportResult(ItemStatus.invalid, reason=f"{path.name}: {error}")
        for warning in zipped.warnings:
            _log.warning("registry_zip_records_skipped", file=str(path), reason=warning)
        return _Reading(request, shared, prepare_batch(self.universe, zipped.datasets), zipped=zipped)

    def _prefetch_keys(self, readings: Iterable[_Reading]) -> set[RecordKey]:
        """Every dimension record the files carry, refer to, or whose data IDs need."""
        keys: set[RecordKey] = set()
        for reading in readings:
            for record in reading.records:
                keys.add((record.element, record.key))
                keys.update(record_references(self.universe, record))
            if reading.prepared is not None:
                for item in reading.prepared.items:
                    keys.update(
                        self._checker.likely_keys(
                            item.dataset_type.dimensions, item.data_id, item.given_implied
                        )
                    )
        return keys

    def _write_imports(
        self,
        requests: Sequence[ImportRequest],
        to_write: Sequence[tuple[int, _Reading]],
        results: list[ImportResult | None],
        *,
        group_records: bool,
    ) -> None:
        """Write the readable files in one transaction, filling ``results``.

        Dimension exports go first, in order, all of a file's records or none. With
        ``group_records``, consecutive exports holding only dimension records (an
        exposure's export, the usual case) are settled together: each is checked
        against the registry and the files before it without writing, and the records
        of those that pass go in with one statement (see :meth:`_write_record_group`).
        Any other export is written in a savepoint of its own. Zips follow: each one's
        records, dataset types and runs are settled in turn, then the datasets of every
        zip are inserted together, one statement for the lot, and their file records
        with one more.

        Raises
        ------
        _GroupRacedError
            A concurrent writer stored a grouped record differently a moment ago; the
            transaction is rolled back and the caller writes file by file instead.
        """
        seconds: dict[int, float] = {}
        log_rows: list[dict[str, object]] = []
        transaction = TransactionCaches(self._caches)
        zips = [(index, reading) for index, reading in to_write if reading.export is None]
        with translate_errors("importing Butler files"), self._writer.begin() as connection:
            transaction.prefetch(connection, self._prefetch_keys(reading for _index, reading in to_write))
            exports = [(index, reading) for index, reading in to_write if reading.export is not None]
            for grouped, run in itertools.groupby(
                exports, key=lambda item: group_records and _records_only(item[1])
            ):
                if grouped:
                    self._write_record_group(
                        connection,
                        transaction,
                        list(run),
                        requests=requests,
                        results=results,
                        log_rows=log_rows,
                        seconds=seconds,
                    )
                    continue
                for index, reading in run:
                    started = time.perf_counter()
                    writer = BatchWriter(self.universe, transaction.caches, connection, self._checker)
                    try:
                        with connection.begin_nested():
                            results[index] = self._write_reading(writer, reading)
                    except _RollbackError as rollback:
                        results[index] = rollback.result
                        continue
                    transaction.learn(writer.learned)
                    if writer.learned.records_inserted or writer.learned.datasets_inserted:
                        log_rows.append(self._import_log_row(requests[index], writer.learned))
                    seconds[index] = time.perf_counter() - started
            if zips:
                for index, learned in self._write_zips(connection, transaction, zips, results):
                    if learned.records_inserted or learned.datasets_inserted:
                        log_rows.append(self._import_log_row(requests[index], learned))
            if log_rows:
                connection.execute(sa.insert(IMPORT_LOG), log_rows)
        transaction.commit()
        for index, reading in to_write:
            result = results[index]
            if reading.export is not None and result is not None and index in seconds:
                _log.info(
                    "registry_dimensions_imported",
                    file=str(reading.request.path),
                    status=str(result.status),
                    records_inserted=result.dimension_records_inserted,
                    records_present=result.dimension_records_present,
                    datasets=len(result.datasets),
                    seconds=round(seconds[index], 3),
                )

    def _write_record_group(
        self,
        connection: sa.Connection,
        transaction: TransactionCaches,
        group: Sequence[tuple[int, _Reading]],
        *,
        requests: Sequence[ImportRequest],
        results: list[ImportResult | None],
        log_rows: list[dict[str, object]],
        seconds: dict[int, float],
    ) -> None:
        """Write exports that hold only dimension records with one insert, without savepoints.

        Each file is checked in turn against the registry and the files before it
        (:meth:`BatchWriter.plan_records`, no statement: the records were prefetched);
        a file with a conflicting record or a missing reference is refused whole
        before anything of it is written, exactly as its savepoint would have rolled
        it back. The records of the others go in together. A savepoint per file cost
        two round trips each, and under a busy interpreter lock every round trip costs
        a scheduling wait as well.
        """
        started = time.perf_counter()
        accepted: list[tuple[int, BatchWriter, list[CanonicalRecord]]] = []
        for index, reading in group:
            writer = BatchWriter(self.universe, transaction.caches, connection, self._checker)
            plan = writer.plan_records(reading.records)
            refused = _records_refused(plan.conflicts, plan.missing)
            if refused is not None:
                results[index] = refused
                continue
            writable = plan.writable
            writer.learn_written(writable)
            writer.learned.records_present += plan.present
            transaction.learn(writer.learned)  # the next files see these records
            accepted.append((index, writer, writable))
        offered = [record for _index, _writer, writable in accepted for record in writable]
        store = transaction.caches.records
        inserted = store.insert(connection, offered)
        conflicts: dict[RecordKey, str] = {}
        compare_raced(store, connection, offered, inserted, conflicts)
        if conflicts:
            raise _GroupRacedError(next(iter(conflicts.values())))
        for index, writer, writable in accepted:
            learned = writer.learned
            learned.records_inserted = sum(1 for r in writable if (r.element, r.key) in inserted)
            learned.records_present += len(writable) - learned.records_inserted
            results[index] = self._import_result(
                _ImportOutcome(learned.records_inserted, learned.records_present, ())
            )
            if learned.records_inserted:
                log_rows.append(self._import_log_row(requests[index], learned))
        if accepted:  # (refused files are not logged as imported, as with savepoints)
            share = (time.perf_counter() - started) / len(accepted)
            seconds.update((index, share) for index, _writer, _writable in accepted)

    def _write_zips(
        self,
        connection: sa.Connection,
        transaction: TransactionCaches,
        zips: Sequence[tuple[int, _Reading]],
        results: list[ImportResult | None],
    ) -> list[tuple[int, Learned]]:
        """Write several zips' datasets with one insert; a zip never rolls back, its items fail one by one.

        A dataset named by two zips of the list is offered once (by the first); the
        second compares with it, as it would have in a transaction of its own.
        """
        planned: list[tuple[int, _Reading, BatchWriter, list[Row], set[uuid.UUID]]] = []
        offered: dict[uuid.UUID, Row] = {}
        for index, reading in zips:
            assert reading.prepared is not None
            writer = BatchWriter(self.universe, transaction.caches, connection, self._checker)
            rows = writer.plan(reading.prepared, reading.records)
            transaction.learn(writer.learned)  # later zips see the records this one wrote
            own = {row.item.dataset_id for row in rows if row.item.dataset_id not in offered}
            offered.update((row.item.dataset_id, row) for row in rows if row.item.dataset_id in own)
            planned.append((index, reading, writer, rows, own))
        inserted = insert_datasets(connection, list(offered.values()))
        components: list[dict[str, object]] = []
        learned_by_zip: list[tuple[int, Learned]] = []
        for index, reading, writer, rows, own in planned:
            assert reading.prepared is not None
            assert reading.zipped is not None
            mine = inserted & own
            settled = writer.settle(reading.prepared, rows, mine)
            components.extend(
                {
                    "dataset_id": c.dataset_id,
                    "component": c.component,
                    "path": c.file.path,
                    "file_size": c.file.size,
                    "formatter": c.file.formatter,
                }
                for c in reading.zipped.components
                if c.dataset_id in mine
            )
            items = tuple(settled[item] for item in range(len(reading.zipped.datasets)))
            learned = writer.learned
            results[index] = self._import_result(
                _ImportOutcome(learned.records_inserted, learned.records_present, items)
            )
            learned_by_zip.append((index, learned))
        if components:
            connection.execute(sa.insert(DATASET_FILE), components)
        return learned_by_zip

    def _write_reading(self, writer: BatchWriter, reading: _Reading) -> ImportResult:
        """Write one dimension export on the writer's connection (inside its savepoint)."""
        assert reading.export is not None
        return self._import_result(
            self._import_contents(writer, reading.export, reading.records, reading.prepared)
        )

    def _canonical_records(
        self, entries: Iterable[tuple[str, list[dict[str, object]]]]
    ) -> list[CanonicalRecord]:
        records: list[CanonicalRecord] = []
        for element, rows in entries:
            if element in self.universe and not self.universe[element].has_records:
                continue  # band: a view of physical_filter records
            records.extend(canonical_record(self.universe, element, row) for row in rows)
        return records

    def _import_contents(
        self,
        writer: BatchWriter,
        contents: ExportContents,
        records: Sequence[CanonicalRecord],
        prepared: PreparedBatch | None,
    ) -> _ImportOutcome:
        conflicts, missing, inserted, present = writer.write_records(records)
        refused = _records_refused(conflicts, missing)
        if refused is not None:
            raise _RollbackError(refused)
        self._import_collections(writer, contents)
        datasets: tuple[ItemResult, ...] = ()
        if contents.datasets:
            results = writer.write(prepared or prepare_batch(self.universe, contents.datasets))
            datasets = tuple(results[index] for index in range(len(contents.datasets)))
        if contents.associations:
            self._import_associations(writer.connection, contents)
        return _ImportOutcome(inserted, present, datasets)

    def _import_collections(self, writer: BatchWriter, contents: ExportContents) -> None:
        if contents.runs:
            docs = {name: doc for name, doc in contents.runs.items() if doc is not None}
            _runs, others = writer.ensure_runs(contents.runs, docs)
            if others:
                raise _RollbackError(
                    ImportResult(
                        ItemStatus.conflict,
                        reason="; ".join(
                            f"collection {n} is a {k} collection, not a RUN" for n, k in others.items()
                        ),
                    )
                )
        connection = writer.connection
        for name, doc in contents.tagged.items():
            self._ensure_collection(connection, name, "TAGGED", doc)
        for name, children in contents.chains.items():
            parent = self._ensure_collection(connection, name, "CHAINED", contents.docs.get(name))
            child_ids = [self._collection_id(connection, child) for child in children]
            if None in child_ids:
                absent = [c for c, i in zip(children, child_ids, strict=True) if i is None]
                raise _RollbackError(
                    ImportResult(ItemStatus.missing_dimensions, reason=f"chain {name} names unknown {absent}")
                )
            connection.execute(sa.delete(COLLECTION_CHAIN).where(COLLECTION_CHAIN.c.parent_id == parent))
            if child_ids:
                connection.execute(
                    sa.insert(COLLECTION_CHAIN),
                    [{"parent_id": parent, "position": i, "child_id": c} for i, c in enumerate(child_ids)],
                )

    @staticmethod
    def _collection_id(connection: sa.Connection, name: str) -> int | None:
        return connection.execute(sa.select(COLLECTION.c.id).where(COLLECTION.c.name == name)).scalar()

    def _ensure_collection(self, connection: sa.Connection, name: str, kind: str, doc: str | None) -> int:
        row = connection.execute(
            sa.select(COLLECTION.c.id, COLLECTION.c.type).where(COLLECTION.c.name == name)
        ).first()
        if row is None:
            return int(
                connection.execute(
                    sa.insert(COLLECTION).values(name=name, type=kind, doc=doc).returning(COLLECTION.c.id)
                ).scalar_one()
            )
        if row.type != kind:
            raise _RollbackError(
                ImportResult(
                    ItemStatus.conflict, reason=f"collection {name} is a {row.type} collection, not {kind}"
                )
            )
        return int(row.id)

    def _import_associations(self, connection: sa.Connection, contents: ExportContents) -> None:
        for collection, ids in contents.associations.items():
            collection_id = self._collection_id(connection, collection)
            if collection_id is None:
                collection_id = self._ensure_collection(connection, collection, "TAGGED", None)
            present = {
                row[0] for row in connection.execute(sa.select(DATASET.c.id).where(DATASET.c.id.in_(ids)))
            }
            tagged = {
                row[0]
                for row in connection.execute(
                    sa.select(DATASET_TAG.c.dataset_id).where(DATASET_TAG.c.collection_id == collection_id)
                )
            }
            rows = [
                {"collection_id": collection_id, "dataset_id": i}
                for i in dict.fromkeys(ids)
                if i in present and i not in tagged
            ]
            if rows:
                connection.execute(sa.insert(DATASET_TAG), rows)

    @staticmethod
    def _import_log_row(request: ImportRequest, learned: Learned) -> dict[str, object]:
        """The ``import_log`` row of a file that wrote something."""
        provenance = request.provenance
        return {
            "kind": request.kind.value,
            "path": str(request.path),
            "records_inserted": learned.records_inserted,
            "datasets_inserted": learned.datasets_inserted,
            "source": provenance.source if provenance else None,
            "topic": provenance.topic if provenance else None,
            "partition": provenance.partition if provenance else None,
            "offset": provenance.offset if provenance else None,
            "transfer_id": provenance.transfer_id if provenance else None,
            "rse": provenance.rse if provenance else None,
            "event_time": provenance.event_time if provenance else None,
        }

    @staticmethod
    def _import_result(outcome: _ImportOutcome) -> ImportResult:
        statuses = [item.status for item in outcome.datasets]
        failures = [s for s in statuses if not s.ok]
        if failures:
            status = max(failures, key=_STATUS_SEVERITY.__getitem__)
            reasons = [item.reason for item in outcome.datasets if item.status is status and item.reason]
            first = reasons[0] if reasons else ""
            reason = f"{len(failures)} of {len(statuses)} datasets failed; first {status}: {first}"
        else:
            anything_new = outcome.records_inserted > 0 or ItemStatus.inserted in statuses
            status = ItemStatus.inserted if anything_new else ItemStatus.already_present
            reason = None
        return ImportResult(
            status=status,
            dimension_records_inserted=outcome.records_inserted,
            dimension_records_present=outcome.records_present,
            datasets=outcome.datasets,
            reason=reason,
        )

    # -- reads ------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check the database answers and holds the schema this code understands."""
        check_schema(self.engine)
        with translate_errors("reading registry attributes"), self.engine.connect() as connection:
            rows = connection.execute(sa.select(ATTRIBUTES.c.name, ATTRIBUTES.c.value))
            attributes: dict[str, str] = {name: value for name, value in rows}  # noqa: C416
        namespace = attributes.get("universe_namespace")
        if namespace != self.universe.namespace:
            raise SchemaVersionError(
                f"registry holds universe namespace {namespace!r}; "
                f"this ingestd uses {self.universe.namespace!r}"
            )

    def stats(self) -> RegistryStats:
        """Counts of datasets, runs, dataset types and dimension records by element."""
        with translate_errors("counting registry contents"), self.engine.connect() as connection:
            version = connection.execute(
                sa.select(ATTRIBUTES.c.value).where(ATTRIBUTES.c.name == "schema_version")
            ).scalar()
            datasets = connection.execute(sa.select(sa.func.count()).select_from(DATASET)).scalar_one()
            runs = connection.execute(
                sa.select(sa.func.count()).select_from(COLLECTION).where(COLLECTION.c.type == "RUN")
            ).scalar_one()
            types = connection.execute(sa.select(sa.func.count()).select_from(DATASET_TYPE)).scalar_one()
            counts = sa.select(DIMENSION_RECORD.c.element, sa.func.count()).group_by(
                DIMENSION_RECORD.c.element
            )
            records: dict[str, int] = {element: int(count) for element, count in connection.execute(counts)}
        return RegistryStats(
            schema_version=str(version),
            datasets=int(datasets),
            runs=int(runs),
            dataset_types=int(types),
            dimension_records={element: records[element] for element in self.universe.sorted(records)},
        )

    def iter_dataset_files(
        self, path_prefix: str, *, chunk_size: int = 10_000
    ) -> Iterator[tuple[uuid.UUID, str]]:
        """Stream ``(dataset id, path)`` of the files under ``path_prefix``; see the contract.

        Keyset pagination on the file table's primary key: each chunk is one short
        query, so no transaction stays open while the caller works on the rows.
        """
        escaped = path_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        after: tuple[uuid.UUID, str] | None = None
        last: uuid.UUID | None = None
        while True:
            query = (
                sa.select(DATASET_FILE.c.dataset_id, DATASET_FILE.c.component, DATASET_FILE.c.path)
                .where(DATASET_FILE.c.path.like(escaped + "%", escape="\\"))
                .order_by(DATASET_FILE.c.dataset_id, DATASET_FILE.c.component)
                .limit(chunk_size)
            )
            if after is not None:
                query = query.where(sa.tuple_(DATASET_FILE.c.dataset_id, DATASET_FILE.c.component) > after)
            with translate_errors("listing dataset files"), self.engine.connect() as connection:
                rows = connection.execute(query).all()
            for dataset_id, _component, path in rows:
                if dataset_id != last:  # a dataset stored by component has several rows
                    last = dataset_id
                    yield dataset_id, path
            if len(rows) < chunk_size:
                return
            after = (rows[-1][0], rows[-1][1])

    def export(self, stream: IO[str], runs: Sequence[str] | None = None) -> ExportSummary:
        """Write a Butler export YAML (all of the registry, or the datasets of ``runs``).

        Raises
        ------
        KeyError
            A name in ``runs`` is not a RUN collection.
        """
        with translate_errors("exporting the registry"), self.engine.connect() as connection:
            return write_export(connection, self.universe, stream, runs)

    def grant_readonly(self, role: str, *, login: bool = False, password: str | None = None) -> bool:
        """Create or update a PostgreSQL role that can read the registry and not write it."""
        return grant_readonly(self.engine, role, login=login, password=password)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> SqlRegistry:
        return self


def open_registry(
    url: str, *, create: bool = False, record_cache_size: int = 20_000, connect_timeout_s: float = 10.0
) -> SqlRegistry:
    """Open the SQL registry at ``url`` (``sqlite:///path``, ``postgresql://...``).

    Parameters
    ----------
    url
        Database URL; ``postgresql://`` means psycopg 3.
    create
        Create the schema when the database holds none (``ingestd registry init``).
    record_cache_size
        Committed dimension records kept in memory.
    connect_timeout_s
        Connection attempt limit.

    Raises
    ------
    RegistryConfigurationError
        Unsupported URL.
    SchemaVersionError
        No schema (and ``create`` is false), or a schema of another version.
    TransientRegistryError
        The database cannot be reached now.
    """
    engine = create_registry_engine(url, connect_timeout_s=connect_timeout_s)
    try:
        if create and schema_state(engine).current is None:
            upgrade(engine)
            _log.info("registry_schema_created", url=engine.url.render_as_string(hide_password=True))
        registry = SqlRegistry(engine, record_cache_size=record_cache_size)
        registry.ping()
    except BaseException:
        engine.dispose()
        raise
    return registry
