"""One registration transaction: from a prepared batch to one result per item.

The steps, each set-based over the whole batch:

1. dimension records shipped with items (or with a zip): insert or compare;
2. dataset types and runs: found in the cache, or registered on the fly;
3. data IDs: required records present, stated implied values consistent;
4. datasets, file records and provenance: inserted where absent;
5. items not inserted: compared with what is there (``already_present`` or ``conflict``).

Nothing here commits; the caller owns the transaction and updates its caches only
after the commit (:class:`Learned`), so a rolled-back batch leaves no trace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ._cache import BoundedCache
from ._datasets import ExistingDataset, Row, find_existing, insert_datasets
from ._dimensions import (
    DataIdCheck,
    DataIdChecker,
    DimensionStore,
    RecordKey,
    insert_ignore,
    record_differences,
    record_references,
)
from ._prepare import DatasetTypeKey, PreparedBatch, PreparedItem
from ._records import CanonicalRecord, describe_key
from ._schema import COLLECTION, DATASET_TYPE
from .interface import FileInfo, ItemResult, ItemStatus, TransientRegistryError
from .universe import Universe

__all__ = ["BatchWriter", "Learned", "RecordPlan", "RegistryCaches", "compare_raced"]

_MAX_LOOKUP_ROUNDS = 6


def compare_raced(
    store: DimensionStore,
    connection: sa.Connection,
    offered: Sequence[CanonicalRecord],
    inserted: set[RecordKey],
    conflicts: dict[RecordKey, str],
) -> int:
    """Compare the records of ``offered`` not ``inserted`` with the copy a concurrent writer put there.

    A differing one is added to ``conflicts``; returns how many were identical.

    Raises
    ------
    TransientRegistryError
        A record was neither inserted nor found (deleted meanwhile): the caller retries.
    """
    raced = [r for r in offered if (r.element, r.key) not in inserted]
    if not raced:
        return 0
    stored_now = store.lookup(connection, [(r.element, r.key) for r in raced], use_cache=False)
    identical = 0
    for record in raced:
        key = (record.element, record.key)
        values = stored_now.get(key)
        if values is None:
            raise TransientRegistryError(f"{record.describe()} was neither inserted nor found; retry")
        differences = record_differences(values, record.values)
        if differences:
            conflicts[key] = (
                f"{record.describe()} differs from the registry's record in {', '.join(differences)}"
            )
        else:
            identical += 1
    return identical


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """How a set of records stands before anything is written (:meth:`BatchWriter.plan_records`)."""

    fresh: list[CanonicalRecord]
    """Records the registry does not have (some may conflict or miss references)."""
    conflicts: dict[RecordKey, str]
    """Records contradicting the registry or another copy in the set, with the reason."""
    missing: dict[RecordKey, list[str]]
    """Records referring to records the registry does not have, with those."""
    present: int
    """Records identical to the registry's."""

    @property
    def writable(self) -> list[CanonicalRecord]:
        """The fresh records that neither conflict nor miss a reference."""
        return [
            r
            for r in self.fresh
            if (r.element, r.key) not in self.conflicts and (r.element, r.key) not in self.missing
        ]


@dataclass(slots=True)
class RegistryCaches:
    """What a registry remembers between batches; all bounded."""

    dataset_types: BoundedCache[str, tuple[int, DatasetTypeKey]]
    runs: BoundedCache[str, int]
    records: DimensionStore


@dataclass(slots=True)
class Learned:
    """Facts a transaction established, to cache once it has committed."""

    dataset_types: dict[str, tuple[int, DatasetTypeKey]] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    records: dict[RecordKey, dict[str, Any]] = field(default_factory=dict)
    records_inserted: int = 0
    records_present: int = 0
    datasets_inserted: int = 0

    def apply(self, caches: RegistryCaches) -> None:
        """Put what was learned into the caches (call after commit)."""
        caches.dataset_types.update(self.dataset_types.items())
        caches.runs.update(self.runs.items())
        caches.records.remember(self.records.items())


def _describe_file(file: FileInfo | None) -> str:
    if file is None:
        return "no file"
    parts = [file.path]
    if file.size is not None:
        parts.append(f"size {file.size}")
    if file.adler32:
        parts.append(f"adler32 {file.adler32}")
    if file.md5:
        parts.append(f"md5 {file.md5}")
    return ", ".join(parts)


