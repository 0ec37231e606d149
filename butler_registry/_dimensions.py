"""Dimension records in the database: look-up, insert-or-compare, and data ID checks.

A data ID names records (``visit:HSC/330``, ``detector:HSC/5``) that must exist before a
dataset can be registered, as daf_butler's foreign keys demand. Values a data ID states
for implied dimensions (``band``, ``physical_filter`` next to a ``visit``) must agree with
the records: a disagreement makes the item ``invalid`` (the data ID contradicts the
registry and retrying cannot fix it), whereas an absent record makes it
``missing_dimensions`` (it may arrive later in a ``dim_file``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ._cache import BoundedCache
from ._records import CanonicalRecord, data_key, describe_key
from ._schema import DIMENSION_RECORD
from .interface import DataIdValue
from .universe import Universe

__all__ = [
    "DataIdCheck",
    "DataIdChecker",
    "DimensionStore",
    "RecordKey",
    "record_differences",
    "record_references",
]

RecordKey = tuple[str, str]
"""(element, data key) of a record."""

_LOOKUP_CHUNK = 500
_ABSENT: dict[str, Any] = {}


def record_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Fields whose values differ between two canonical records (absent counts as null)."""
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def record_references(universe: Universe, record: CanonicalRecord) -> list[RecordKey]:
    """Records a record points at (its foreign keys in daf_butler): required and implied ones.

    A visit needs its instrument, physical_filter and day_obs; a
    visit_detector_region its instrument, visit and detector.
    """
    element = universe[record.element]
    values: dict[str, Any] = {}
    for dimension, field_name in zip(element.required, element.key_fields, strict=True):
        values[dimension] = record.values[field_name]
    for dimension in element.implied:
        if record.values.get(dimension) is not None:
            values[dimension] = record.values[dimension]
    references = []
    for dimension in (*element.required, *element.implied):
        if dimension == record.element or dimension not in values:
            continue
        target = universe[dimension]
        if not target.has_records:
            continue
        if all(name in values for name in target.required):
            references.append((dimension, data_key([values[name] for name in target.required])))
    return references


@dataclass(slots=True)
class DataIdCheck:
    """What checking one data ID against the records found."""

    needed: set[RecordKey] = field(default_factory=set)
    """Records to look up before the check can finish."""
    missing: list[str] = field(default_factory=list)
    """Absent records of required dimensions (``visit:HSC/328``)."""
    mismatches: list[str] = field(default_factory=list)
    """Implied values that contradict the records."""


@dataclass(frozen=True, slots=True)
class _Step:
    element: str
    required: tuple[str, ...]
    implied: tuple[str, ...]
    is_required: bool


def _plan(universe: Universe, required: tuple[str, ...]) -> tuple[_Step, ...]:
    """Record look-ups for data IDs of ``required``, in an order where each step's values are known.

    Required dimensions' records come first; records reached through implied values
    (physical_filter through visit, then band) follow the records that imply them.
    """
    candidates = list(universe.record_elements(required))
    available = set(required)
    steps: list[_Step] = []
    progress = True
    while progress:
        progress = False
        for name in list(candidates):
            element = universe[name]
            if available.issuperset(element.required):
                steps.append(_Step(name, element.required, element.implied, name in required))
                available.update(element.implied)
                candidates.remove(name)
                progress = True
    return tuple(steps)


_KEY_MEMO_SIZE = 20_000
"""Data keys remembered by :meth:`DataIdChecker.check` (~200 bytes each) before the memo starts afresh."""


