"""Batched imports (:meth:`SqlRegistry.import_files`): one transaction, one result per file.

The daemon hands a batch's dimension exports and zips to the registry in one call;
each file must keep the result it would have had on its own, a refused file must not
spoil the others (nor leave records that later files or batches could see), and a
replay must change nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
import yaml

from butler_registry import ImportKind, ImportRequest, Provenance, SqlRegistry
from butler_registry._schema import IMPORT_LOG
from butler_registry.interface import ImportResult, ItemStatus, Registry
from tests.registry.contract import DatasetFactory, _modified_prep, statuses, write_butler_zip

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def open_registry_at(
    request: pytest.FixtureRequest, tmp_path: Path, open_sql: Callable[..., SqlRegistry], samples_dir: Path
) -> Iterator[Callable[[str], SqlRegistry]]:
    """Open fresh registries (prep.yaml imported), each in its own database, on the parametrised backend."""
    created: list[str] = []
    opened: list[SqlRegistry] = []
    admin_url = ""

    def make(name: str) -> SqlRegistry:
        nonlocal admin_url
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / f'{name}.sqlite3'}"
        else:
            admin_url = request.getfixturevalue("postgres_url").replace(
                "postgresql+psycopg://", "postgresql://"
            )
            database = f"t_{uuid.uuid4().hex[:16]}"
            with psycopg.connect(admin_url, autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{database}"')
            created.append(database)
            server = admin_url.split("://", 1)[1].rpartition("/")[0]
            url = f"postgresql+psycopg://{server}/{database}"
        registry = open_sql(url, create=True)
        opened.append(registry)
        assert registry.import_dimensions(samples_dir / "prep.yaml").status is ItemStatus.inserted
        return registry

    yield make
    for registry in opened:
        registry.close()
    for database in created:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def registry(open_registry_at: Callable[[str], SqlRegistry]) -> SqlRegistry:
    """One fresh registry with prep.yaml's records."""
    return open_registry_at("main")


@pytest.fixture
def datasets(tmp_path: Path) -> DatasetFactory:
    """Datasets with real files under this test's directory."""
    return DatasetFactory(tmp_path)


def _dims(path: Path) -> ImportRequest:
    return ImportRequest(ImportKind.dimensions, path, Provenance(source="file", name=path.name))


def _zip(path: Path) -> ImportRequest:
    return ImportRequest(ImportKind.zip, path, Provenance(source="file", name=path.name))


def _shape(results: list[ImportResult]) -> list[tuple[object, ...]]:
    """What a file's result says, for comparing two ways of importing the same files."""
    return [
        (r.status, r.dimension_records_inserted, r.dimension_records_present, statuses(r.datasets))
        for r in results
    ]


def _import_log_rows(registry: SqlRegistry) -> list[tuple[str, str]]:
    with registry.engine.connect() as connection:
        return [
            (row.kind, Path(row.path).name)
            for row in connection.execute(sa.select(IMPORT_LOG.c.kind, IMPORT_LOG.c.path))
        ]


def _mixed_batch(samples_dir: Path, tmp_path: Path, datasets: DatasetFactory) -> list[ImportRequest]:
    """A good export, a file that is no export, a conflicting export, a zip needing the good export."""
    good = _modified_prep(samples_dir, tmp_path / "adds-501.yaml", change_detector_0=False, add_detector=501)
    bogus = tmp_path / "bogus.yaml"
    bogus.write_text(yaml.safe_dump({"hello": "world"}))
    conflicting = _modified_prep(
        samples_dir, tmp_path / "conflicting.yaml", change_detector_0=True, add_detector=500
    )
    archive = write_butler_zip(
        tmp_path / "needs-501.zip", [datasets.calexp(501, run="HSC/runs/zipped"), datasets.calexp(3)]
    )
    return [_dims(good), _dims(bogus), _dims(conflicting), _zip(archive), _zip(tmp_path / "absent.zip")]


