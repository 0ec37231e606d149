"""One :meth:`DafButlerRegistry.register` call: per-item outcomes out of an all-or-nothing ``Butler.ingest``.

``Butler.ingest`` commits a whole batch or nothing and says why only in an
exception message. The registry contract wants one status per item and every good
item committed. The steps, cheapest first:

1. **Convert** each record to a ``DatasetRef``; what cannot be expressed in the
   universe is ``invalid``. Duplicate ids inside the batch are resolved here.
2. **Register dataset types and runs** (outside any transaction, as daf_butler
   requires); a dataset type defined differently in the repository makes its items
   ``conflict``.
3. **Look the ids up** in one query: same content is ``already_present``, other
   content is ``conflict``.
4. In **one outer transaction**: sync the dimension records shipped with expanded
   sidecars, then ``Butler.ingest(..., skip_existing=True)`` inside a savepoint. If
   it fails, look up in bulk which dimension records are missing
   (``missing_dimensions``) and which files are not there (``invalid``): these come
   many at a time. Then **bisect** the rest, each half in its own savepoint, until
   every failing item is alone and classified; a formatter that cannot be imported
   condemns the other items of its storage class at once. A good batch costs one
   ingest call; each other bad item about ``2 log2(n)`` more.

A database that goes away at any step raises out of here; the caller turns it into
:class:`~butler_registry.interface.TransientRegistryError`, and the outer
transaction has rolled everything back.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from butler_registry.interface import DatasetRecord, ItemResult, ItemStatus
from ingestd.log import get_logger

from ._convert import (
    InvalidRecordError,
    dataset_type_for,
    difference,
    dimension_records_for,
    file_dataset_for,
    record_label,
    ref_for,
)
from ._errors import is_item_failure, is_transient, item_status_for
from ._records import missing_record_labels, record_key
from ._settings import DafButlerSettings, TransferMode

if TYPE_CHECKING:
    import uuid

    from lsst.daf.butler import Butler, DatasetRef, DatasetType, DimensionRecord

__all__ = ["BatchRegistration", "RepoCache"]

_log = get_logger(__name__)

_REASON_LIMIT = 1000
"""Longest reason kept from a daf_butler message (some embed whole data ID lists)."""

_SYNCED_RECORDS_KEPT = 50_000
"""Shipped dimension records remembered as already synced; bounded so memory stays flat."""


def _reason(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


@dataclass
class RepoCache:
    """What the adapter learnt about one open repository; dropped with the connection.

    Dataset types and runs are immutable once registered, so a name seen once need
    not be registered again. Shipped dimension records are remembered by content,
    in a bounded LRU, so a campaign's repeated visit records cost one sync each.
    """

    dataset_types: dict[str, DatasetType] = field(default_factory=dict)
    runs: set[str] = field(default_factory=set)
    synced_records: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)

    def remember_synced(self, key: Hashable) -> None:
        """Note a shipped record as present, forgetting the oldest past the bound."""
        self.synced_records[key] = None
        self.synced_records.move_to_end(key)
        while len(self.synced_records) > _SYNCED_RECORDS_KEPT:
            self.synced_records.popitem(last=False)


@dataclass
class _Item:
    """An item that survived conversion, on its way to ``Butler.ingest``."""

    index: int
    record: DatasetRecord
    ref: DatasetRef
    shipped: list[tuple[str, DimensionRecord, Hashable]]
    present: bool = False


class BatchRegistration:
    """Registers one batch; :meth:`run` returns one :class:`ItemResult` per input, in order."""

    def __init__(
        self, butler: Butler, settings: DafButlerSettings, cache: RepoCache, batch: Sequence[DatasetRecord]
    ) -> None:
        self._butler = butler
        self._settings = settings
        self._cache = cache
        self._batch = batch
        self._results: list[ItemResult | None] = [None] * len(batch)
        self._duplicate_of: dict[int, int] = {}
        self._items: list[_Item] = []
        self._contested: list[tuple[int, DatasetRef]] = []
        self._unimportable: dict[tuple[str, str | None], str] = {}

    # -- public ------------------------------------------------------------------------------

    def run(self) -> tuple[ItemResult, ...]:
        """Register the batch; raises only for errors that are not about the items."""
        self._prepare()
        self._register_dataset_types()
        self._register_runs()
        self._find_existing()
        with self._butler.transaction():
            self._sync_shipped_records()
            self._ingest([item for item in self._items if self._results[item.index] is None], diagnosed=False)
        for item in self._items:
            if self._results[item.index] is None:
                status = ItemStatus.already_present if item.present else ItemStatus.inserted
                self._results[item.index] = ItemResult(item.record.id, status)
        for index, first in self._duplicate_of.items():
            self._results[index] = self._duplicate_result(first)
        final = tuple(result for result in self._results if result is not None)
        assert len(final) == len(self._batch), "every item must have exactly one result"
        return final

    # -- steps -------------------------------------------------------------------------------

    def _set(
        self, index: int, status: ItemStatus, reason: str | None = None, missing: tuple[str, ...] = ()
    ) -> None:
        self._results[index] = ItemResult(self._batch[index].id, status, reason, missing)

    def _prepare(self) -> None:
        universe = self._butler.dimensions
        types: dict[Any, DatasetType | InvalidRecordError] = {}
        first_by_id: dict[uuid.UUID, int] = {}
        first_by_key: dict[tuple[str, str, tuple[tuple[str, Hashable], ...]], uuid.UUID] = {}
        for index, record in enumerate(self._batch):
            first = first_by_id.get(record.id)
            if first is not None:
                earlier = self._batch[first]
                same = (
                    earlier.dataset_type == record.dataset_type
                    and earlier.run == record.run
                    and dict(earlier.data_id) == dict(record.data_id)
                )
                if same:
                    self._duplicate_of[index] = first
                else:
                    self._contest(index, record, types)
                continue
            first_by_id[record.id] = index
            if record.dataset_type not in types:
                try:
                    types[record.dataset_type] = dataset_type_for(record.dataset_type, universe)
                except InvalidRecordError as error:
                    types[record.dataset_type] = error
            dataset_type = types[record.dataset_type]
            try:
                if isinstance(dataset_type, InvalidRecordError):
                    raise dataset_type
                ref = ref_for(record, dataset_type)
                file_dataset_for(record, ref)  # checks the record has a file
                shipped = [
                    (element, converted, self._shipped_key(element, values))
                    for (element, converted), values in self._shipped(record)
                ]
            except InvalidRecordError as error:
                self._set(index, ItemStatus.invalid, str(error))
                continue
            key = (dataset_type.name, record.run, tuple(sorted(ref.dataId.required.items())))
            holder = first_by_key.setdefault(key, record.id)
            if holder != record.id:
                self._set(
                    index,
                    ItemStatus.conflict,
                    f"dataset {holder} earlier in this batch has the same type, run and data ID "
                    f"{dict(ref.dataId.required)}",
                )
                continue
            self._items.append(_Item(index, record, ref, shipped))

    def _contest(
        self, index: int, record: DatasetRecord, types: dict[Any, DatasetType | InvalidRecordError]
    ) -> None:
        """A second copy of an id with other content: judged against the registry once it is read."""
        try:
            dataset_type = types.get(record.dataset_type) or dataset_type_for(
                record.dataset_type, self._butler.dimensions
            )
            if isinstance(dataset_type, InvalidRecordError):
                raise dataset_type
            self._contested.append((index, ref_for(record, dataset_type)))
        except InvalidRecordError as error:
            self._set(index, ItemStatus.invalid, str(error))

    def _shipped(self, record: DatasetRecord) -> list[tuple[tuple[str, DimensionRecord], dict[str, Any]]]:
        if not record.dimension_records:
            return []
        converted = dimension_records_for(record.dimension_records, self._butler.dimensions)
        # Keep the raw values next to each converted record for the content key.
        raw: dict[str, list[dict[str, Any]]] = {
            name: [dict(values) for values in records] for name, records in record.dimension_records.items()
        }
        paired: list[tuple[tuple[str, DimensionRecord], dict[str, Any]]] = []
        cursor: dict[str, int] = {}
        for element, dimension_record in converted:
            position = cursor.get(element, 0)
            cursor[element] = position + 1
            paired.append(((element, dimension_record), raw[element][position]))
        return paired

    @staticmethod
    def _shipped_key(element: str, values: dict[str, Any]) -> Hashable:
        return (element, json.dumps(values, sort_keys=True, default=str))

    def _pending(self) -> list[_Item]:
        return [item for item in self._items if self._results[item.index] is None]

    @staticmethod
    def _definition(dataset_type: DatasetType) -> tuple[str, frozenset[str], str]:
        return dataset_type.name, frozenset(dataset_type.dimensions.names), dataset_type.storageClass_name

    def _register_dataset_types(self) -> None:
        """Register each dataset type of the batch; an item whose type is defined otherwise is a conflict.

        Stricter than ``Butler.ingest``, which also accepts a storage class it can
        convert to and from the registered one: a sidecar that disagrees with the
        repository about a dataset type is an inconsistency an operator must see.
        """
        from lsst.daf.butler.registry import ConflictingDefinitionError

        wanted: dict[tuple[str, frozenset[str], str], DatasetType] = {}
        for item in self._pending():
            wanted.setdefault(self._definition(item.ref.datasetType), item.ref.datasetType)
        refused: dict[tuple[str, frozenset[str], str], str] = {}
        for definition, dataset_type in wanted.items():
            known = self._cache.dataset_types.get(dataset_type.name)
            if known is not None and self._definition(known) == definition:
                continue
            try:
                self._butler.registry.registerDatasetType(dataset_type)
            except ConflictingDefinitionError:
                existing = self._butler.get_dataset_type(dataset_type.name)
                if self._definition(existing) != definition:
                    refused[definition] = (
                        f"dataset type {dataset_type.name!r} is defined in the repository with dimensions "
                        f"{sorted(existing.dimensions.required)} and storage class "
                        f"{existing.storageClass_name}, not {sorted(dataset_type.dimensions.required)} "
                        f"and {dataset_type.storageClass_name}"
                    )
                    continue
            self._cache.dataset_types[dataset_type.name] = dataset_type
        for item in self._pending():
            reason = refused.get(self._definition(item.ref.datasetType))
            if reason is not None:
                self._set(item.index, ItemStatus.conflict, reason)

    def _register_runs(self) -> None:
        from lsst.daf.butler import CollectionTypeError
        from lsst.daf.butler.registry import ConflictingDefinitionError

        refused: dict[str, str] = {}
        for run in sorted({item.record.run for item in self._pending()} - self._cache.runs):
            try:
                self._butler.collections.register(run)
            except (CollectionTypeError, ConflictingDefinitionError) as error:
                refused[run] = f"run {run!r} cannot be used: {_reason(error)}"
                continue
            self._cache.runs.add(run)
        for item in self._pending():
            if item.record.run in refused:
                self._set(item.index, ItemStatus.conflict, refused[item.record.run])

    def _find_existing(self) -> None:
        pending = self._pending()
        ids = {item.ref.id for item in pending} | {ref.id for _, ref in self._contested}
        if not ids:
            return
        found = {ref.id: ref for ref in self._butler.get_many_datasets(sorted(ids))}
        for index, ref in self._contested:
            existing = found.get(ref.id)
            if existing is None:
                self._set(
                    index,
                    ItemStatus.conflict,
                    f"dataset {ref.id} appears earlier in this batch with other type, run or data ID",
                )
            else:
                why = difference(existing, ref)
                self._set(index, ItemStatus.conflict if why else ItemStatus.already_present, why)
        present: list[tuple[_Item, DatasetRef]] = []
        for item in pending:
            existing = found.get(item.ref.id)
            if existing is None:
                continue
            why = difference(existing, item.ref)
            if why is None:
                item.present = True
                present.append((item, existing))
            else:
                self._set(item.index, ItemStatus.conflict, why)
        self._compare_files(present)

    def _compare_files(self, present: list[tuple[_Item, DatasetRef]]) -> None:
        """A dataset already registered with another file is a conflict, not a replay.

        Only meaningful for ``direct`` ingest, where the datastore records the very
        path it was given; other modes record a path inside the datastore. A
        registered dataset without a file record is not a conflict: ingest adds it.
        """
        from lsst.resources import ResourcePath

        if self._settings.transfer is not TransferMode.direct or not present:
            return
        uris = self._butler.get_many_uris([existing for _, existing in present], allow_missing=True)
        for item, existing in present:
            stored = uris.get(existing)
            primary = stored.primaryURI if stored is not None else None
            if primary is None or item.record.file is None:
                continue
            wanted = ResourcePath(item.record.file.path, forceAbsolute=True)
            if primary.geturl() != wanted.geturl():
                item.present = False
                self._set(
                    item.index,
                    ItemStatus.conflict,
                    f"dataset {item.ref.id} is registered with file {primary.geturl()}, "
                    f"not {wanted.geturl()}",
                )

    def _sync_shipped_records(self) -> None:
        from lsst.daf.butler.registry import ConflictingDefinitionError

        holders: dict[Hashable, list[_Item]] = {}
        records: dict[Hashable, tuple[str, DimensionRecord]] = {}
        for item in self._pending():
            for element, record, key in item.shipped:
                if key in self._cache.synced_records:
                    continue
                holders.setdefault(key, []).append(item)
                records.setdefault(key, (element, record))
        if not records:
            return
        order = {
            element.name: rank
            for rank, element in enumerate(self._butler.dimensions.sorted({e for e, _ in records.values()}))
        }
        for key in sorted(records, key=lambda k: order[records[k][0]]):
            element, record = records[key]
            label = record_label(element, record_key(record))
            try:
                with self._butler.registry.transaction(savepoint=True):
                    self._butler.registry.syncDimensionData(element, record)
            except Exception as error:
                if is_transient(error) or not is_item_failure(error):
                    raise
                if isinstance(error, ConflictingDefinitionError):
                    status = ItemStatus.conflict
                    reason = (
                        f"shipped dimension record {label} differs from the repository's: {_reason(error)}"
                    )
                else:
                    status = item_status_for(error)
                    reason = f"shipped dimension record {label} cannot be inserted: {_reason(error)}"
                for item in holders[key]:
                    if self._results[item.index] is None:
                        self._set(item.index, status, reason)
                continue
            self._cache.remember_synced(key)

    # -- ingest with isolation ---------------------------------------------------------------

    def _try_ingest(self, items: list[_Item]) -> BaseException | None:
        datasets = [file_dataset_for(item.record, item.ref) for item in items]
        try:
            with self._butler.registry.transaction(savepoint=True):
                self._butler.ingest(
                    *datasets,
                    transfer=self._settings.transfer.value,
                    record_validation_info=self._settings.record_validation_info,
                    skip_existing=True,
                )
        except Exception as error:
            if is_transient(error) or not is_item_failure(error):
                raise
            return error
        return None

    def _ingest(self, items: list[_Item], *, diagnosed: bool) -> None:
        items = [item for item in items if not self._poisoned(item)]
        if not items:
            return
        failure = self._try_ingest(items)
        if failure is None:
            return
        if not diagnosed:
            rest = self._diagnose(items, failure)
            if len(rest) < len(items):
                self._ingest(rest, diagnosed=True)
                return
        if len(items) == 1:
            self._classify(items[0], failure)
            return
        middle = len(items) // 2
        self._ingest(items[:middle], diagnosed=True)
        self._ingest(items[middle:], diagnosed=True)

    def _diagnose(self, items: list[_Item], failure: BaseException) -> list[_Item]:
        """Find, in bulk, the items whose dimension records or files are missing; return the others.

        These are the failures that tend to come many at a time (a night whose
        exposure records have not arrived, a file system not mounted); found here
        they cost a few queries and one existence check per file instead of a
        bisection each.
        """
        from lsst.resources import ResourcePath

        missing = missing_record_labels(
            self._butler, [(item.record.data_id, item.ref.datasetType.dimensions.names) for item in items]
        )
        paths = {item.index: ResourcePath(item.record.file.path) for item in items if item.record.file}
        exists = ResourcePath.mexists(paths.values()) if paths else {}
        rest: list[_Item] = []
        for item, labels in zip(items, missing, strict=True):
            path = paths.get(item.index)
            if labels:
                self._set(
                    item.index,
                    ItemStatus.missing_dimensions,
                    f"dimension records not in the repository: {', '.join(labels)}",
                    labels,
                )
            elif path is not None and not exists.get(path, True):
                self._set(item.index, ItemStatus.invalid, f"file not found: {path}")
            else:
                rest.append(item)
        _log.info(
            "daf_butler_batch_isolating",
            items=len(items),
            missing_dimensions=sum(1 for labels in missing if labels),
            missing_files=len(items) - len(rest) - sum(1 for labels in missing if labels),
            first_error=type(failure).__name__,
        )
        return rest

    @staticmethod
    def _formatter_key(item: _Item) -> tuple[str, str | None]:
        return (
            item.ref.datasetType.storageClass_name,
            item.record.file.formatter if item.record.file else None,
        )

    def _poisoned(self, item: _Item) -> bool:
        """Whether an earlier item with the same storage class and formatter failed to import it."""
        reason = self._unimportable.get(self._formatter_key(item))
        if reason is None:
            return False
        self._set(item.index, ItemStatus.invalid, reason)
        return True

    def _classify(self, item: _Item, error: BaseException) -> None:
        status = item_status_for(error)
        if status is ItemStatus.missing_dimensions:
            # The bulk check found every record this data ID names; the symptom has another cause.
            status = ItemStatus.invalid
        if isinstance(error, FileNotFoundError):
            reason = (
                f"file not found: {item.record.file.path if item.record.file else '?'} ({_reason(error)})"
            )
        elif isinstance(error, ImportError):
            reason = f"the formatter for this dataset cannot be imported here: {_reason(error)}"
            self._unimportable[self._formatter_key(item)] = reason
        else:
            reason = _reason(error)
        self._set(item.index, status, reason)

    def _duplicate_result(self, first: int) -> ItemResult:
        earlier = self._results[first]
        assert earlier is not None
        record = self._batch[first]
        if earlier.status is ItemStatus.inserted:
            return ItemResult(record.id, ItemStatus.already_present, "registered earlier in this batch")
        return ItemResult(record.id, earlier.status, earlier.reason, earlier.missing)
