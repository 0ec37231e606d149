"""The adapter over the real Butler: per-item statuses out of an all-or-nothing ``Butler.ingest``.

Every assertion on what was written is checked through a separate, freshly opened
real ``Butler`` on the same repository, not through the adapter.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest

from butler_registry.daf import DafButlerRegistry, DafButlerSettings
from butler_registry.interface import (
    DatasetRecord,
    DatasetTypeSpec,
    FileInfo,
    ItemStatus,
    RegistryConfigurationError,
)

from .conftest import CALEXP, HSC_RUN, FileFactory, dataset

pytestmark = pytest.mark.butler


def _butler(repo: Path):
    from lsst.daf.butler import Butler

    return Butler.from_config(str(repo))


def test_register_then_replay(hsc_registry: DafButlerRegistry, sqlite_repo: Path, files: FileFactory) -> None:
    record = dataset(files("vs.fits"), band="y", physical_filter="HSC-Y")
    first = hsc_registry.register([record])
    assert [item.status for item in first.items] == [ItemStatus.inserted]
    again = hsc_registry.register([record])
    assert [item.status for item in again.items] == [ItemStatus.already_present]

    butler = _butler(sqlite_repo)
    ref = butler.get_dataset(record.id)
    assert ref is not None
    assert ref.datasetType.name == "visitSummary"
    assert ref.run == HSC_RUN
    assert dict(ref.dataId.required) == {"instrument": "HSC", "visit": 330}
    assert butler.getURI(ref).ospath == record.file.path  # type: ignore[union-attr]  # direct: left in place


def test_one_bad_item_does_not_fail_the_batch(
    hsc_registry: DafButlerRegistry, sqlite_repo: Path, files: FileFactory
) -> None:
    good = [dataset(files(f"calexp{d}.fits"), spec=CALEXP, detector=d) for d in range(6)]
    present = dataset(files("present.fits"))
    assert hsc_registry.register([present]).items[0].status is ItemStatus.inserted
    missing_visit = dataset(files("m.fits"), spec=CALEXP, visit=999, detector=1)
    missing_detector = dataset(files("d.fits"), spec=CALEXP, detector=9999)
    other_run = dataset(files("o.fits"), dataset_id=present.id, run="somewhere/else")
    same_key_other_id = dataset(files("k.fits"))
    no_such_file = dataset(FileInfo(path=str(files.root / "absent.fits")), spec=CALEXP, detector=7)
    lacks_visit = DatasetRecord(
        id=uuid.uuid4(), dataset_type=CALEXP, run=HSC_RUN, data_id={"instrument": "HSC", "detector": 1}
    )
    batch = [
        good[0],
        missing_visit,
        good[1],
        other_run,
        good[2],
        same_key_other_id,
        good[3],
        no_such_file,
        good[4],
        missing_detector,
        lacks_visit,
        present,
        good[5],
    ]
    result = hsc_registry.register(batch)
    statuses = [item.status for item in result.items]
    assert statuses == [
        ItemStatus.inserted,
        ItemStatus.missing_dimensions,
        ItemStatus.inserted,
        ItemStatus.conflict,
        ItemStatus.inserted,
        ItemStatus.conflict,
        ItemStatus.inserted,
        ItemStatus.invalid,
        ItemStatus.inserted,
        ItemStatus.missing_dimensions,
        ItemStatus.invalid,
        ItemStatus.already_present,
        ItemStatus.inserted,
    ]
    assert [item.dataset_id for item in result.items] == [record.id for record in batch]
    assert result.items[1].missing == ("visit:HSC/999",)
    assert result.items[9].missing == ("detector:HSC/9999",)
    assert "somewhere/else" in (result.items[3].reason or "")
    assert "absent.fits" in (result.items[7].reason or "")
    assert "visit" in (result.items[10].reason or "")

    butler = _butler(sqlite_repo)
    for record in [*good, present]:
        assert butler.get_dataset(record.id) is not None
    for record in (missing_visit, missing_detector, same_key_other_id, no_such_file, lacks_visit):
        assert butler.get_dataset(record.id) is None
    existing = butler.get_dataset(present.id)
    assert existing is not None
    assert existing.run == HSC_RUN


def test_whole_batch_waiting_for_dimensions_is_found_without_bisecting(
    hsc_registry: DafButlerRegistry, files: FileFactory
) -> None:
    batch = [dataset(files(f"w{d}.fits"), spec=CALEXP, visit=1234, detector=d) for d in range(40)]
    result = hsc_registry.register(batch)
    assert {item.status for item in result.items} == {ItemStatus.missing_dimensions}
    assert {item.missing for item in result.items} == {("visit:HSC/1234",)}


def test_same_id_with_another_file_is_a_conflict(hsc_registry: DafButlerRegistry, files: FileFactory) -> None:
    record = dataset(files("first.fits"))
    assert hsc_registry.register([record]).items[0].status is ItemStatus.inserted
    moved = dataclasses.replace(record, file=files("elsewhere.fits"))
    result = hsc_registry.register([moved]).items[0]
    assert result.status is ItemStatus.conflict
    assert "elsewhere.fits" in (result.reason or "")


def test_duplicates_inside_a_batch(hsc_registry: DafButlerRegistry, files: FileFactory) -> None:
    record = dataset(files("dup.fits"))
    changed = dataclasses.replace(record, run="another/run")
    result = hsc_registry.register([record, record, changed])
    assert [item.status for item in result.items] == [
        ItemStatus.inserted,
        ItemStatus.already_present,
        ItemStatus.conflict,
    ]


def test_dataset_type_defined_otherwise_is_a_conflict(
    hsc_registry: DafButlerRegistry, files: FileFactory
) -> None:
    assert hsc_registry.register([dataset(files("a.fits"))]).items[0].status is ItemStatus.inserted
    redefined = DatasetTypeSpec("visitSummary", ("instrument", "visit", "detector"), "ExposureCatalog")
    clash = dataset(files("b.fits"), spec=redefined, detector=3, run="r2")
    fine = dataset(files("c.fits"), spec=CALEXP, detector=3, run="r2")
    result = hsc_registry.register([clash, fine])
    assert [item.status for item in result.items] == [ItemStatus.conflict, ItemStatus.inserted]
    assert "visitSummary" in (result.items[0].reason or "")


def test_values_are_normalised_and_checked(hsc_registry: DafButlerRegistry, files: FileFactory) -> None:
    as_text = dataset(files("t.fits"), spec=CALEXP, visit="330", detector="4")
    not_a_number = dataset(files("n.fits"), spec=CALEXP, visit="three-thirty", detector=4)
    unknown_dimension = dataset(
        files("u.fits"), spec=DatasetTypeSpec("weird", ("instrument", "nonsense"), "StructuredDataDict")
    )
    component = dataset(files("c.fits"), spec=DatasetTypeSpec("calexp.wcs", ("instrument", "visit"), "Wcs"))
    without_file = dataset(None, spec=CALEXP, detector=5)
    result = hsc_registry.register([as_text, not_a_number, unknown_dimension, component, without_file])
    assert [item.status for item in result.items] == [
        ItemStatus.inserted,
        ItemStatus.invalid,
        ItemStatus.invalid,
        ItemStatus.invalid,
        ItemStatus.invalid,
    ]
    assert "nonsense" in (result.items[2].reason or "")
    assert "no file" in (result.items[4].reason or "")


def _count_ingest_calls(registry: DafButlerRegistry, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every real ``Butler.ingest`` call the adapter makes."""
    butler = registry._connect()
    real_ingest = butler.ingest
    calls: list[int] = []

    def counted(*datasets: Any, **options: Any) -> None:
        calls.append(len(datasets))
        real_ingest(*datasets, **options)

    monkeypatch.setattr(butler, "ingest", counted)
    return calls