def test_empty_list(registry: SqlRegistry) -> None:
    assert registry.import_files([]) == []


def test_one_result_per_file_in_order(
    registry: SqlRegistry, datasets: DatasetFactory, samples_dir: Path, tmp_path: Path
) -> None:
    before = registry.stats()
    results = registry.import_files(_mixed_batch(samples_dir, tmp_path, datasets))
    assert [result.status for result in results] == [
        ItemStatus.inserted,  # the new detector 501
        ItemStatus.invalid,  # not an export
        ItemStatus.conflict,  # detector 0 renamed: nothing of the file is written
        ItemStatus.inserted,  # sees detector 501 written by the first file, same transaction
        ItemStatus.invalid,  # no such file
    ]
    assert results[0].dimension_records_inserted == 1
    assert results[1].reason
    assert "bogus.yaml" in results[1].reason
    assert results[2].reason
    assert "differs" in results[2].reason
    assert statuses(results[3].datasets) == [ItemStatus.inserted, ItemStatus.inserted]
    assert results[4].reason
    assert "absent.zip" in results[4].reason
    after = registry.stats()
    assert after.datasets == before.datasets + 2
    assert after.dimension_records["detector"] == before.dimension_records["detector"] + 1
    # Only the files that wrote something are logged, once each.
    assert sorted(_import_log_rows(registry)) == [
        ("dim_file", "adds-501.yaml"),
        ("dim_file", "prep.yaml"),
        ("zip_file", "needs-501.zip"),
    ]


def test_a_refused_export_leaves_nothing_for_later_files_or_batches(
    registry: SqlRegistry, datasets: DatasetFactory, samples_dir: Path, tmp_path: Path
) -> None:
    conflicting = _modified_prep(
        samples_dir, tmp_path / "conflicting.yaml", change_detector_0=True, add_detector=500
    )
    archive = write_butler_zip(tmp_path / "needs-500.zip", [datasets.calexp(500, run="HSC/runs/zipped")])
    results = registry.import_files([_dims(conflicting), _zip(archive)])
    assert [result.status for result in results] == [ItemStatus.conflict, ItemStatus.missing_dimensions]
    assert results[1].datasets[0].missing == ("detector:HSC/500",)
    # Neither the database nor the registry's caches hold the rolled-back detector.
    assert statuses(registry.register([datasets.calexp(500)])) == [ItemStatus.missing_dimensions]
    assert registry.stats().datasets == 0


def test_replay_changes_nothing(
    registry: SqlRegistry, datasets: DatasetFactory, samples_dir: Path, tmp_path: Path
) -> None:
    batch = _mixed_batch(samples_dir, tmp_path, datasets)
    first = registry.import_files(batch)
    stats = registry.stats()
    log = _import_log_rows(registry)
    again = registry.import_files(batch)
    assert [result.status for result in again] == [
        ItemStatus.already_present,
        ItemStatus.invalid,
        ItemStatus.conflict,
        ItemStatus.already_present,
        ItemStatus.invalid,
    ]
    assert statuses(again[3].datasets) == [ItemStatus.already_present] * 2
    assert again[0].dimension_records_present == first[0].dimension_records_inserted + (
        first[0].dimension_records_present
    )
    assert registry.stats() == stats
    assert _import_log_rows(registry) == log


def test_same_results_as_one_call_per_file(
    open_registry_at: Callable[[str], SqlRegistry],
    datasets: DatasetFactory,
    samples_dir: Path,
    tmp_path: Path,
) -> None:
    """Batched, file by file, and batched with the files read ahead (:meth:`SqlRegistry.read_import`)."""
    batch = _mixed_batch(samples_dir, tmp_path, datasets)
    batched, one_by_one, ahead = (open_registry_at(name) for name in ("batched", "one_by_one", "ahead"))
    read = [ahead.read_import(request) for request in batch]
    # Good files carry their reading; the unreadable and absent ones are read (and refused) in the call.
    assert [request.reading is not None for request in read] == [True, False, True, True, False]

    together = batched.import_files(batch)
    separately = Registry.import_files(one_by_one, batch)  # the interface's default: one call per file
    assert _shape(together) == _shape(separately)
    assert _shape(ahead.import_files(read)) == _shape(together)
    assert batched.stats() == one_by_one.stats() == ahead.stats()


