"""A made-up but realistic observing campaign, for benchmarks and tests.

One instrument with its detectors and filters, a night of exposures (one visit per
exposure), and the datasets a processing run makes of them: per exposure one
``raw``, ``calexp`` and ``src`` per detector and one ``visitSummary``. Dataset ids
are UUID5s of the tag, dataset type and data ID, so two registries fed the same
campaign and tag receive the very same datasets.

The dimension records are plain values in the current daf_butler universe (7 or
later: ``day_obs`` and ``group`` are dimensions); :meth:`SyntheticCampaign.write_export`
writes them as a Butler export YAML, the file a ``dim_file`` event points to, which
needs daf_butler. Everything else here is pure.
"""

from __future__ import annotations

import hashlib
import math
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from butler_registry.interface import DatasetRecord, DatasetTypeSpec, FileInfo

__all__ = ["DATASETS_PER_EXPOSURE_PER_DETECTOR", "SyntheticCampaign"]

_NAMESPACE = uuid.UUID("5b1e2c57-8d6a-4c0e-9a43-2d1f3f3b7e10")
"""UUID5 namespace of synthetic dataset ids (fixed: ids are reproducible across runs)."""

RAW = DatasetTypeSpec("raw", ("instrument", "detector", "exposure"), "Exposure")
CALEXP = DatasetTypeSpec("calexp", ("instrument", "visit", "detector"), "ExposureF")
SRC = DatasetTypeSpec("src", ("instrument", "visit", "detector"), "SourceCatalog")
VISIT_SUMMARY = DatasetTypeSpec("visitSummary", ("instrument", "visit"), "ExposureCatalog")

DATASETS_PER_EXPOSURE_PER_DETECTOR = 3
"""raw, calexp and src; plus one visitSummary per exposure."""

STORAGE_CLASSES = ("Exposure", "ExposureF", "SourceCatalog", "ExposureCatalog")
"""Storage classes the campaign uses (their default formatters live outside daf_butler)."""

_FILTERS = (("u_24", "u"), ("g_6", "g"), ("r_57", "r"), ("i_39", "i"), ("z_20", "z"), ("y_10", "y"))
_RAFTS = [f"R{x}{y}" for x in range(5) for y in range(5) if (x, y) not in {(0, 0), (0, 4), (4, 0), (4, 4)}]
_SENSORS = [f"S{x}{y}" for x in range(3) for y in range(3)]
_NIGHT_START_TAI_NS = 1_748_822_400_000_000_000
"""2025-06-01T00:00:00 TAI-ish, in nanoseconds: the start of the campaign's night."""