def _type_conflict(stored: DatasetTypeKey, new: DatasetTypeKey) -> str:
    return (
        f"dataset type {stored.name} is registered with dimensions {list(stored.dimensions)} and storage "
        f"class {stored.storage_class}; the item says dimensions {list(new.dimensions)} and storage class "
        f"{new.storage_class}"
    )


def _file_differences(stored: FileInfo | None, new: FileInfo | None) -> list[str]:
    """How a new item's file contradicts the stored one (fields unknown on either side agree)."""
    if new is None:
        return []
    if stored is None:
        return ["file (the registered dataset has none)"]
    differences = []
    if stored.path != new.path:
        differences.append("path")
    for name in ("size", "adler32", "md5", "formatter"):
        old_value, new_value = getattr(stored, name), getattr(new, name)
        if old_value is not None and new_value is not None and old_value != new_value:
            differences.append(name)
    return differences


class BatchWriter:
    """Writes one prepared batch on an open transaction.

    Parameters
    ----------
    universe
        The dimension universe.
    caches
        The registry's caches (read here, written by the caller after commit).
    connection
        A connection inside a transaction; ``None`` to plan from the caches first and
        :meth:`attach` one afterwards.
    checker
        The registry's data ID checker (it memoises plans and record keys).
    """

    def __init__(
        self,
        universe: Universe,
        caches: RegistryCaches,
        connection: sa.Connection | None,
        checker: DataIdChecker | None = None,
    ) -> None:
        self.universe = universe
        self.caches = caches
        self._open_connection = connection
        self.checker = checker or DataIdChecker(universe)
        self.learned = Learned()
        self._results: dict[int, ItemResult] = {}
        self._known: dict[RecordKey, dict[str, Any] | None] = {}
        self._type_ids: dict[str, int] = {}

    @property
    def connection(self) -> sa.Connection:
        """The transaction's connection."""
        return self._connection()

    def _connection(self) -> sa.Connection:
        if self._open_connection is None:
            raise RuntimeError("this BatchWriter has no connection yet")
        return self._open_connection

    def attach(self, connection: sa.Connection) -> None:
        """Give the writer its connection (after planning from the caches)."""
        self._open_connection = connection

    # -- the whole batch ------------------------------------------------------------------------

    def write(
        self, batch: PreparedBatch, shared_records: Sequence[CanonicalRecord] = ()
    ) -> dict[int, ItemResult]:
        """Write the batch; returns the result of every item by batch index.

        Parameters
        ----------
        batch
            The prepared batch.
        shared_records
            Dimension records that every item depends on (a zip's records).
        """
        rows = self.plan(batch, shared_records)
        return self.settle(batch, rows, insert_datasets(self.connection, rows))

    def plan(self, batch: PreparedBatch, shared_records: Sequence[CanonicalRecord] = ()) -> list[Row]:
        """Steps 1 to 4 of :meth:`write`: the rows left to insert (the other items have results).

        Shipped records are written here; the datasets are not, so that several
        writers' rows can be inserted by one statement and each writer then
        :meth:`settle` its own.
        """
        self._results = dict(batch.results)
        pending = list(batch.items)
        pending = self._write_records(pending, shared_records)
        pending = self._resolve_dataset_types(pending)
        rows = self._resolve_runs(pending)
        return self._check_data_ids(rows)

    def settle(
        self, batch: PreparedBatch, rows: list[Row], inserted: set[uuid.UUID]
    ) -> dict[int, ItemResult]:
        """Step 5 once ``rows`` were offered to the registry: ``inserted`` are this writer's new ids.

        The rows not inserted are compared with what the registry holds
        (already present, or a conflict); returns the result of every item.
        """
        self._settle_datasets(rows, inserted)
        for index, first in batch.repeats.items():
            self._results[index] = self._repeat_result(self._results[first], first)
        return self._results

    def _fail(self, item: PreparedItem, status: ItemStatus, reason: str, missing: Iterable[str] = ()) -> None:
        self._results[item.index] = ItemResult(item.dataset_id, status, reason, tuple(missing))

    @staticmethod
    def _repeat_result(first: ItemResult, first_index: int) -> ItemResult:
        if first.status.ok:
            return ItemResult(
                first.dataset_id, ItemStatus.already_present, f"repeats item {first_index} of the batch"
            )
        return first

    # -- 1. shipped dimension records -----------------------------------------------------------

    def write_records(
        self, records: Sequence[CanonicalRecord]
    ) -> tuple[dict[RecordKey, str], dict[RecordKey, list[str]], int, int]:
        """Insert-or-compare a set of records (dedicated to imports and shipped records).

        Returns
        -------
        conflicts
            Records that contradict the registry or each other, with the reason.
        missing
            Records whose referenced records (their foreign keys) are absent, with those.
        inserted, present
            Counts of records written and of records found identical.
        """
        plan = self.plan_records(records)
        writable = plan.writable
        inserted_keys = self.caches.records.insert(self.connection, writable)
        present = plan.present + compare_raced(
            self.caches.records, self.connection, writable, inserted_keys, plan.conflicts
        )
        self.learn_written(r for r in writable if (r.element, r.key) not in plan.conflicts)
        self.learned.records_inserted += len(inserted_keys)
        self.learned.records_present += present
        return plan.conflicts, plan.missing, len(inserted_keys), present

    def learn_written(self, records: Iterable[CanonicalRecord]) -> None:
        """Records this transaction wrote (or is about to write in one statement): facts for what follows."""
        for record in records:
            key = (record.element, record.key)
            self.learned.records[key] = record.values
            self._known[key] = record.values

    def plan_records(self, records: Sequence[CanonicalRecord]) -> RecordPlan:
        """Sort ``records`` into new, identical to the registry's, conflicting and missing references.

        Nothing is written; records found identical are learned (they are facts already).
        """
        unique: dict[RecordKey, CanonicalRecord] = {}
        conflicts: dict[RecordKey, str] = {}
        for record in records:
            key = (record.element, record.key)
            other = unique.get(key)
            if other is None:
                unique[key] = record
            elif other.values != record.values and key not in conflicts:
                fields = ", ".join(record_differences(other.values, record.values))
                conflicts[key] = f"two different copies of {record.describe()} (fields {fields})"
        existing = self.caches.records.lookup(self.connection, unique)
        fresh: list[CanonicalRecord] = []
        present = 0
        for key, record in unique.items():
            stored = existing.get(key)
            if stored is None:
                fresh.append(record)
                continue
            differences = record_differences(stored, record.values)
            if differences:
                conflicts.setdefault(
                    key, f"{record.describe()} differs from the registry's record in {', '.join(differences)}"
                )
            else:
                present += 1
                self.learned.records[key] = stored
                self._known[key] = stored
        return RecordPlan(fresh, conflicts, self._missing_references(fresh, unique), present)

    def _missing_references(
        self, fresh: Sequence[CanonicalRecord], batch_records: dict[RecordKey, CanonicalRecord]
    ) -> dict[RecordKey, list[str]]:
        references = {(r.element, r.key): record_references(self.universe, r) for r in fresh}
        outside = {ref for refs in references.values() for ref in refs if ref not in batch_records}
        found = self.caches.records.lookup(self.connection, outside)
        missing: dict[RecordKey, list[str]] = {}
        for key, refs in references.items():
            absent = [
                describe_key(*ref) for ref in refs if ref not in batch_records and found.get(ref) is None
            ]
            if absent:
                missing[key] = absent
        # A record pointing at a record that cannot be written cannot be written either.
        changed = True
        while changed:
            changed = False
            for key, refs in references.items():
                if key in missing:
                    continue
                blocked = [describe_key(*ref) for ref in refs if ref in missing]
                if blocked:
                    missing[key] = blocked
                    changed = True
        return missing

    def _write_records(
        self, pending: list[PreparedItem], shared: Sequence[CanonicalRecord]
    ) -> list[PreparedItem]:
        """Write records shipped with items (and a zip's records, which every item shares).

        The registry's copy of a record is the truth, or the first copy in the batch for
        a new record; an item whose copy differs is a conflict on its own, others go on.
        """
        firsts: dict[RecordKey, CanonicalRecord] = {}
        for record in shared:
            firsts.setdefault((record.element, record.key), record)
        for item in pending:
            for record in item.records:
                firsts.setdefault((record.element, record.key), record)
        if not firsts:
            return pending
        conflicts, missing, _inserted, _present = self.write_records(list(firsts.values()))
        shared_keys = {(r.element, r.key) for r in shared}
        shared_failure: tuple[ItemStatus, str, list[str]] | None = None
        for key in shared_keys:
            if key in conflicts:
                shared_failure = (ItemStatus.conflict, f"dimension record conflict: {conflicts[key]}", [])
                break
            if key in missing:
                reason = f"dimension record {describe_key(*key)} refers to records the registry does not have"
                shared_failure = (ItemStatus.missing_dimensions, reason, missing[key])
        kept = []
        for item in pending:
            failure = shared_failure or self._record_failure(item, conflicts, missing)
            if failure is None:
                kept.append(item)
            else:
                self._fail(item, failure[0], failure[1], failure[2])
        return kept

    def _record_failure(
        self, item: PreparedItem, conflicts: dict[RecordKey, str], missing: dict[RecordKey, list[str]]
    ) -> tuple[ItemStatus, str, list[str]] | None:
        for record in item.records:
            key = (record.element, record.key)
            if key in conflicts:
                return ItemStatus.conflict, f"dimension record conflict: {conflicts[key]}", []
            if key in missing:
                reason = f"dimension record {describe_key(*key)} refers to records the registry does not have"
                return ItemStatus.missing_dimensions, reason, missing[key]
            truth = self._known.get(key)
            if truth is not None and record_differences(truth, record.values):
                fields = ", ".join(record_differences(truth, record.values))
                return (
                    ItemStatus.conflict,
                    f"dimension record conflict: {record.describe()} differs from the registry's record "
                    f"in {fields}",
                    [],
                )
        return None

    # -- 2. dataset types and runs --------------------------------------------------------------

    def _resolve_dataset_types(self, pending: list[PreparedItem]) -> list[PreparedItem]:
        wanted: dict[str, DatasetTypeKey] = {}
        resolved: dict[str, tuple[int, DatasetTypeKey]] = {}
        for item in pending:
            name = item.dataset_type.name
            if name in resolved or name in wanted:
                continue
            cached = self.caches.dataset_types.get(name)
            if cached is not None:
                resolved[name] = cached
            else:
                wanted[name] = item.dataset_type
        if wanted:
            resolved.update(self._fetch_or_insert_dataset_types(wanted))
        self._type_ids.update({name: type_id for name, (type_id, _key) in resolved.items()})
        kept = []
        for item in pending:
            _type_id, stored = resolved[item.dataset_type.name]
            if stored != item.dataset_type:
                self._fail(item, ItemStatus.conflict, _type_conflict(stored, item.dataset_type))
            else:
                kept.append(item)
        return kept

    def _select_dataset_types(self, names: Iterable[str]) -> dict[str, tuple[int, DatasetTypeKey]]:
        query = sa.select(
            DATASET_TYPE.c.id, DATASET_TYPE.c.name, DATASET_TYPE.c.dimensions, DATASET_TYPE.c.storage_class
        ).where(DATASET_TYPE.c.name.in_(list(names)))
        return {
            row.name: (row.id, DatasetTypeKey(row.name, tuple(json.loads(row.dimensions)), row.storage_class))
            for row in self.connection.execute(query)
        }

    def _fetch_or_insert_dataset_types(
        self, wanted: dict[str, DatasetTypeKey]
    ) -> dict[str, tuple[int, DatasetTypeKey]]:
        found = self._select_dataset_types(wanted)
        absent = [key for name, key in wanted.items() if name not in found]
        if absent:
            insert = insert_ignore(self.connection, DATASET_TYPE)
            self.connection.execute(
                insert,
                [
                    {"name": k.name, "dimensions": k.dimensions_json, "storage_class": k.storage_class}
                    for k in absent
                ],
            )
            found.update(self._select_dataset_types(k.name for k in absent))
        self.learned.dataset_types.update(found)
        return found

    def _resolve_runs(self, pending: list[PreparedItem]) -> list[Row]:
        ids: dict[str, int] = {}
        wanted: set[str] = set()
        for item in pending:
            run = item.record.run
            if run in ids or run in wanted:
                continue
            cached = self.caches.runs.get(run)
            if cached is not None:
                ids[run] = cached
            else:
                wanted.add(run)
        not_runs: dict[str, str] = {}
        if wanted:
            found, not_runs = self.ensure_runs(wanted)
            ids.update(found)
        rows = []
        for item in pending:
            run = item.record.run
            if run in not_runs:
                self._fail(
                    item, ItemStatus.conflict, f"collection {run} is a {not_runs[run]} collection, not a RUN"
                )
                continue
            rows.append(Row(item, self._type_ids[item.dataset_type.name], ids[run]))
        return rows

    def ensure_runs(
        self, names: Iterable[str], docs: dict[str, str] | None = None
    ) -> tuple[dict[str, int], dict[str, str]]:
        """Ids of RUN collections, registered if absent; plus names taken by other collection types."""
        names = set(names)
        found = self._select_collections(names)
        absent = names - found.keys()
        if absent:
            self.connection.execute(
                insert_ignore(self.connection, COLLECTION),
                [{"name": name, "type": "RUN", "doc": (docs or {}).get(name)} for name in sorted(absent)],
            )
            found.update(self._select_collections(absent))
        runs = {name: collection_id for name, (collection_id, kind) in found.items() if kind == "RUN"}
        others = {name: kind for name, (_id, kind) in found.items() if kind != "RUN"}
        self.learned.runs.update(runs)
        return runs, others

    def _select_collections(self, names: Iterable[str]) -> dict[str, tuple[int, str]]:
        query = sa.select(COLLECTION.c.id, COLLECTION.c.name, COLLECTION.c.type).where(
            COLLECTION.c.name.in_(list(names))
        )
        return {row.name: (row.id, row.type) for row in self.connection.execute(query)}

    # -- 3. data IDs ----------------------------------------------------------------------------

    def _check_data_ids(self, rows: list[Row]) -> list[Row]:
        store = self.caches.records
        outcome: dict[int, DataIdCheck] = {}
        undecided = rows
        likely = {
            key
            for row in rows
            for key in self.checker.likely_keys(
                row.item.dataset_type.dimensions, row.item.data_id, row.item.given_implied
            )
            if key not in self._known and store.cached(key) is None
        }
        if likely:
            looked_up = store.lookup(self._connection(), likely)
            self._known.update(looked_up)
            self.learned.records.update({k: v for k, v in looked_up.items() if v is not None})
        for _round in range(_MAX_LOOKUP_ROUNDS):
            needed: set[RecordKey] = set()
            still = []
            for row in undecided:
                item = row.item
                check = self.checker.check(
                    item.dataset_type.dimensions, item.data_id, item.given_implied, self._known_record
                )
                if check.needed:
                    needed |= check.needed
                    still.append(row)
                else:
                    outcome[item.index] = check
            if not needed:
                break
            looked_up = store.lookup(self._connection(), needed)
            self._known.update(looked_up)
            self.learned.records.update({k: v for k, v in looked_up.items() if v is not None})
            undecided = still
        else:
            raise AssertionError("data ID check did not settle")  # the universe has no cycles
        return self._apply_checks(rows, outcome)

    def _apply_checks(self, rows: list[Row], outcome: dict[int, DataIdCheck]) -> list[Row]:
        kept = []
        for row in rows:
            check = outcome[row.item.index]
            if check.missing:
                self._fail(
                    row.item,
                    ItemStatus.missing_dimensions,
                    f"the registry has no dimension record for {', '.join(check.missing)}",
                    check.missing,
                )
            elif check.mismatches:
                self._fail(
                    row.item,
                    ItemStatus.invalid,
                    "data ID contradicts the dimension records: " + "; ".join(check.mismatches),
                )
            else:
                kept.append(row)
        return kept

    # -- the fast path: everything known from the caches -----------------------------------------

    def plan_from_caches(self, batch: PreparedBatch) -> list[Row] | None:
        """Settle everything but the dataset inserts from the caches alone, or return ``None``.

        When every dataset type, run and dimension record a batch needs is cached (the
        steady state of a daemon), the whole transaction is the one statement that
        inserts the datasets, and the caller may run it without an explicit
        transaction: one round trip per batch.
        """
        if any(item.records for item in batch.items):
            return None
        self._results = dict(batch.results)
        rows: list[Row] = []
        for item in batch.items:
            cached_type = self.caches.dataset_types.get(item.dataset_type.name)
            run_id = self.caches.runs.get(item.record.run)
            if cached_type is None or run_id is None:
                return None
            type_id, stored = cached_type
            if stored != item.dataset_type:
                self._fail(item, ItemStatus.conflict, _type_conflict(stored, item.dataset_type))
                continue
            rows.append(Row(item, type_id, run_id))
        outcome: dict[int, DataIdCheck] = {}
        for row in rows:
            item = row.item
            check = self.checker.check(
                item.dataset_type.dimensions, item.data_id, item.given_implied, self._cached_record
            )
            if check.needed:
                return None
            outcome[item.index] = check
        return self._apply_checks(rows, outcome)

    def finish(self, batch: PreparedBatch, rows: list[Row]) -> dict[int, ItemResult]:
        """Insert the planned rows and settle the rest (after :meth:`plan_from_caches`)."""
        return self.settle(batch, rows, insert_datasets(self.connection, rows))

    def _cached_record(self, key: RecordKey) -> tuple[bool, dict[str, Any] | None]:
        seen = self._known.get(key)
        if seen is not None:
            return True, seen
        cached = self.caches.records.cached(key)
        if cached is None:
            return False, None
        self._known[key] = cached  # later items of the batch skip the LRU bookkeeping
        return True, cached

    def _known_record(self, key: RecordKey) -> tuple[bool, dict[str, Any] | None]:
        if key in self._known:
            return True, self._known[key]
        cached = self.caches.records.cached(key)
        if cached is None:
            return False, None
        self._known[key] = cached
        return True, cached

    # -- 4 and 5. datasets ----------------------------------------------------------------------

    def _settle_datasets(self, rows: list[Row], inserted: set[uuid.UUID]) -> None:
        self.learned.datasets_inserted += len(inserted)
        others = []
        for row in rows:
            if row.item.dataset_id in inserted:
                self._results[row.item.index] = ItemResult(row.item.dataset_id, ItemStatus.inserted)
            else:
                others.append(row)
        if not others:
            return
        existing = find_existing(self.connection, others)
        by_id = {dataset.id: dataset for dataset in existing}
        by_key = {(d.run_id, d.dataset_type_id, d.data_id_hash): d for d in existing}
        for row in others:
            self._results[row.item.index] = self._compare(row, by_id, by_key)

    def _compare(
        self,
        row: Row,
        by_id: dict[uuid.UUID, ExistingDataset],
        by_key: dict[tuple[int, int, bytes], ExistingDataset],
    ) -> ItemResult:
        item = row.item
        stored = by_id.get(item.dataset_id)
        if stored is not None:
            differences = []
            if stored.dataset_type_id != row.dataset_type_id:
                differences.append("dataset type")
            if stored.run_id != row.run_id:
                differences.append("run")
            if stored.data_id != item.data_id_text:
                differences.append(f"data ID (registered {stored.data_id})")
            file_differences = _file_differences(stored.file, item.file)
            if file_differences:
                differences.append(
                    f"file {', '.join(file_differences)} (registered: {_describe_file(stored.file)})"
                )
            if differences:
                return ItemResult(
                    item.dataset_id,
                    ItemStatus.conflict,
                    f"dataset {item.dataset_id} is already registered with another {'; '.join(differences)}",
                )
            return ItemResult(item.dataset_id, ItemStatus.already_present)
        other = by_key.get((row.run_id, row.dataset_type_id, item.data_id_hash))
        if other is not None and other.data_id == item.data_id_text:
            return ItemResult(
                item.dataset_id,
                ItemStatus.conflict,
                f"dataset type {item.dataset_type.name} with data ID {item.data_id_text} in run "
                f"{item.record.run} is already registered as dataset {other.id}, not {item.dataset_id}",
            )
        raise TransientRegistryError(
            f"dataset {item.dataset_id} was neither inserted nor found (concurrent change); retry the batch"
        )
