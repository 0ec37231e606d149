"""Set-based writes of datasets (with their provenance) and file records, and the look-up of what exists.

PostgreSQL writes a whole chunk with one statement: the rows travel as binary arrays, are
``unnest``-ed into the dataset and file tables through data-modifying CTEs,
``ON CONFLICT DO NOTHING`` skips whatever is already there (same id, or same dataset type,
data ID and run), and ``RETURNING`` says which ids were new. Rows are sorted by id so two
concurrent writers lock in the same order and cannot deadlock each other.

SQLite has a single writer (the registry's transactions begin with ``BEGIN IMMEDIATE``),
so it looks first and inserts only what is absent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ._prepare import PreparedItem
from ._schema import DATASET, DATASET_FILE
from .interface import FileInfo

__all__ = ["MAX_SINGLE_STATEMENT_ROWS", "ExistingDataset", "Row", "find_existing", "insert_datasets"]

MAX_SINGLE_STATEMENT_ROWS = 5000
"""Rows PostgreSQL receives in one statement; larger batches take several, in one transaction."""
_CHUNK = MAX_SINGLE_STATEMENT_ROWS


@dataclass(frozen=True, slots=True)
class Row:
    """An item with its resolved dataset type and run ids."""

    item: PreparedItem
    dataset_type_id: int
    run_id: int


@dataclass(frozen=True, slots=True)
class ExistingDataset:
    """A dataset already in the registry, as far as comparing it with a new item needs."""

    id: uuid.UUID
    dataset_type_id: int
    run_id: int
    data_id: str
    data_id_hash: bytes
    file: FileInfo | None


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


_POSTGRES_INSERT = """
WITH input AS (
    SELECT * FROM unnest(
        %(id)b::uuid[], %(dataset_type_id)b::int4[], %(run_id)b::int4[], %(data_id)b::text[],
        %(data_id_hash)b::bytea[], %(source)b::text[], %(kafka_topic)b::text[], %(kafka_partition)b::int4[],
        %(kafka_offset)b::int8[], %(rucio_transfer_id)b::text[], %(rucio_rse)b::text[],
        %(rucio_scope)b::text[], %(rucio_name)b::text[], %(event_time)b::timestamptz[], %(path)b::text[],
        %(file_size)b::int8[], %(adler32)b::text[], %(md5)b::text[], %(formatter)b::text[]
    ) AS t(id, dataset_type_id, run_id, data_id, data_id_hash, source, kafka_topic, kafka_partition,
           kafka_offset, rucio_transfer_id, rucio_rse, rucio_scope, rucio_name, event_time,
           path, file_size, adler32, md5, formatter)
),
inserted AS (
    INSERT INTO dataset (id, dataset_type_id, run_id, data_id, data_id_hash, source, kafka_topic,
                         kafka_partition, kafka_offset, rucio_transfer_id, rucio_rse, rucio_scope, rucio_name,
                         event_time)
    SELECT id, dataset_type_id, run_id, data_id, data_id_hash, source, kafka_topic, kafka_partition,
           kafka_offset, rucio_transfer_id, rucio_rse, rucio_scope, rucio_name, event_time
    FROM input
    ON CONFLICT DO NOTHING
    RETURNING id
),
files AS (
    INSERT INTO dataset_file (dataset_id, component, path, file_size, adler32, md5, formatter)
    SELECT input.id, '', input.path, input.file_size, input.adler32, input.md5, input.formatter
    FROM input JOIN inserted ON inserted.id = input.id
    WHERE input.path IS NOT NULL
)
SELECT id FROM inserted
"""

_DATASET_COLUMNS = (
    "id", "dataset_type_id", "run_id", "data_id", "data_id_hash", "source", "kafka_topic", "kafka_partition",
    "kafka_offset", "rucio_transfer_id", "rucio_rse", "rucio_scope", "rucio_name", "event_time",
)  # fmt: skip
_FILE_COLUMNS = ("path", "file_size", "adler32", "md5", "formatter")


def _dataset_values(row: Row) -> tuple[Any, ...]:
    item = row.item
    p = item.record.provenance
    if p is None:
        return (item.dataset_id, row.dataset_type_id, row.run_id, item.data_id_text, item.data_id_hash,
                None, None, None, None, None, None, None, None, None)  # fmt: skip
    return (item.dataset_id, row.dataset_type_id, row.run_id, item.data_id_text, item.data_id_hash,
            p.source, p.topic, p.partition, p.offset, p.transfer_id, p.rse, p.scope, p.name,
            _utc(p.event_time))  # fmt: skip


def _file_values(row: Row) -> tuple[Any, ...]:
    f = row.item.file
    if f is None:
        return (None, None, None, None, None)
    return (f.path, f.size, f.adler32, f.md5, f.formatter)


def _columns(rows: Sequence[Row]) -> dict[str, list[Any]]:
    """The rows as one list per column (psycopg sends each as a binary array)."""
    dataset_columns = zip(*[_dataset_values(row) for row in rows], strict=True)
    file_columns = zip(*[_file_values(row) for row in rows], strict=True)
    columns = dict(zip(_DATASET_COLUMNS, (list(c) for c in dataset_columns), strict=True))
    columns.update(zip(_FILE_COLUMNS, (list(c) for c in file_columns), strict=True))
    return columns


def _insert_postgres(connection: sa.Connection, rows: Sequence[Row]) -> set[uuid.UUID]:
    inserted: set[uuid.UUID] = set()
    ordered = sorted(rows, key=lambda row: row.item.dataset_id)
    for start in range(0, len(ordered), _CHUNK):
        # Straight to psycopg (its %b binary placeholders), through SQLAlchemy so that a
        # lost connection is recognised, invalidated and reported like any other.
        result = connection.exec_driver_sql(_POSTGRES_INSERT, _columns(ordered[start : start + _CHUNK]))
        inserted.update(row[0] for row in result)
    return inserted


def _insert_sqlite(connection: sa.Connection, rows: Sequence[Row]) -> set[uuid.UUID]:
    existing = find_existing(connection, rows)
    taken_ids = {dataset.id for dataset in existing}
    taken_keys = {(d.run_id, d.dataset_type_id, d.data_id_hash) for d in existing}
    fresh = [
        row
        for row in rows
        if row.item.dataset_id not in taken_ids
        and (row.run_id, row.dataset_type_id, row.item.data_id_hash) not in taken_keys
    ]
    if not fresh:
        return set()
    connection.execute(
        sa.insert(DATASET), [dict(zip(_DATASET_COLUMNS, _dataset_values(row), strict=True)) for row in fresh]
    )
    files = [
        {
            "dataset_id": row.item.dataset_id,
            "component": "",
            **dict(zip(_FILE_COLUMNS, _file_values(row), strict=True)),
        }
        for row in fresh
        if row.item.file is not None
    ]
    if files:
        connection.execute(sa.insert(DATASET_FILE), files)
    return {row.item.dataset_id for row in fresh}


def insert_datasets(connection: sa.Connection, rows: Sequence[Row]) -> set[uuid.UUID]:
    """Insert the datasets of ``rows`` that do not exist yet; returns the ids inserted.

    An item is skipped when its id exists, or when its (run, dataset type, data ID)
    is taken by another id; :func:`find_existing` then tells which.
    """
    if not rows:
        return set()
    if connection.dialect.name == "postgresql":
        return _insert_postgres(connection, rows)
    return _insert_sqlite(connection, rows)


def find_existing(connection: sa.Connection, rows: Iterable[Row]) -> list[ExistingDataset]:
    """Datasets that share an id, or a (run, dataset type, data ID), with any of ``rows``."""
    rows = list(rows)
    found: dict[uuid.UUID, ExistingDataset] = {}
    columns = (
        DATASET.c.id,
        DATASET.c.dataset_type_id,
        DATASET.c.run_id,
        DATASET.c.data_id,
        DATASET.c.data_id_hash,
        DATASET_FILE.c.path,
        DATASET_FILE.c.file_size,
        DATASET_FILE.c.adler32,
        DATASET_FILE.c.md5,
        DATASET_FILE.c.formatter,
    )
    joined = DATASET.outerjoin(
        DATASET_FILE, sa.and_(DATASET_FILE.c.dataset_id == DATASET.c.id, DATASET_FILE.c.component == "")
    )
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        by_id = (
            sa.select(*columns)
            .select_from(joined)
            .where(DATASET.c.id.in_([r.item.dataset_id for r in chunk]))
        )
        by_key = (
            sa.select(*columns)
            .select_from(joined)
            .where(
                sa.tuple_(DATASET.c.run_id, DATASET.c.dataset_type_id, DATASET.c.data_id_hash).in_(
                    [(r.run_id, r.dataset_type_id, r.item.data_id_hash) for r in chunk]
                )
            )
        )
        for record in connection.execute(sa.union_all(by_id, by_key)):
            file = (
                FileInfo(path=record.path, size=record.file_size, adler32=record.adler32, md5=record.md5,
                         formatter=record.formatter)
                if record.path is not None
                else None
            )  # fmt: skip
            dataset_id = record.id if isinstance(record.id, uuid.UUID) else uuid.UUID(str(record.id))
            found[dataset_id] = ExistingDataset(
                id=dataset_id,
                dataset_type_id=record.dataset_type_id,
                run_id=record.run_id,
                data_id=record.data_id,
                data_id_hash=bytes(record.data_id_hash),
                file=file,
            )
    return list(found.values())