@dataclass(frozen=True, slots=True)
class SyntheticCampaign:
    """One night of one instrument; ``exposures`` sets the campaign's size.

    Parameters
    ----------
    instrument
        Instrument name (also the prefix of run names).
    detectors
        Detectors per exposure (LSSTCam has 189 science sensors).
    exposures
        Exposures of the night; each is also a visit.
    day_obs
        The observing night, ``YYYYMMDD``.
    """

    instrument: str = "LSSTCam"
    detectors: int = 189
    exposures: int = 40
    day_obs: int = 20250601

    @classmethod
    def sized_for(cls, datasets: int, **kwargs: Any) -> SyntheticCampaign:
        """A campaign with enough exposures for ``datasets`` datasets."""
        detectors = int(kwargs.get("detectors", 189))
        per_exposure = detectors * DATASETS_PER_EXPOSURE_PER_DETECTOR + 1
        return cls(exposures=max(1, math.ceil(datasets / per_exposure)), **kwargs)

    @property
    def capacity(self) -> int:
        """How many distinct datasets one tag of this campaign holds."""
        return self.exposures * (self.detectors * DATASETS_PER_EXPOSURE_PER_DETECTOR + 1)

    def exposure_id(self, index: int) -> int:
        """The id of the ``index``-th exposure of the night (``YYYYMMDD`` then a 5-digit sequence)."""
        return self.day_obs * 100_000 + index + 1

    def _filter(self, index: int) -> tuple[str, str]:
        return _FILTERS[index % len(_FILTERS)]

    # -- dimension records ---------------------------------------------------------------------

    def dimension_records(self) -> dict[str, list[dict[str, Any]]]:
        """Every dimension record the campaign's datasets need, by element, parents first."""
        name = self.instrument
        records: dict[str, list[dict[str, Any]]] = {
            "instrument": [
                {
                    "name": name,
                    "visit_max": 2**31 - 1,
                    "visit_system": 0,
                    "exposure_max": 2**43,
                    "detector_max": 1000,
                    "class_name": f"lsst.obs.synthetic.{name}",
                }
            ],
            "detector": [
                {
                    "instrument": name,
                    "id": detector,
                    "full_name": self._detector_name(detector),
                    "name_in_raft": self._detector_name(detector).split("_")[1],
                    "raft": self._detector_name(detector).split("_")[0],
                    "purpose": "SCIENCE",
                }
                for detector in range(self.detectors)
            ],
            "physical_filter": [
                {"instrument": name, "name": physical, "band": band} for physical, band in _FILTERS
            ],
            "day_obs": [{"instrument": name, "id": self.day_obs, "timespan": None}],
            "visit_system": [{"instrument": name, "id": 0, "name": "one-to-one"}],
            "group": [],
            "exposure": [],
            "visit": [],
            "visit_definition": [],
            "visit_system_membership": [],
        }
        for index in range(self.exposures):
            exposure = self.exposure_id(index)
            physical, _band = self._filter(index)
            group = f"{self.day_obs}T{index:05d}"
            common = {
                "instrument": name,
                "id": exposure,
                "day_obs": self.day_obs,
                "physical_filter": physical,
                "exposure_time": 30.0,
                "observation_reason": "science",
                "science_program": "BLOCK-365",
                "target_name": f"field_{index % 97}",
                "azimuth": None,
                "zenith_angle": 30.0,
                "seq_num": index + 1,
            }
            records["group"].append({"instrument": name, "name": group})
            records["exposure"].append(
                {
                    **common,
                    "group": group,
                    "obs_id": f"MC_O_{self.day_obs}_{index + 1:06d}",
                    "dark_time": 31.0,
                    "observation_type": "science",
                    "seq_start": index + 1,
                    "seq_end": index + 1,
                    "tracking_ra": 150.0,
                    "tracking_dec": 2.2,
                    "sky_angle": 270.0,
                    "has_simulated": False,
                    "can_see_sky": True,
                }
            )
            records["visit"].append({**common, "name": f"MC_O_{self.day_obs}_{index + 1:06d}"})
            records["visit_definition"].append({"instrument": name, "exposure": exposure, "visit": exposure})
            records["visit_system_membership"].append(
                {"instrument": name, "visit_system": 0, "visit": exposure}
            )
        return records

    def _detector_name(self, detector: int) -> str:
        raft = _RAFTS[(detector // len(_SENSORS)) % len(_RAFTS)]
        return f"{raft}_{_SENSORS[detector % len(_SENSORS)]}"

    def write_export(self, path: Path) -> Path:
        """Write the campaign's dimension records as a Butler export YAML (needs daf_butler)."""
        from lsst.daf.butler import DimensionUniverse
        from lsst.daf.butler.transfers import YamlRepoExportBackend

        universe = DimensionUniverse()
        values = self.dimension_records()
        with open(path, "w", encoding="utf-8") as stream:
            backend = YamlRepoExportBackend(stream, universe=universe)
            for element in universe.sorted(values):
                record_class = element.RecordClass
                rows = [record_class(**row) for row in values[element.name]]
                if rows:
                    backend.saveDimensionData(element, *rows)
            backend.finish()
        return path

    # -- datasets ------------------------------------------------------------------------------

    def runs(self, tag: str) -> tuple[str, str]:
        """The raw and processing run names of ``tag``."""
        return f"{self.instrument}/raw/{tag}", f"{self.instrument}/runs/DRP/{tag}"

    def datasets(
        self, count: int, *, tag: str = "bench", file_root: Path | None = None, write_files: bool = False
    ) -> Iterator[DatasetRecord]:
        """Yield ``count`` datasets of ``tag`` lazily (memory stays flat whatever ``count``).

        Parameters
        ----------
        count
            How many; at most :attr:`capacity`.
        tag
            Distinguishes independent sets (ids and runs differ per tag).
        file_root
            Where the files are said to be; ``/synthetic`` when ``None``.
        write_files
            Create each file (a few hundred bytes) so a real datastore can stat it;
            size and checksums are then the file's own.

        Raises
        ------
        ValueError
            ``count`` exceeds the campaign's capacity.
        """
        if count > self.capacity:
            raise ValueError(f"campaign holds {self.capacity} datasets per tag, {count} asked")
        raw_run, processing_run = self.runs(tag)
        root = file_root if file_root is not None else Path("/synthetic")
        produced = 0
        for index in range(self.exposures):
            exposure = self.exposure_id(index)
            physical, band = self._filter(index)
            implied: dict[str, int | str] = {
                "band": band,
                "physical_filter": physical,
                "day_obs": self.day_obs,
            }
            for detector in range(self.detectors):
                required: tuple[tuple[DatasetTypeSpec, str, dict[str, int | str]], ...] = (
                    (
                        RAW,
                        raw_run,
                        {"instrument": self.instrument, "detector": detector, "exposure": exposure},
                    ),
                    (
                        CALEXP,
                        processing_run,
                        {"instrument": self.instrument, "visit": exposure, "detector": detector},
                    ),
                    (
                        SRC,
                        processing_run,
                        {"instrument": self.instrument, "visit": exposure, "detector": detector},
                    ),
                )
                for spec, run, data_id in required:
                    if produced >= count:
                        return
                    yield self._record(
                        spec, run, {**data_id, **implied}, tag=tag, root=root, write_files=write_files
                    )
                    produced += 1
            if produced >= count:
                return
            yield self._record(
                VISIT_SUMMARY,
                processing_run,
                {"instrument": self.instrument, "visit": exposure, **implied},
                tag=tag,
                root=root,
                write_files=write_files,
            )
            produced += 1

    def _record(
        self,
        spec: DatasetTypeSpec,
        run: str,
        data_id: dict[str, int | str],
        *,
        tag: str,
        root: Path,
        write_files: bool,
    ) -> DatasetRecord:
        required = "_".join(f"{key}{data_id[key]}" for key in spec.dimensions)
        dataset_id = uuid.uuid5(_NAMESPACE, f"{tag}/{spec.name}/{required}")
        path = root / tag / spec.name / f"{spec.name}_{required}.fits"
        content = f"{dataset_id}\n{spec.name}\n{data_id}\n".encode() * 4
        if write_files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        file = FileInfo(
            path=str(path),
            size=len(content),
            adler32=f"{zlib.adler32(content):08x}",
            md5=hashlib.md5(content, usedforsecurity=False).hexdigest(),
        )
        return DatasetRecord(id=dataset_id, dataset_type=spec, run=run, data_id=data_id, file=file)
