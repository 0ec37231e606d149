"""The synthetic campaign the benchmark and tests register: realistic, reproducible, lazy."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from butler_registry.daf.synthetic import DATASETS_PER_EXPOSURE_PER_DETECTOR, SyntheticCampaign


def test_sized_for_holds_enough() -> None:
    campaign = SyntheticCampaign.sized_for(20_000)
    assert campaign.capacity >= 20_000
    assert campaign.capacity - 20_000 < campaign.detectors * DATASETS_PER_EXPOSURE_PER_DETECTOR + 1
    with pytest.raises(ValueError, match="holds"):
        next(SyntheticCampaign(exposures=1, detectors=2).datasets(100))


def test_datasets_are_reproducible_and_distinct_per_tag() -> None:
    campaign = SyntheticCampaign(exposures=2, detectors=4)
    first = list(campaign.datasets(campaign.capacity, tag="a"))
    again = list(campaign.datasets(campaign.capacity, tag="a"))
    other = list(campaign.datasets(campaign.capacity, tag="b"))
    assert [r.id for r in first] == [r.id for r in again]
    assert len({r.id for r in first}) == len(first) == campaign.capacity
    assert not {r.id for r in first} & {r.id for r in other}
    keys = {(r.dataset_type.name, r.run, tuple(sorted(r.data_id.items()))) for r in first + other}
    assert len(keys) == 2 * campaign.capacity, "one dataset per (type, data ID) in a run"
    assert {r.dataset_type.name for r in first} == {"raw", "calexp", "src", "visitSummary"}


def test_files_carry_their_own_size_and_checksum(tmp_path: Path) -> None:
    campaign = SyntheticCampaign(exposures=1, detectors=2)
    records = list(campaign.datasets(5, tag="f", file_root=tmp_path, write_files=True))
    assert len(records) == 5
    for record in records:
        assert record.file is not None
        content = Path(record.file.path).read_bytes()
        assert record.file.size == len(content)
        assert record.file.adler32 == f"{zlib.adler32(content):08x}"


def test_every_data_id_has_its_dimension_records() -> None:
    campaign = SyntheticCampaign(exposures=3, detectors=5)
    records = campaign.dimension_records()
    exposures = {row["id"] for row in records["exposure"]}
    visits = {row["id"] for row in records["visit"]}
    detectors = {row["id"] for row in records["detector"]}
    filters = {row["name"] for row in records["physical_filter"]}
    for record in campaign.datasets(campaign.capacity, tag="d"):
        data_id = record.data_id
        assert data_id.get("exposure", next(iter(exposures))) in exposures
        assert data_id.get("visit", next(iter(visits))) in visits
        assert data_id.get("detector", 0) in detectors
        assert data_id["physical_filter"] in filters


@pytest.mark.butler
def test_export_imports_into_a_real_butler(tmp_path: Path, make_repo) -> None:
    from lsst.daf.butler import Butler

    campaign = SyntheticCampaign(exposures=2, detectors=3)
    export = campaign.write_export(tmp_path / "dims.yaml")
    butler = Butler.from_config(str(make_repo("synthetic")), writeable=True)
    butler.import_(filename=str(export))
    assert len(butler.query_dimension_records("exposure", instrument="LSSTCam")) == 2
    assert len(butler.query_dimension_records("detector", instrument="LSSTCam")) == 3
    assert butler.query_dimension_records("visit", instrument="LSSTCam")[0].day_obs == campaign.day_obs
