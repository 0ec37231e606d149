"""The registry contract as tests, for every implementation of :class:`Registry`.

Subclass :class:`RegistryContract` and provide an ``empty_registry`` fixture that yields a
fresh, empty registry; every test then receives ``registry``, the same registry with the
dimension records of ``samples/prep.yaml`` (HSC, visit/exposure 330, detectors 0-111)
imported through the interface. Nothing here knows which implementation runs::

    from tests.registry.contract import RegistryContract

    class TestMine(RegistryContract):
        @pytest.fixture
        def empty_registry(self, tmp_path):
            with open_my_registry(tmp_path) as registry:
                yield registry

Datasets point at real files under ``tmp_path`` (with sizes and adler32 checksums), so a
registry that checks or ingests files (the real Butler's datastore) can run the same
tests. Storage classes are the ones of ``butler_registry.daf.synthetic`` (ExposureF,
ExposureCatalog, Exposure).
"""

from __future__ import annotations

import json
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from butler_registry.interface import (
    DatasetRecord,
    DatasetTypeSpec,
    FileInfo,
    ItemResult,
    ItemStatus,
    Provenance,
    RegisterResult,
    Registry,
)

__all__ = [
    "CALEXP",
    "HSC_RUN",
    "RAW",
    "VISIT_SUMMARY",
    "DatasetFactory",
    "RegistryContract",
    "statuses",
    "write_butler_zip",
]

CALEXP = DatasetTypeSpec("calexp", ("instrument", "visit", "detector"), "ExposureF")
VISIT_SUMMARY = DatasetTypeSpec(
    "visitSummary", ("band", "instrument", "physical_filter", "visit"), "ExposureCatalog"
)
"""Listed as a sidecar lists it: the whole dimension group (required instrument, visit)."""
RAW = DatasetTypeSpec("raw", ("instrument", "detector", "exposure"), "Exposure")
HSC_RUN = "HSC/runs/RC2/w_2023_32/DM-40356/20230814T170253Z"

VISIT = 330
"""The visit (and exposure) of prep.yaml; its band is y, its physical_filter HSC-Y."""
ABSENT_VISIT = 328
"""A visit prep.yaml has no record of."""


def statuses(result: RegisterResult | Sequence[ItemResult]) -> list[ItemStatus]:
    """The statuses of a result, in batch order."""
    items = result.items if isinstance(result, RegisterResult) else result
    return [item.status for item in items]


@dataclass
class DatasetFactory:
    """Makes datasets of the prep.yaml universe, each with a small real file."""

    root: Path
    run: str = HSC_RUN
    _serial: int = field(default=0, init=False)

    def file(self, name: str) -> FileInfo:
        """A new file under ``root`` with its size and adler32."""
        self._serial += 1
        path = self.root / "files" / f"{self._serial:06d}-{name}.fits"
        path.parent.mkdir(parents=True, exist_ok=True)
        content = f"{name} {self._serial}\n".encode()
        path.write_bytes(content)
        return FileInfo(path=str(path), size=len(content), adler32=f"{zlib.adler32(content):08x}")

    def calexp(
        self, detector: int, *, visit: int = VISIT, run: str | None = None, **data_id: Any
    ) -> DatasetRecord:
        """A calexp of ``visit``/``detector``, with the implied band and physical_filter a sidecar carries."""
        values: dict[str, Any] = {"instrument": "HSC", "visit": visit, "detector": detector}
        if visit == VISIT:
            values.update(band="y", physical_filter="HSC-Y")
        values.update(data_id)
        return DatasetRecord(
            id=uuid.uuid4(),
            dataset_type=CALEXP,
            run=run or self.run,
            data_id=values,
            file=self.file(f"calexp-{visit}-{detector}"),
            provenance=Provenance(
                source="kafka", topic="IN2P3_BUTLER_DISK-test", partition=0, offset=self._serial
            ),
        )

    def calexps(self, detectors: Sequence[int], **kwargs: Any) -> list[DatasetRecord]:
        """One calexp per detector."""
        return [self.calexp(detector, **kwargs) for detector in detectors]

    def visit_summary(self, *, visit: int = VISIT, run: str | None = None) -> DatasetRecord:
        """A visitSummary, typed with its whole dimension group as sidecars do."""
        return DatasetRecord(
            id=uuid.uuid4(),
            dataset_type=VISIT_SUMMARY,
            run=run or self.run,
            data_id={"instrument": "HSC", "visit": visit, "band": "y", "physical_filter": "HSC-Y"},
            file=self.file(f"visitSummary-{visit}"),
        )

    def raw(self, detector: int, *, run: str = "HSC/raw/all") -> DatasetRecord:
        """A raw of exposure 330."""
        return DatasetRecord(
            id=uuid.uuid4(),
            dataset_type=RAW,
            run=run,
            data_id={
                "instrument": "HSC",
                "exposure": VISIT,
                "detector": detector,
                "physical_filter": "HSC-Y",
            },
            file=self.file(f"raw-{detector}"),
        )