def test_unimportable_formatter_is_reported_per_item(
    hsc_registry: DafButlerRegistry, files: FileFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_ingest_calls(hsc_registry, monkeypatch)
    good = [dataset(files(f"g{d}.fits"), spec=CALEXP, detector=d) for d in range(8)]
    bad = [
        dataset(
            dataclasses.replace(files(f"f{d}.fits"), formatter="lsst.obs.nowhere.NoFormatter"),
            spec=CALEXP,
            detector=20 + d,
        )
        for d in range(8)
    ]
    result = hsc_registry.register([item for pair in zip(good, bad, strict=True) for item in pair])
    assert [item.status for item in result.items] == [ItemStatus.inserted, ItemStatus.invalid] * 8
    assert all("formatter" in (item.reason or "") for item in result.items[1::2])
    assert len(calls) < 16, f"one failed import marks the others alike, not a bisection each: {calls}"


def test_batch_of_absent_files_is_found_in_one_pass(
    hsc_registry: DafButlerRegistry, files: FileFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_ingest_calls(hsc_registry, monkeypatch)
    absent = [
        dataset(FileInfo(path=str(files.root / f"gone{d}.fits")), spec=CALEXP, detector=d) for d in range(50)
    ]
    present = dataset(files("here.fits"), spec=CALEXP, detector=60)
    result = hsc_registry.register([*absent, present])
    assert [item.status for item in result.items] == [ItemStatus.invalid] * 50 + [ItemStatus.inserted]
    assert "gone7.fits" in (result.items[7].reason or "")
    assert calls == [51, 1]


def test_expanded_sidecar_brings_its_dimension_records(
    daf_registry: DafButlerRegistry, files: FileFactory
) -> None:
    """An expanded sidecar registers into a repository that has none of its records yet."""
    from lsst.daf.butler import DataCoordinate, DatasetRef, DatasetType

    from ingestd.events import decode_sidecar

    source = _source_butler_with_hsc(daf_registry)
    dataset_type = DatasetType(
        "visitSummary", ["instrument", "visit"], "ExposureCatalog", universe=source.dimensions
    )
    data_id = source.registry.expandDataId({"instrument": "HSC", "visit": 330})
    ref = DatasetRef(dataset_type, DataCoordinate.standardize(data_id), run="expanded/run")
    record = decode_sidecar(ref.to_json()).to_record(file=files("e.fits"))
    assert record.dimension_records is not None
    assert "visit" in record.dimension_records

    empty = daf_registry
    result = empty.register([record])
    assert [item.status for item in result.items] == [ItemStatus.inserted], result
    assert empty.register([record]).items[0].status is ItemStatus.already_present

    tampered_visit = dict(record.dimension_records["visit"][0], exposure_time=1.0)
    tampered = dataclasses.replace(
        record,
        id=uuid.uuid4(),
        run="other/run",
        dimension_records={**record.dimension_records, "visit": [tampered_visit]},
    )
    clash = empty.register([tampered]).items[0]
    assert clash.status is ItemStatus.conflict
    assert "visit:HSC/330" in (clash.reason or "")


def _source_butler_with_hsc(registry: DafButlerRegistry):
    """A second repository (beside the registry's) holding the sample's HSC records."""
    from lsst.daf.butler import Butler

    from butler_registry.daf import create_butler_repo

    root = Path(registry.settings.repo).parent / "source-repo"
    create_butler_repo(root)
    butler = Butler.from_config(str(root), writeable=True)
    samples = Path(__file__).parents[1] / "data" / "samples" / "prep.yaml"
    with pytest.warns(UserWarning, match="day_obs"):
        butler.import_(filename=str(samples))
    return butler


def test_import_dimensions_counts_and_conflicts(
    daf_registry: DafButlerRegistry, sqlite_repo: Path, samples_dir: Path, tmp_path: Path
) -> None:
    export = samples_dir / "prep.yaml"
    first = daf_registry.import_dimensions(export)
    assert first.status is ItemStatus.inserted
    assert first.dimension_records_inserted > 100
    assert first.dimension_records_present == 0
    again = daf_registry.import_dimensions(export)
    assert again.status is ItemStatus.already_present
    assert again.dimension_records_inserted == 0
    assert again.dimension_records_present == first.dimension_records_inserted

    text = export.read_text()
    # One existing detector renamed, one new detector added after it: the new one must not land.
    first_detector = "  - instrument: HSC\n    id: 0\n    full_name: '1_53'\n"
    assert first_detector in text
    text = text.replace(
        first_detector,
        "  - instrument: HSC\n    id: 500\n    full_name: new_one\n"
        "  - instrument: HSC\n    id: 0\n    full_name: renamed\n",
        1,
    )
    changed = tmp_path / "changed.yaml"
    changed.write_text(text)
    result = daf_registry.import_dimensions(changed)
    assert result.status is ItemStatus.conflict
    assert "detector:HSC/0" in (result.reason or "")
    butler = _butler(sqlite_repo)
    names = {
        record.id: record.full_name for record in butler.query_dimension_records("detector", instrument="HSC")
    }
    assert 500 not in names, "nothing of a conflicting file is written"
    assert names[0] == "1_53"


def test_import_dimensions_of_a_broken_file(daf_registry: DafButlerRegistry, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("description: Butler Data Repository Export\nversion: 9.0.0\ndata: []\n")
    result = daf_registry.import_dimensions(broken)
    assert result.status is ItemStatus.invalid
    assert "broken.yaml" in (result.reason or "")


def test_missing_repository_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryConfigurationError, match="nowhere"):
        DafButlerRegistry.open(str(tmp_path / "nowhere"))


def test_ping_and_stats(hsc_registry: DafButlerRegistry, files: FileFactory) -> None:
    hsc_registry.ping()
    hsc_registry.register([dataset(files("s1.fits")), dataset(files("s2.fits"), spec=CALEXP, detector=2)])
    stats = hsc_registry.stats()
    assert stats.datasets == 2
    assert stats.runs == 1
    assert stats.dataset_types == 2
    assert stats.dimension_records["detector"] == 112
    assert stats.dimension_records["visit"] == 1
    assert "daf_butler" in stats.schema_version


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTD_DAF_BUTLER_REPO", " /repo/main ")
    monkeypatch.setenv("INGESTD_DAF_BUTLER_TRANSFER", "copy")
    settings = DafButlerSettings()  # repo comes from the environment
    assert settings.repo == "/repo/main"
    assert settings.transfer == "copy"
    with pytest.raises(ValueError, match="extra"):
        DafButlerSettings(repo="/r", colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="transfer"):
        DafButlerSettings(repo="/r", transfer="teleport")


def test_current_universe_campaign(
    daf_registry: DafButlerRegistry, sqlite_repo: Path, tmp_path: Path
) -> None:
    """Records exported by the current daf_butler (day_obs, group) and raws that need them."""
    from butler_registry.daf.synthetic import SyntheticCampaign

    campaign = SyntheticCampaign(exposures=2, detectors=4)
    imported = daf_registry.import_dimensions(campaign.write_export(tmp_path / "campaign.yaml"))
    assert imported.status is ItemStatus.inserted
    records = list(campaign.datasets(campaign.capacity, tag="t", file_root=tmp_path / "f", write_files=True))
    result = daf_registry.register(records)
    assert {item.status for item in result.items} == {ItemStatus.inserted}
    butler = _butler(sqlite_repo)
    raw = next(record for record in records if record.dataset_type.name == "raw")
    found = butler.get_dataset(raw.id, dimension_records=True)
    assert found is not None
    assert found.dataId["group"] == f"{campaign.day_obs}T00000"
    assert found.dataId["day_obs"] == campaign.day_obs
