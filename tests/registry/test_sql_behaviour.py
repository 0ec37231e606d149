"""What the SQL registry does beyond the shared contract, on SQLite and PostgreSQL alike.

Implied-value checks, dimension records shipped with items, the real Butler's zip,
provenance, bounded caches, and the schema version guard.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from butler_registry import SqlRegistry, open_registry
from butler_registry._schema import DATASET, DATASET_FILE, IMPORT_LOG
from butler_registry.interface import (
    DatasetRecord,
    DatasetTypeSpec,
    FileInfo,
    ItemStatus,
    Provenance,
    RegistryConfigurationError,
    SchemaVersionError,
)

from .conftest import BUTLER_ZIP
from .contract import ABSENT_VISIT, DatasetFactory, statuses


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    database: str = request.getfixturevalue("postgres_database")
    return database


@pytest.fixture
def registry(url: str, samples_dir: Path, open_sql: Callable[..., SqlRegistry]) -> SqlRegistry:
    """A registry holding prep.yaml's records."""
    registry = open_sql(url, create=True)
    assert registry.import_dimensions(samples_dir / "prep.yaml").status is ItemStatus.inserted
    return registry


@pytest.fixture
def datasets(tmp_path: Path) -> DatasetFactory:
    return DatasetFactory(tmp_path)


# -- implied dimensions ---------------------------------------------------------------------


def test_implied_values_that_contradict_the_records_are_invalid(
    registry: SqlRegistry, datasets: DatasetFactory
) -> None:
    wrong_band = datasets.calexp(1, band="g")
    wrong_filter = datasets.calexp(2, physical_filter="HSC-G")
    result = registry.register([wrong_band, wrong_filter, datasets.calexp(3)])
    assert statuses(result) == [ItemStatus.invalid, ItemStatus.invalid, ItemStatus.inserted]
    assert "band='g'" in (result.items[0].reason or "")
    assert "physical_filter:HSC/HSC-Y implies band='y'" in (result.items[0].reason or "")
    assert "visit:HSC/330 implies physical_filter='HSC-Y'" in (result.items[1].reason or "")


def test_implied_values_may_be_left_out(registry: SqlRegistry, datasets: DatasetFactory) -> None:
    bare = datasets.calexp(4)
    bare = replace(bare, data_id={"instrument": "HSC", "visit": 330, "detector": 4})
    assert statuses(registry.register([bare])) == [ItemStatus.inserted]


def test_raw_checks_the_exposure_and_its_implied_records(
    registry: SqlRegistry, datasets: DatasetFactory
) -> None:
    raw = datasets.raw(5)
    assert statuses(registry.register([raw])) == [ItemStatus.inserted]
    other_group = replace(datasets.raw(6), data_id={**raw.data_id, "detector": 6, "group": "999"})
    result = registry.register([other_group])
    assert statuses(result) == [ItemStatus.invalid]
    assert "exposure:HSC/330 implies group='330'" in (result.items[0].reason or "")


def test_unknown_dimension_in_a_data_id_is_invalid(registry: SqlRegistry, datasets: DatasetFactory) -> None:
    item = datasets.calexp(1, flavour="vanilla")
    result = registry.register([item])
    assert statuses(result) == [ItemStatus.invalid]
    assert "flavour" in (result.items[0].reason or "")


def test_wrong_value_type_is_invalid(registry: SqlRegistry, datasets: DatasetFactory) -> None:
    item = datasets.calexp(1)
    result = registry.register([replace(item, data_id={**item.data_id, "visit": "330"})])
    assert statuses(result) == [ItemStatus.invalid]


def test_dataset_type_with_unknown_dimension_is_invalid(
    registry: SqlRegistry, datasets: DatasetFactory
) -> None:
    spec = DatasetTypeSpec("odd", ("instrument", "nebula"), "Thing")
    item = replace(datasets.calexp(1), dataset_type=spec)
    assert statuses(registry.register([item])) == [ItemStatus.invalid]


def test_skypix_dimensions_need_no_records(registry: SqlRegistry, datasets: DatasetFactory) -> None:
    spec = DatasetTypeSpec("ref_cat", ("htm7",), "SimpleCatalog")
    item = DatasetRecord(uuid.uuid4(), spec, "refcats/gaia", {"htm7": 131072}, datasets.file("refcat"))
    assert statuses(registry.register([item])) == [ItemStatus.inserted]


# -- dimension records shipped with items ---------------------------------------------------


def _visit_records(visit: int, *, name: str | None = None) -> dict[str, list[dict[str, object]]]:
    return {
        "visit": [
            {
                "instrument": "HSC",
                "id": visit,
                "name": name or f"HSCA{visit:08d}",
                "physical_filter": "HSC-Y",
                "day_obs": 20140325,
                "exposure_time": 30.0,
                "datetime_begin": "2014-03-25 10:00:00.000000000",
                "datetime_end": "2014-03-25 10:00:30.000000000",
            }
        ]
    }