def write_butler_zip(path: Path, records: Sequence[DatasetRecord], *, universe_version: int = 8) -> Path:
    """Write a zip the way ``Butler.retrieve_artifacts_zip`` lays it out.

    One member per dataset, named ``<id prefix>-<file name>``, and
    ``_butler_zip_index.json``: a V1 ``ZipIndex`` with a V1 ref container
    (``dataset_types``, ``compact_refs``) and an ``artifact_map`` of datastore records.
    Dataset types list their required dimensions, as daf_butler's ``to_simple`` does.
    Dimension records are not attached (the registry must already have them).
    """
    from butler_registry.universe import default_universe

    universe = default_universe()
    dataset_types: dict[str, Any] = {}
    compact_refs: dict[str, Any] = {}
    artifact_map: dict[str, Any] = {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for record in records:
            spec = record.dataset_type
            dataset_types[spec.name] = {
                "name": spec.name,
                "storageClass": spec.storage_class,
                "dimensions": list(universe.required_dimensions(spec.dimensions)),
                "parentStorageClass": None,
                "isCalibration": False,
            }
            compact_refs[str(record.id)] = {
                "dataset_type_name": spec.name,
                "run": record.run,
                "data_id": dict(record.data_id),
            }
            assert record.file is not None
            content = Path(record.file.path).read_bytes()
            member = f"{str(record.id)[:8]}-{Path(record.file.path).name}"
            archive.writestr(member, content)
            artifact_map[member] = {
                "info": {
                    "formatter": "lsst.daf.butler.formatters.json.JsonFormatter",
                    "path": f"{record.run}/{spec.name}/{Path(record.file.path).name}",
                    "storage_class": spec.storage_class,
                    "component": None,
                    "checksum": None,
                    "file_size": len(content),
                },
                "ids": [str(record.id)],
            }
        index = {
            "index_version": "V1",
            "refs": {
                "container_version": "V1",
                "universe_version": universe_version,
                "universe_namespace": "daf_butler",
                "dataset_types": dataset_types,
                "compact_refs": compact_refs,
                "dimension_records": None,
            },
            "artifact_map": artifact_map,
        }
        archive.writestr("_butler_zip_index.json", json.dumps(index))
    return path


def _modified_prep(
    samples_dir: Path, target: Path, *, change_detector_0: bool, add_detector: int | None
) -> Path:
    """prep.yaml with detector 0 renamed and/or an extra detector, keeping every tag intact."""
    text = (samples_dir / "prep.yaml").read_text()
    if change_detector_0:
        text = text.replace("    id: 0\n    full_name: '1_53'\n", "    id: 0\n    full_name: 'X_99'\n", 1)
    if add_detector is not None:
        text = text.replace(
            "- type: dimension\n  element: physical_filter\n",
            f"  - instrument: HSC\n    id: {add_detector}\n    full_name: 'Z_{add_detector}'\n"
            f"    name_in_raft: 'Z'\n    raft: 'Z'\n    purpose: SCIENCE\n"
            "- type: dimension\n  element: physical_filter\n",
            1,
        )
    target.write_text(text)
    return target


class RegistryContract:
    """What every registry implementation must do; see the module docstring."""

    @pytest.fixture
    def empty_registry(self) -> Iterator[Registry]:
        """A fresh, empty registry; implementations override this fixture."""
        pytest.fail("a RegistryContract subclass must provide the empty_registry fixture")

    @pytest.fixture
    def registry(self, empty_registry: Registry, samples_dir: Path) -> Registry:
        """The registry with prep.yaml's dimension records imported through the interface."""
        result = empty_registry.import_dimensions(samples_dir / "prep.yaml")
        assert result.status is ItemStatus.inserted, result
        return empty_registry

    @pytest.fixture
    def datasets(self, tmp_path: Path) -> DatasetFactory:
        """Makes datasets with real files under this test's directory."""
        return DatasetFactory(tmp_path)

    # -- register ---------------------------------------------------------------------------

    def test_register_inserts_every_item_in_order(self, registry: Registry, datasets: DatasetFactory) -> None:
        batch = [*datasets.calexps(range(20)), datasets.visit_summary(), datasets.raw(3)]
        result = registry.register(batch)
        assert statuses(result) == [ItemStatus.inserted] * len(batch)
        assert [item.dataset_id for item in result.items] == [record.id for record in batch]
        assert registry.stats().datasets == len(batch)

    def test_empty_batch(self, registry: Registry) -> None:
        assert registry.register([]).items == ()

    def test_replaying_a_batch_changes_nothing(self, registry: Registry, datasets: DatasetFactory) -> None:
        batch = [*datasets.calexps(range(30)), datasets.visit_summary(), datasets.raw(7)]
        first = registry.register(batch)
        assert statuses(first) == [ItemStatus.inserted] * len(batch)
        before = registry.stats()
        second = registry.register(batch)
        assert statuses(second) == [ItemStatus.already_present] * len(batch)
        assert all(item.status.ok for item in second.items)
        after = registry.stats()
        assert (after.datasets, after.runs, after.dataset_types) == (
            before.datasets,
            before.runs,
            before.dataset_types,
        )

    def test_replay_mixed_with_new_items(self, registry: Registry, datasets: DatasetFactory) -> None:
        old = datasets.calexps(range(5))
        registry.register(old)
        new = datasets.calexps(range(5, 10))
        result = registry.register([*old, *new])
        assert statuses(result) == [ItemStatus.already_present] * 5 + [ItemStatus.inserted] * 5

    def test_duplicate_inside_a_batch(self, registry: Registry, datasets: DatasetFactory) -> None:
        item = datasets.calexp(1)
        other = datasets.calexp(2)
        result = registry.register([item, other, item])
        assert statuses(result) == [ItemStatus.inserted, ItemStatus.inserted, ItemStatus.already_present]
        assert registry.stats().datasets == 2

    def test_same_id_with_other_content_inside_a_batch(
        self, registry: Registry, datasets: DatasetFactory
    ) -> None:
        item = datasets.calexp(1)
        clash = replace(item, data_id={**item.data_id, "detector": 2})
        result = registry.register([item, clash, datasets.calexp(3)])
        assert statuses(result) == [ItemStatus.inserted, ItemStatus.conflict, ItemStatus.inserted]
        assert result.items[1].reason

    def test_conflict_same_id_other_content(self, registry: Registry, datasets: DatasetFactory) -> None:
        item = datasets.calexp(4)
        registry.register([item])
        moved = replace(item, data_id={**item.data_id, "detector": 5})
        good = datasets.calexp(6)
        result = registry.register([moved, good])
        assert statuses(result) == [ItemStatus.conflict, ItemStatus.inserted]
        assert str(item.id) in (result.items[0].reason or "")

    def test_conflict_same_id_other_run(self, registry: Registry, datasets: DatasetFactory) -> None:
        item = datasets.calexp(4)
        registry.register([item])
        result = registry.register([replace(item, run="HSC/runs/other")])
        assert statuses(result) == [ItemStatus.conflict]

    def test_conflict_same_data_id_in_run_under_another_id(
        self, registry: Registry, datasets: DatasetFactory
    ) -> None:
        first = datasets.calexp(8)
        registry.register([first])
        second = replace(datasets.calexp(8), id=uuid.uuid4())
        good = datasets.calexp(9)
        result = registry.register([second, good])
        assert statuses(result) == [ItemStatus.conflict, ItemStatus.inserted]
        assert str(second.id) in (result.items[0].reason or "") or str(first.id) in (
            result.items[0].reason or ""
        )
        assert registry.stats().datasets == 2

    def test_same_data_id_in_another_run_is_fine(self, registry: Registry, datasets: DatasetFactory) -> None:
        registry.register([datasets.calexp(8)])
        result = registry.register([datasets.calexp(8, run="HSC/runs/other")])
        assert statuses(result) == [ItemStatus.inserted]
        assert registry.stats().runs == 2

    def test_missing_dimension_records_next_to_good_items(
        self, registry: Registry, datasets: DatasetFactory
    ) -> None:
        lost = datasets.calexp(1, visit=ABSENT_VISIT)
        batch = [datasets.calexp(1), lost, datasets.calexp(2)]
        result = registry.register(batch)
        assert statuses(result) == [ItemStatus.inserted, ItemStatus.missing_dimensions, ItemStatus.inserted]
        assert result.items[1].missing == (f"visit:HSC/{ABSENT_VISIT}",)
        # Still missing on replay; the good items are already there.
        again = registry.register(batch)
        assert statuses(again) == [
            ItemStatus.already_present,
            ItemStatus.missing_dimensions,
            ItemStatus.already_present,
        ]

    def test_unknown_detector_is_missing(self, registry: Registry, datasets: DatasetFactory) -> None:
        result = registry.register([datasets.calexp(999)])
        assert statuses(result) == [ItemStatus.missing_dimensions]
        assert result.items[0].missing == ("detector:HSC/999",)

    def test_data_id_without_a_required_dimension_is_invalid(
        self, registry: Registry, datasets: DatasetFactory
    ) -> None:
        item = datasets.calexp(3)
        lacking = replace(item, data_id={k: v for k, v in item.data_id.items() if k != "detector"})
        result = registry.register([lacking, datasets.calexp(4)])
        assert statuses(result) == [ItemStatus.invalid, ItemStatus.inserted]
        assert "detector" in (result.items[0].reason or "")

    def test_dataset_type_with_other_definition_conflicts(
        self, registry: Registry, datasets: DatasetFactory
    ) -> None:
        registry.register([datasets.calexp(1)])
        other_class = DatasetTypeSpec("calexp", CALEXP.dimensions, "ExposureCatalog")
        clash = replace(datasets.calexp(2), dataset_type=other_class)
        result = registry.register([clash, datasets.calexp(3)])
        assert statuses(result) == [ItemStatus.conflict, ItemStatus.inserted]
        assert "calexp" in (result.items[0].reason or "")

    def test_dataset_type_listed_with_implied_dimensions_is_the_same_type(
        self, registry: Registry, datasets: DatasetFactory
    ) -> None:
        summary = datasets.visit_summary()
        required_only = DatasetTypeSpec("visitSummary", ("instrument", "visit"), "ExposureCatalog")
        again = replace(datasets.visit_summary(run="HSC/runs/other"), dataset_type=required_only)
        result = registry.register([summary, again])
        assert statuses(result) == [ItemStatus.inserted, ItemStatus.inserted]
        assert registry.stats().dataset_types == 1

    # -- dimension records ------------------------------------------------------------------

    def test_import_dimensions_is_idempotent(self, registry: Registry, samples_dir: Path) -> None:
        before = registry.stats()
        result = registry.import_dimensions(samples_dir / "prep.yaml")
        assert result.status is ItemStatus.already_present
        assert result.status.ok
        assert registry.stats().dimension_records == before.dimension_records

    def test_import_dimensions_conflict_writes_nothing(
        self, registry: Registry, datasets: DatasetFactory, samples_dir: Path, tmp_path: Path
    ) -> None:
        changed = _modified_prep(
            samples_dir, tmp_path / "changed.yaml", change_detector_0=True, add_detector=500
        )
        result = registry.import_dimensions(changed)
        assert result.status is ItemStatus.conflict
        assert result.reason
        # The new detector of the refused file was not written either.
        assert statuses(registry.register([datasets.calexp(500)])) == [ItemStatus.missing_dimensions]

    def test_import_dimensions_adds_new_records(
        self, registry: Registry, datasets: DatasetFactory, samples_dir: Path, tmp_path: Path
    ) -> None:
        assert statuses(registry.register([datasets.calexp(501)])) == [ItemStatus.missing_dimensions]
        extended = _modified_prep(
            samples_dir, tmp_path / "more.yaml", change_detector_0=False, add_detector=501
        )
        result = registry.import_dimensions(extended)
        assert result.status is ItemStatus.inserted
        assert statuses(registry.register([datasets.calexp(501)])) == [ItemStatus.inserted]

    def test_import_of_a_file_that_is_not_an_export_is_invalid(
        self, registry: Registry, tmp_path: Path
    ) -> None:
        bogus = tmp_path / "bogus.yaml"
        bogus.write_text(yaml.safe_dump({"hello": "world"}))
        assert registry.import_dimensions(bogus).status is ItemStatus.invalid

    # -- zips -------------------------------------------------------------------------------

    def test_import_zip_registers_its_datasets_once(
        self, registry: Registry, datasets: DatasetFactory, tmp_path: Path
    ) -> None:
        content = [
            *datasets.calexps(range(3), run="HSC/runs/zipped"),
            datasets.visit_summary(run="HSC/runs/zipped"),
        ]
        archive = write_butler_zip(tmp_path / "datasets.zip", content)
        first = registry.import_zip(archive)
        assert first.status is ItemStatus.inserted, first
        assert Counter(statuses(first.datasets)) == {ItemStatus.inserted: 4}
        assert {item.dataset_id for item in first.datasets} == {record.id for record in content}
        second = registry.import_zip(archive)
        assert second.status is ItemStatus.already_present
        assert Counter(statuses(second.datasets)) == {ItemStatus.already_present: 4}
        assert registry.stats().datasets == 4

    def test_import_zip_after_register_of_the_same_datasets(
        self, registry: Registry, datasets: DatasetFactory, tmp_path: Path
    ) -> None:
        content = datasets.calexps(range(2), run="HSC/runs/zipped")
        archive = write_butler_zip(tmp_path / "datasets.zip", content)
        assert registry.import_zip(archive).status is ItemStatus.inserted
        # The same ids registered again with other data IDs are conflicts.
        moved = [
            replace(record, data_id={**record.data_id, "detector": 50 + i})
            for i, record in enumerate(content)
        ]
        assert statuses(registry.register(moved)) == [ItemStatus.conflict, ItemStatus.conflict]

    def test_import_of_a_file_that_is_not_a_zip_is_invalid(self, registry: Registry, tmp_path: Path) -> None:
        bogus = tmp_path / "bogus.zip"
        bogus.write_bytes(b"not a zip")
        assert registry.import_zip(bogus).status is ItemStatus.invalid

    # -- reads ------------------------------------------------------------------------------

    def test_ping_and_stats(self, registry: Registry, datasets: DatasetFactory) -> None:
        registry.ping()
        registry.register([datasets.calexp(1), datasets.visit_summary()])
        stats = registry.stats()
        assert stats.datasets == 2
        assert stats.runs == 1
        assert stats.dataset_types == 2
        assert stats.dimension_records.get("detector") == 112
        assert stats.dimension_records.get("visit") == 1