class DataIdChecker:
    """Checks data IDs against dimension records, with a plan per dataset type's dimensions.

    A required dimension's record must exist (else the item is ``missing_dimensions``);
    a value the data ID states for an implied dimension must equal the one the records
    imply (else ``invalid``). Records reached through implied values (visit →
    physical_filter → band) are checked too when the registry has them.
    """

    def __init__(self, universe: Universe) -> None:
        self.universe = universe
        self._plans: dict[tuple[str, ...], tuple[_Step, ...]] = {}
        self._keys: dict[tuple[str, tuple[DataIdValue, ...]], str] = {}

    def _plan_for(self, required: tuple[str, ...]) -> tuple[_Step, ...]:
        plan = self._plans.get(required)
        if plan is None:
            plan = _plan(self.universe, required)
            if len(self._plans) < 4096:
                self._plans[required] = plan
        return plan

    def likely_keys(
        self,
        dimensions: tuple[str, ...],
        required: Mapping[str, DataIdValue],
        given_implied: Mapping[str, DataIdValue],
    ) -> list[RecordKey]:
        """Records a check will most likely read, from the values the data ID states.

        Sidecars state implied values (physical_filter, band, day_obs, group); fetching
        their records together with the required ones saves a round trip per batch.
        """
        values = {**given_implied, **required}
        keys = []
        for step in self._plan_for(dimensions):
            try:
                stated = tuple([values[name] for name in step.required])
            except KeyError:
                continue
            keys.append((step.element, self._data_key(step.element, stated)))
        return keys

    def _data_key(self, element: str, values: tuple[DataIdValue, ...]) -> str:
        """``data_key(values)``, memoised: the same records are asked for by most data IDs of a batch."""
        memo = (element, values)
        text = self._keys.get(memo)
        if text is None:
            text = data_key(values)
            if len(self._keys) >= _KEY_MEMO_SIZE:
                self._keys.clear()  # start afresh: what a campaign uses now is re-learnt within a batch
            self._keys[memo] = text
        return text

    def check(
        self,
        dimensions: tuple[str, ...],
        required: Mapping[str, DataIdValue],
        given_implied: Mapping[str, DataIdValue],
        known: Callable[[RecordKey], tuple[bool, Mapping[str, Any] | None]],
    ) -> DataIdCheck:
        """Check one data ID of a dataset type with required ``dimensions``.

        ``known`` answers ``(False, None)`` for a record not looked up yet, ``(True,
        None)`` for one known absent and ``(True, values)`` for one present; records
        still to fetch are returned in ``needed`` (call again once they are known).
        """
        result = DataIdCheck()
        derived: dict[str, DataIdValue] = dict(required)
        for step in self._plan_for(dimensions):
            try:
                values = tuple([derived[name] for name in step.required])
            except KeyError:
                continue  # reached only through a record that is absent or not looked up yet
            key = (step.element, self._data_key(step.element, values))
            looked_up, record = known(key)
            if not looked_up:
                result.needed.add(key)
                continue
            if record is None:
                if step.is_required:
                    result.missing.append(describe_key(*key))
                continue
            for implied in step.implied:
                value = record.get(implied)
                if value is None:
                    continue
                stated = given_implied.get(implied)
                if stated is not None and stated != value:
                    result.mismatches.append(
                        f"{implied}={stated!r} but {describe_key(*key)} implies {implied}={value!r}"
                    )
                derived.setdefault(implied, value)
        return result


def insert_ignore(connection: sa.Connection, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` into ``table`` for the connection's dialect."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


class DimensionStore:
    """Reads and writes dimension records, with a bounded cache of committed ones.

    Parameters
    ----------
    universe
        The dimension universe.
    capacity
        Records kept in the cache (entries are small: the implied values of a record).
    """

    def __init__(self, universe: Universe, capacity: int) -> None:
        self.universe = universe
        self._cache: BoundedCache[RecordKey, dict[str, Any]] = BoundedCache(capacity)

    def cached(self, key: RecordKey) -> dict[str, Any] | None:
        """A committed record's values if cached."""
        return self._cache.get(key)

    def remember(self, records: Iterable[tuple[RecordKey, Mapping[str, Any]]]) -> None:
        """Cache records known to be committed."""
        self._cache.update((key, dict(values)) for key, values in records)

    def forget(self) -> None:
        """Drop the cache (after a schema change or in tests)."""
        self._cache.clear()

    def lookup(
        self, connection: sa.Connection, keys: Iterable[RecordKey], *, use_cache: bool = True
    ) -> dict[RecordKey, dict[str, Any] | None]:
        """Values of the records at ``keys``; ``None`` for absent ones."""
        found: dict[RecordKey, dict[str, Any] | None] = {}
        wanted: list[RecordKey] = []
        for key in set(keys):
            cached = self._cache.get(key) if use_cache else None
            if cached is not None:
                found[key] = cached
            else:
                wanted.append(key)
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            query = sa.select(
                DIMENSION_RECORD.c.element, DIMENSION_RECORD.c.data_key, DIMENSION_RECORD.c.record
            ).where(sa.tuple_(DIMENSION_RECORD.c.element, DIMENSION_RECORD.c.data_key).in_(chunk))
            for element, key, values in connection.execute(query):
                found[(element, key)] = values
        for key in wanted:
            found.setdefault(key, None)
        return found

    def insert(self, connection: sa.Connection, records: Sequence[CanonicalRecord]) -> set[RecordKey]:
        """Insert records that are not there yet; returns the keys actually inserted.

        Records already present (perhaps inserted by a concurrent writer a moment ago)
        are skipped, not overwritten; the caller compares them.
        """
        if not records:
            return set()
        statement = insert_ignore(connection, DIMENSION_RECORD).returning(
            DIMENSION_RECORD.c.element, DIMENSION_RECORD.c.data_key
        )
        rows = [{"element": r.element, "data_key": r.key, "record": r.values} for r in records]
        inserted: set[RecordKey] = set()
        for start in range(0, len(rows), 1000):
            result = connection.execute(statement, rows[start : start + 1000])
            inserted.update((element, key) for element, key in result)
        return inserted