def test_shipped_dimension_records_are_inserted_first(
    registry: SqlRegistry, datasets: DatasetFactory
) -> None:
    item = replace(datasets.calexp(1, visit=ABSENT_VISIT), dimension_records=_visit_records(ABSENT_VISIT))
    assert statuses(registry.register([item])) == [ItemStatus.inserted]
    assert registry.stats().dimension_records["visit"] == 2
    # The same record shipped again is fine; another copy of it is a conflict.
    again = replace(datasets.calexp(2, visit=ABSENT_VISIT), dimension_records=_visit_records(ABSENT_VISIT))
    clash = replace(
        datasets.calexp(3, visit=ABSENT_VISIT), dimension_records=_visit_records(ABSENT_VISIT, name="renamed")
    )
    result = registry.register([again, clash])
    assert statuses(result) == [ItemStatus.inserted, ItemStatus.conflict]
    assert "visit:HSC/328 differs from the registry's record in name" in (result.items[1].reason or "")


def test_shipped_record_with_absent_references_is_missing(
    registry: SqlRegistry, datasets: DatasetFactory
) -> None:
    records = _visit_records(ABSENT_VISIT)
    records["visit"][0]["physical_filter"] = "HSC-G"  # no such physical_filter record
    item = replace(datasets.calexp(1, visit=ABSENT_VISIT), dimension_records=records)
    result = registry.register([item, datasets.calexp(2)])
    assert statuses(result) == [ItemStatus.missing_dimensions, ItemStatus.inserted]
    assert result.items[0].missing == ("physical_filter:HSC/HSC-G",)
    assert registry.stats().dimension_records["visit"] == 1


# -- the real Butler's zip ------------------------------------------------------------------


def test_zip_written_by_the_real_butler(
    url: str, open_sql: Callable[..., SqlRegistry], samples_dir: Path
) -> None:
    registry = open_sql(url, create=True)
    # The index carries the dimension records its datasets need: no dim_file first.
    first = registry.import_zip(BUTLER_ZIP)
    assert first.status is ItemStatus.inserted, first
    assert first.dimension_records_inserted == 8
    assert statuses(first.datasets) == [ItemStatus.inserted] * 3
    # prep.yaml agrees with the zip's copies of the same records.
    assert registry.import_dimensions(samples_dir / "prep.yaml").status is ItemStatus.inserted
    second = registry.import_zip(BUTLER_ZIP)
    assert second.status is ItemStatus.already_present
    assert second.dimension_records_present == 8
    with registry.engine.connect() as connection:
        paths = sorted(connection.execute(sa.select(DATASET_FILE.c.path)).scalars())
        logged = connection.execute(sa.select(sa.func.count()).select_from(IMPORT_LOG)).scalar_one()
    assert paths[0].startswith(f"{BUTLER_ZIP}#zip-path=01a201be-calexpJson_HSC_y_HSC-Y_330_1_53")
    assert logged == 2  # the zip, then prep.yaml's remaining records; the replay wrote nothing


# -- provenance and files -------------------------------------------------------------------


def test_provenance_and_file_record_are_stored(registry: SqlRegistry, datasets: DatasetFactory) -> None:
    when = datetime(2025, 3, 19, 20, 58, 46, tzinfo=UTC)
    provenance = Provenance(
        source="kafka",
        topic="XRD5-test",
        partition=2,
        offset=1234,
        transfer_id="ee01ae98-0504-11f0-9b97-0242ac120003",
        rse="XRD5",
        scope="test",
        name="something/visitSummary.fits",
        event_time=when,
    )
    item = replace(datasets.visit_summary(), provenance=provenance)
    registry.register([item])
    with registry.engine.connect() as connection:
        row = connection.execute(
            sa.select(DATASET, DATASET_FILE.c.path, DATASET_FILE.c.file_size, DATASET_FILE.c.adler32).join(
                DATASET_FILE, DATASET_FILE.c.dataset_id == DATASET.c.id
            )
        ).one()
    assert row.kafka_topic == "XRD5-test"
    assert (row.kafka_partition, row.kafka_offset) == (2, 1234)
    assert row.rucio_transfer_id == provenance.transfer_id
    assert row.rucio_rse == "XRD5"
    assert row.event_time.replace(tzinfo=row.event_time.tzinfo or UTC) == when
    assert item.file is not None
    assert (row.path, row.file_size, row.adler32) == (item.file.path, item.file.size, item.file.adler32)
    assert row.data_id == '{"instrument":"HSC","visit":330}'