def test_zip_items_fail_one_by_one_next_to_other_files(
    registry: SqlRegistry, datasets: DatasetFactory, tmp_path: Path
) -> None:
    taken = datasets.calexp(7)
    assert statuses(registry.register([taken])) == [ItemStatus.inserted]
    clashing = datasets.calexp(7)  # same data ID and run, another id
    mixed = write_butler_zip(tmp_path / "mixed.zip", [datasets.calexp(8), clashing])
    clean = write_butler_zip(tmp_path / "clean.zip", [datasets.calexp(9, run="HSC/runs/other")])
    results = registry.import_files([_zip(mixed), _zip(clean)])
    assert [result.status for result in results] == [ItemStatus.conflict, ItemStatus.inserted]
    assert statuses(results[0].datasets) == [ItemStatus.inserted, ItemStatus.conflict]
    assert registry.stats().datasets == 3


def test_zips_named_twice_or_sharing_a_dataset_settle_as_one_call_per_file(
    open_registry_at: Callable[[str], SqlRegistry], datasets: DatasetFactory, tmp_path: Path
) -> None:
    # A batch's zips are inserted by one statement: a dataset two of them name is offered once,
    # and the other zip compares with it exactly as it would in a transaction of its own.
    shared = datasets.calexp(11)
    first = write_butler_zip(tmp_path / "first.zip", [shared, datasets.calexp(12)])
    second = write_butler_zip(tmp_path / "second.zip", [shared, datasets.calexp(13)])
    batch = [_zip(first), _zip(second), _zip(first)]
    batched, one_by_one = open_registry_at("batched"), open_registry_at("one_by_one")

    together = batched.import_files(batch)
    separately = Registry.import_files(one_by_one, batch)

    assert [statuses(r.datasets) for r in together] == [statuses(r.datasets) for r in separately]
    assert statuses(together[0].datasets) == [ItemStatus.inserted] * 2
    assert statuses(together[2].datasets) == [ItemStatus.already_present] * 2
    assert together[1].datasets[1].status is ItemStatus.inserted
    assert batched.stats() == one_by_one.stats()


# -- exports of records only: settled together, without a savepoint each ------------------------


