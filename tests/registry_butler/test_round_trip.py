"""Round trips between our SQL registry and the real Butler (lsst-daf-butler), both directions.

* Ours → Butler: a repository made by ``butler create`` on PostgreSQL takes our
  export with ``butler import``, and the real Butler finds every dataset id with the
  same dataset type, run, data ID and file.
* Butler → ours: sidecars written by the real ``DatasetRef.to_json()`` (plain and
  expanded, v7 UUIDs), decoded by the daemon's own decoder (``ingestd.events``),
  register in ours with identical ids and data IDs; a zip written
  by the real ``Butler.retrieve_artifacts_zip`` imports through ``import_zip``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from butler_registry.daf import DafButlerRegistry, ensure_btree_gist
from butler_registry.interface import DatasetRecord, DatasetTypeSpec, ItemStatus
from ingestd.events import decode_sidecar

from .conftest import (
    CALEXP,
    VISIT_SUMMARY,
    ButlerZip,
    FileFactory,
    exported_datasets,
    import_samples,
    open_butler,
)

pytestmark = pytest.mark.butler

RAW = DatasetTypeSpec("raw", ("instrument", "detector", "exposure"), "Exposure")
BUTLER = str(Path(sys.executable).with_name("butler"))
"""The real ``butler`` command of this environment."""


def _butler_cli(*arguments: str) -> None:
    completed = subprocess.run([BUTLER, *arguments], capture_output=True, text=True, check=False, timeout=300)
    assert completed.returncode == 0, f"butler {' '.join(arguments)} failed:\n{completed.stderr[-4000:]}"


def _campaign_in_ours(files: FileFactory) -> list[DatasetRecord]:
    """Datasets of three types in two runs, with the implied values a sidecar carries."""
    implied = {"band": "y", "physical_filter": "HSC-Y"}
    records = [
        DatasetRecord(
            id=uuid.uuid4(),
            dataset_type=VISIT_SUMMARY,
            run="HSC/runs/RC2/w_2025_10",
            data_id={"instrument": "HSC", "visit": 330, **implied},
            file=files("export/visitSummary.fits"),
        )
    ]
    for detector in range(0, 12, 3):
        records.append(
            DatasetRecord(
                id=uuid.uuid4(),
                dataset_type=CALEXP,
                run="HSC/runs/RC2/w_2025_10",
                data_id={"instrument": "HSC", "visit": 330, "detector": detector, **implied},
                file=files(f"export/calexp_{detector}.fits"),
            )
        )
        records.append(
            DatasetRecord(
                id=uuid.uuid4(),
                dataset_type=RAW,
                run="HSC/raw/all",
                data_id={"instrument": "HSC", "exposure": 330, "detector": detector},
                file=files(f"export/raw_{detector}.fits"),
            )
        )
    return records


@pytest.mark.postgres
def test_butler_create_on_postgres_imports_our_export(
    our_registry: Any,
    files: FileFactory,
    postgres_database: str,
    formatters: dict[str, str],
    tmp_path: Path,
) -> None:
    records = _campaign_in_ours(files)
    result = our_registry.register(records)
    assert {item.status for item in result.items} == {ItemStatus.inserted}, result
    export = tmp_path / "ours-export.yaml"
    with open(export, "w", encoding="utf-8") as stream:
        summary = our_registry.export(stream)
    assert summary.datasets == len(records)

    ensure_btree_gist(postgres_database)
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        yaml.safe_dump({"registry": {"db": postgres_database}, "datastore": {"formatters": formatters}})
    )
    repo = tmp_path / "butler-create-repo"
    _butler_cli("create", "--seed-config", str(seed), str(repo))
    _butler_cli("import", str(repo), str(files.root), "--export-file", str(export), "--transfer", "direct")

    butler = open_butler(repo)
    for record in records:
        ref = butler.get_dataset(record.id)
        assert ref is not None, f"{record.id} ({record.dataset_type.name}) missing after butler import"
        assert ref.datasetType.name == record.dataset_type.name
        assert ref.datasetType.storageClass_name == record.dataset_type.storage_class
        assert ref.run == record.run
        required = {name: record.data_id[name] for name in ref.datasetType.dimensions.required}
        assert dict(ref.dataId.required) == required
        assert record.file is not None
        assert butler.getURI(ref).ospath == record.file.path
    expanded = butler.get_dataset(records[1].id, dimension_records=True)
    assert expanded is not None
    assert expanded.dataId["band"] == "y", "implied values come back from the imported records"


def _real_refs(butler: Any) -> list[Any]:
    """Refs built with the real universe: plain and expanded data IDs, v7 UUIDs by default."""
    from lsst.daf.butler import DataCoordinate, DatasetRef, DatasetType

    universe = butler.dimensions
    summary = DatasetType("visitSummary", ["instrument", "visit"], "ExposureCatalog", universe=universe)
    calexp = DatasetType("calexp", ["instrument", "visit", "detector"], "ExposureF", universe=universe)
    raw = DatasetType("raw", ["instrument", "detector", "exposure"], "Exposure", universe=universe)
    run = "HSC/runs/sidecars"
    refs = [
        DatasetRef(
            summary, DataCoordinate.standardize(instrument="HSC", visit=330, universe=universe), run=run
        ),
        DatasetRef(
            summary, butler.registry.expandDataId(instrument="HSC", visit=330), run="HSC/runs/expanded"
        ),
    ]
    for detector in (0, 5, 111):
        refs.append(
            DatasetRef(
                calexp,
                butler.registry.expandDataId(instrument="HSC", visit=330, detector=detector),
                run=run,
            )
        )
        refs.append(
            DatasetRef(
                raw,
                DataCoordinate.standardize(
                    instrument="HSC", exposure=330, detector=detector, universe=universe
                ),
                run="HSC/raw/all",
            )
        )
    return refs


def test_real_sidecars_register_in_ours_with_identical_ids_and_data_ids(
    our_registry: Any, make_repo: Any, samples_dir: Path, files: FileFactory, tmp_path: Path
) -> None:
    butler = open_butler(make_repo("sidecar-source"), writeable=True)
    import_samples(butler, samples_dir)
    refs = _real_refs(butler)
    assert {ref.id.version for ref in refs} == {7}, "current Butlers write v7 UUIDs"
    records = [
        decode_sidecar(ref.to_json()).to_record(file=files(f"sidecar/{index}.fits"))
        for index, ref in enumerate(refs)
    ]
    assert any(record.dimension_records for record in records), "expanded refs embed their records"

    first = our_registry.register(records)
    assert [item.status for item in first.items] == [ItemStatus.inserted] * len(refs), first
    assert [item.dataset_id for item in first.items] == [ref.id for ref in refs]
    replay = our_registry.register(records)
    assert {item.status for item in replay.items} == {ItemStatus.already_present}

    exported = exported_datasets(our_registry, butler, tmp_path)
    for ref in refs:
        dataset_type, run, data_id = exported[ref.id]
        assert (dataset_type, run) == (ref.datasetType.name, ref.run)
        assert {name: data_id[name] for name in ref.dataId.required} == dict(ref.dataId.required)
        if ref.dataId.hasFull():
            implied = {name: data_id[name] for name in ref.dataId.dimensions.implied if name in data_id}
            assert implied == {name: ref.dataId[name] for name in implied}


def test_real_sidecars_register_alike_through_the_adapter(
    hsc_registry: DafButlerRegistry, sqlite_repo: Path, make_repo: Any, samples_dir: Path, files: FileFactory
) -> None:
    """The same sidecars through the daf_butler adapter: the real Butler ends with the same refs."""
    source = open_butler(make_repo("sidecar-source-2"), writeable=True)
    import_samples(source, samples_dir)
    refs = _real_refs(source)
    records = [
        decode_sidecar(ref.to_json()).to_record(file=files(f"adapter/{i}.fits")) for i, ref in enumerate(refs)
    ]
    result = hsc_registry.register(records)
    assert [item.status for item in result.items] == [ItemStatus.inserted] * len(refs), result
    target = open_butler(sqlite_repo)
    for ref in refs:
        found = target.get_dataset(ref.id)
        assert found is not None
        assert found.run == ref.run
        assert dict(found.dataId.required) == dict(ref.dataId.required)


def test_real_butler_zip_imports_into_ours(
    our_registry: Any, butler_zip: ButlerZip, make_repo: Any, samples_dir: Path, tmp_path: Path
) -> None:
    result = our_registry.import_zip(butler_zip.path)
    assert result.status is ItemStatus.inserted, result
    assert {item.dataset_id for item in result.datasets} == {ref.id for ref in butler_zip.refs}
    again = our_registry.import_zip(butler_zip.path)
    assert again.status is ItemStatus.already_present, again

    reader = open_butler(make_repo("zip-reader"))
    exported = exported_datasets(our_registry, reader, tmp_path)
    for ref in butler_zip.refs:
        dataset_type, run, data_id = exported[ref.id]
        assert (dataset_type, run) == (ref.datasetType.name, ref.run)
        assert {name: data_id[name] for name in ref.dataId.required} == dict(ref.dataId.required)