def test_replay_with_other_provenance_is_still_present(
    registry: SqlRegistry, datasets: DatasetFactory
) -> None:
    item = datasets.calexp(1)
    registry.register([item])
    replayed = replace(item, provenance=Provenance(source="dlq", topic="dead-letters", offset=9))
    assert statuses(registry.register([replayed])) == [ItemStatus.already_present]


def test_file_checksum_mismatch_is_a_conflict(registry: SqlRegistry, datasets: DatasetFactory) -> None:
    item = datasets.calexp(1)
    registry.register([item])
    assert item.file is not None
    corrupt = replace(item, file=replace(item.file, adler32="00000000"))
    result = registry.register([corrupt])
    assert statuses(result) == [ItemStatus.conflict]
    assert "adler32" in (result.items[0].reason or "")
    unknown_checksum = replace(item, file=FileInfo(item.file.path))
    assert statuses(registry.register([unknown_checksum])) == [ItemStatus.already_present]


def test_run_name_taken_by_another_collection_type(registry: SqlRegistry, datasets: DatasetFactory) -> None:
    from butler_registry._schema import COLLECTION

    with registry.engine.begin() as connection:
        connection.execute(sa.insert(COLLECTION).values(name="HSC/tagged", type="TAGGED"))
    result = registry.register([datasets.calexp(1, run="HSC/tagged")])
    assert statuses(result) == [ItemStatus.conflict]
    assert "TAGGED" in (result.items[0].reason or "")


# -- caches and schema ----------------------------------------------------------------------


def test_caches_stay_bounded(url: str, samples_dir: Path, datasets: DatasetFactory) -> None:
    with open_registry(url, create=True, record_cache_size=5) as registry:
        registry.import_dimensions(samples_dir / "prep.yaml")
        for start in range(0, 100, 20):
            result = registry.register(datasets.calexps(range(start, start + 20)))
            assert statuses(result) == [ItemStatus.inserted] * 20
        assert len(registry._caches.records._cache) <= 5
        assert statuses(registry.register([datasets.calexp(999)])) == [ItemStatus.missing_dimensions]


def test_a_database_without_schema_is_refused(url: str) -> None:
    with pytest.raises(SchemaVersionError, match="registry init"):
        open_registry(url)


def test_a_newer_schema_is_refused(url: str, open_sql: Callable[..., SqlRegistry]) -> None:
    registry = open_sql(url, create=True)
    with registry.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaVersionError, match="newer"):
        registry.ping()


def test_unsupported_url_is_a_configuration_error() -> None:
    with pytest.raises(RegistryConfigurationError, match="not supported"):
        open_registry("mysql://somewhere/db")


def test_create_is_idempotent(url: str, open_sql: Callable[..., SqlRegistry]) -> None:
    open_sql(url, create=True).close()
    registry = open_sql(url, create=True)
    assert registry.stats().schema_version == "1"


def test_sqlite_readers_do_not_block_the_writer(
    sqlite_url: str, samples_dir: Path, datasets: DatasetFactory, open_sql: Callable[..., SqlRegistry]
) -> None:
    registry = open_sql(sqlite_url, create=True)
    registry.import_dimensions(samples_dir / "prep.yaml")
    reader = open_sql(sqlite_url)
    with reader.engine.connect() as connection:
        connection.execute(sa.select(sa.func.count()).select_from(DATASET)).scalar_one()  # a read transaction
        assert statuses(registry.register([datasets.calexp(1)])) == [ItemStatus.inserted]
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(DATASET)).scalar_one() == 0
        )  # snapshot
    assert reader.stats().datasets == 1


def test_export_written_by_the_real_butler_imports(
    url: str, open_sql: Callable[..., SqlRegistry], samples_dir: Path
) -> None:
    """A current Butler's export (universe 8: day_obs and group records, datasets with paths)."""
    from .conftest import DATA_DIR

    registry = open_sql(url, create=True)
    first = registry.import_dimensions(DATA_DIR / "butler_export_v8.yaml")
    assert first.status is ItemStatus.inserted, first
    assert statuses(first.datasets) == [ItemStatus.inserted] * 3
    stats = registry.stats()
    assert stats.dimension_records["group"] == 1
    assert stats.dimension_records["day_obs"] == 1
    assert stats.runs == 1
    # prep.yaml (universe 3, upgraded on import) says the same about the same records.
    assert registry.import_dimensions(samples_dir / "prep.yaml").status is ItemStatus.inserted
    assert registry.import_dimensions(DATA_DIR / "butler_export_v8.yaml").status is ItemStatus.already_present


def test_sqlite_runs_in_wal_mode_with_foreign_keys(
    sqlite_url: str, open_sql: Callable[..., SqlRegistry]
) -> None:
    registry = open_sql(sqlite_url, create=True)
    with registry.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