def _export(path: Path, elements: dict[str, list[dict[str, object]]]) -> Path:
    """A minimal Butler export of dimension records (prep.yaml's universe)."""
    document = {
        "description": "Butler Data Repository Export",
        "version": "1.0.2",
        "universe_version": 3,
        "universe_namespace": "daf_butler",
        "data": [
            {"type": "dimension", "element": element, "records": records}
            for element, records in elements.items()
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _detector(number: int, full_name: str | None = None) -> dict[str, object]:
    return {
        "instrument": "HSC",
        "id": number,
        "full_name": full_name or f"Z_{number}",
        "name_in_raft": "Z",
        "raft": "Z",
        "purpose": "SCIENCE",
    }


def _record_batch(tmp_path: Path) -> list[ImportRequest]:
    """Records-only exports that depend on each other within the batch, one conflicting, one doubled."""
    return [
        _dims(_export(tmp_path / "adds-502.yaml", {"detector": [_detector(502)]})),
        # detector 0 renamed: refused whole, so its new detector 503 is never written
        _dims(_export(tmp_path / "renames-0.yaml", {"detector": [_detector(0, "X_99"), _detector(503)]})),
        # 502 as the first file wrote it (same transaction), 504 new
        _dims(_export(tmp_path / "adds-504.yaml", {"detector": [_detector(502), _detector(504)]})),
        # HSC-Y is the registry's already, 505 new
        _dims(
            _export(
                tmp_path / "adds-505.yaml",
                {
                    "detector": [_detector(505)],
                    "physical_filter": [{"instrument": "HSC", "name": "HSC-Y", "band": "y"}],
                },
            )
        ),
        _dims(_export(tmp_path / "adds-502-again.yaml", {"detector": [_detector(502)]})),
    ]


def test_records_only_exports_settle_together_as_one_call_per_file(
    open_registry_at: Callable[[str], SqlRegistry], tmp_path: Path
) -> None:
    batch = _record_batch(tmp_path)
    batched, one_by_one = open_registry_at("batched"), open_registry_at("one_by_one")
    statements: list[str] = []
    sa.event.listen(
        batched.engine, "before_cursor_execute", lambda _c, _cu, statement, *_a: statements.append(statement)
    )

    together = batched.import_files(batch)
    separately = Registry.import_files(one_by_one, batch)
    assert _shape(together) == _shape(separately)
    assert [r.status for r in together] == [
        ItemStatus.inserted,
        ItemStatus.conflict,
        ItemStatus.inserted,
        ItemStatus.inserted,
        ItemStatus.already_present,
    ]
    assert batched.stats() == one_by_one.stats()
    # One insert for every file's records, and no savepoint at all.
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert len([s for s in statements if s.lstrip().upper().startswith("INSERT INTO DIMENSION_RECORD")]) == 1


def test_a_record_refused_in_a_group_leaves_nothing_behind(registry: SqlRegistry, tmp_path: Path) -> None:
    depends = _export(
        tmp_path / "region-on-503.yaml",
        {
            "detector": [_detector(506)],
            "visit_detector_region": [{"instrument": "HSC", "detector": 503, "visit": 330}],
        },
    )
    results = registry.import_files([*_record_batch(tmp_path)[:2], _dims(depends)])
    assert [r.status for r in results] == [
        ItemStatus.inserted,
        ItemStatus.conflict,
        ItemStatus.missing_dimensions,  # 503 came only with the refused file
    ]
    assert results[2].reason
    assert "detector:HSC/503" in results[2].reason
    detectors = registry.stats().dimension_records["detector"]
    again = registry.import_files(
        [_dims(_export(tmp_path / "adds-503.yaml", {"detector": [_detector(503)]}))]
    )
    assert again[0].status is ItemStatus.inserted  # neither the database nor a cache held 503
    assert registry.stats().dimension_records["detector"] == detectors + 1


@pytest.mark.parametrize("open_registry_at", ["postgresql"], indirect=True)
def test_a_concurrent_writer_storing_a_grouped_record_differently(
    registry: SqlRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group is rolled back and written file by file: only the file with that record is refused."""
    from butler_registry._dimensions import DimensionStore
    from butler_registry._records import canonical_record

    original = DimensionStore.insert
    raced: list[bool] = []

    def insert_after_a_rival(self: DimensionStore, connection: sa.Connection, records: list) -> set:  # type: ignore[type-arg]
        if not raced:
            raced.append(True)
            rival = canonical_record(registry.universe, "detector", _detector(502, "RIVAL"))
            with registry.engine.begin() as other:
                original(self, other, [rival])
        return original(self, connection, records)

    monkeypatch.setattr(DimensionStore, "insert", insert_after_a_rival)
    batch = [
        _dims(_export(tmp_path / "adds-502.yaml", {"detector": [_detector(502)]})),
        _dims(_export(tmp_path / "adds-507.yaml", {"detector": [_detector(507)]})),
    ]
    results = registry.import_files(batch)
    assert [r.status for r in results] == [ItemStatus.conflict, ItemStatus.inserted]
    assert results[0].reason
    assert "differs" in results[0].reason
    assert results[1].dimension_records_inserted == 1


def test_the_interface_reads_nothing_ahead(registry: SqlRegistry, tmp_path: Path) -> None:
    request = _dims(tmp_path / "any.yaml")
    assert Registry.read_import(registry, request) is request
