"""Caches of one multi-file transaction: what earlier files wrote, before it is committed.

:meth:`SqlRegistry.import_files` writes several files in one transaction (each in its
own savepoint, or several exports of records together). A later file must see what an
earlier one established (a dimension export's records that a zip's datasets need), and
the statements that look records up should be shared: one look-up of every record the
batch names, instead of a few per file. The registry's own caches may only hold
committed facts, so the transaction layers these caches over them and folds what it
learned into the real ones only after the commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from ._cache import BoundedCache
from ._dimensions import DimensionStore, RecordKey
from ._records import CanonicalRecord
from ._writer import Learned, RegistryCaches

__all__ = ["TransactionCaches"]

K = TypeVar("K")
V = TypeVar("V")


class _OverlayCache(BoundedCache[K, V]):
    """Entries of the transaction over a committed cache, which it never writes."""

    def __init__(self, committed: BoundedCache[K, V]) -> None:
        super().__init__(0)
        self._committed = committed
        self._local: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        value = self._local.get(key)
        return value if value is not None else self._committed.get(key)

    def put(self, key: K, value: V) -> None:
        self._local[key] = value

    def update(self, items: Iterable[tuple[K, V]]) -> None:
        self._local.update(items)


class _OverlayStore(DimensionStore):
    """Dimension records as the transaction sees them, including which ones it found absent.

    Absence is remembered for the life of the transaction only: a record absent at
    the first look-up is written, if at all, by a file of this transaction (which
    then :meth:`remember` s it) or by a concurrent writer (which the writer's insert
    notices and compares without the cache).
    """

    def __init__(self, committed: DimensionStore) -> None:
        super().__init__(committed.universe, 0)
        self._committed = committed
        self._local: dict[RecordKey, dict[str, Any]] = {}
        self._absent: set[RecordKey] = set()

    def cached(self, key: RecordKey) -> dict[str, Any] | None:
        value = self._local.get(key)
        return value if value is not None else self._committed.cached(key)

    def remember(self, records: Iterable[tuple[RecordKey, Mapping[str, Any]]]) -> None:
        for key, values in records:
            self._local[key] = dict(values)
            self._absent.discard(key)

    def lookup(
        self, connection: sa.Connection, keys: Iterable[RecordKey], *, use_cache: bool = True
    ) -> dict[RecordKey, dict[str, Any] | None]:
        if not use_cache:
            return self._committed.lookup(connection, keys, use_cache=False)
        found: dict[RecordKey, dict[str, Any] | None] = {}
        wanted: list[RecordKey] = []
        for key in set(keys):
            value = self.cached(key)
            if value is not None:
                found[key] = value
            elif key in self._absent:
                found[key] = None
            else:
                wanted.append(key)
        if wanted:
            fetched = self._committed.lookup(connection, wanted, use_cache=False)
            for key, value in fetched.items():
                if value is None:
                    self._absent.add(key)
                else:
                    self._local[key] = value
            found.update(fetched)
        return found


class TransactionCaches:
    """The caches a multi-file transaction hands to each file's :class:`BatchWriter`.

    Parameters
    ----------
    committed
        The registry's caches of committed facts (read, never written here).
    """

    def __init__(self, committed: RegistryCaches) -> None:
        self._committed = committed
        self._store = _OverlayStore(committed.records)
        self.caches = RegistryCaches(
            dataset_types=_OverlayCache(committed.dataset_types),
            runs=_OverlayCache(committed.runs),
            records=self._store,
        )
        self._learned: list[Learned] = []

    def prefetch(self, connection: sa.Connection, keys: Iterable[RecordKey]) -> None:
        """Look up, in one go, records the files will ask about (present or absent)."""
        self._store.lookup(connection, keys)

    def learn(self, learned: Learned) -> None:
        """What a file established, once its savepoint is released: visible to later files."""
        learned.apply(self.caches)
        self._learned.append(learned)

    def commit(self) -> None:
        """Fold what every released file established into the registry's caches (after commit)."""
        for learned in self._learned:
            learned.apply(self._committed)
        self._learned.clear()


def record_keys(records: Sequence[CanonicalRecord]) -> list[RecordKey]:
    """Keys of ``records``, for :meth:`TransactionCaches.prefetch`."""
    return [(record.element, record.key) for record in records]
