"""``import_zip`` through the adapter, with zips written by the real ``Butler.retrieve_artifacts_zip``."""

from __future__ import annotations

from pathlib import Path

import pytest

from butler_registry.daf import DafButlerRegistry, DafButlerSettings
from butler_registry.interface import ItemStatus

from .conftest import ButlerZip, FileFactory, dataset, open_butler

pytestmark = pytest.mark.butler


def test_zip_registers_every_dataset_once(
    hsc_registry: DafButlerRegistry, sqlite_repo: Path, butler_zip: ButlerZip
) -> None:
    result = hsc_registry.import_zip(butler_zip.path)
    assert result.status is ItemStatus.inserted, result
    assert {item.dataset_id for item in result.datasets} == {ref.id for ref in butler_zip.refs}
    assert {item.status for item in result.datasets} == {ItemStatus.inserted}

    butler = open_butler(sqlite_repo)
    for ref in butler_zip.refs:
        found = butler.get_dataset(ref.id)
        assert found is not None
        assert found.run == ref.run
        assert dict(found.dataId.required) == dict(ref.dataId.required)
        assert butler.getURI(found).fragment.startswith("zip-path="), "datasets are read from inside the zip"

    again = hsc_registry.import_zip(butler_zip.path)
    assert again.status is ItemStatus.already_present
    assert {item.status for item in again.datasets} == {ItemStatus.already_present}


def test_zip_waiting_for_dimension_records(daf_registry: DafButlerRegistry, butler_zip: ButlerZip) -> None:
    result = daf_registry.import_zip(butler_zip.path)
    assert result.status is ItemStatus.missing_dimensions
    assert "instrument:HSC" in (result.reason or "")
    assert {item.status for item in result.datasets} == {ItemStatus.missing_dimensions}


def test_zip_partly_registered_is_refused_whole(
    hsc_registry: DafButlerRegistry, butler_zip: ButlerZip, files: FileFactory, sqlite_repo: Path
) -> None:
    first = butler_zip.refs[0]
    record = dataset(files("pre.fits"), dataset_id=first.id, run=first.run)
    assert hsc_registry.register([record]).items[0].status is ItemStatus.inserted
    result = hsc_registry.import_zip(butler_zip.path)
    assert result.status is ItemStatus.conflict
    assert "partially" in (result.reason or "")
    butler = open_butler(sqlite_repo)
    assert all(butler.get_dataset(ref.id) is None for ref in butler_zip.refs[1:])


def test_not_a_zip(daf_registry: DafButlerRegistry, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"PK but not really")
    result = daf_registry.import_zip(bogus)
    assert result.status is ItemStatus.invalid
    assert "bogus.zip" in (result.reason or "")


def test_zip_into_a_repository_opened_by_settings(
    sqlite_repo: Path, samples_dir: Path, butler_zip: ButlerZip
) -> None:
    with DafButlerRegistry.open(str(sqlite_repo), transfer="direct") as registry:
        assert registry.import_dimensions(samples_dir / "prep.yaml").status is ItemStatus.inserted
        assert registry.import_zip(butler_zip.path).status is ItemStatus.inserted
    assert isinstance(registry, DafButlerRegistry)
    assert DafButlerSettings(repo=str(sqlite_repo)).transfer == "direct"
