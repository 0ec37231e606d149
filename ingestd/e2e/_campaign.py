"""Realistic ``transfer-done`` events for end-to-end runs, with the files they point to.

One observing night of an LSSTCam-like instrument (:class:`~butler_registry.daf.synthetic.SyntheticCampaign`
supplies the dimension records and naming) is transferred to several Data Facilities:

* the facility under test (FrDF: ``IN2P3_BUTLER_DISK`` for processed data, ``IN2P3_RAW_DISK`` for raws)
  receives most events, of all four ``rubin_butler`` kinds:

  - ``raw_file``: one ``raw`` per exposure and detector;
  - ``data_product``: ``calexp`` and ``src`` per visit and detector, ``visitSummary`` per visit;
  - ``zip_file``: a Butler zip (``retrieve_artifacts_zip`` layout, ``_butler_zip_index.json``)
    of task logs (``isr_log``, ``calibrate_log``) of one exposure;
  - ``dim_file``: a Butler export YAML with the records of one *new* exposure (its group,
    exposure, visit and their links), so every dimension file writes something;

* another facility (UKDF: ``RAL_BUTLER_DISK``, ``LANCS_BUTLER_DISK``) receives the rest, which the
  publisher must route to UKDF's topic and FrDF's mirror must leave alone.

Payloads carry every key HermesK sends (see the shared samples), including ``rubin_butler``
and ``rubin_sidecar``; the four time stamps are set when an event is written into Rucio's
``messages`` table (:mod:`ingestd.e2e._rucio`), so ``transferred_at`` is the start of the
measured end-to-end latency.

Generation streams: one event at a time, memory independent of the number of events. The
dimension records every event needs (instrument, detectors, filters, the night, the exposures
the datasets refer to) are written once to a *bootstrap* export that a run imports before the
clock starts, as a facility's registry holds them before data arrives.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from butler_registry.daf.synthetic import SyntheticCampaign
from ingestd.sitemap import SiteMap
from ingestd.work import ButlerKind

__all__ = [
    "EXPORT_UNIVERSE_VERSION",
    "FACILITY_UNDER_TEST",
    "RSES",
    "STORAGE_CLASSES",
    "Campaign",
    "EventMix",
    "GeneratedEvent",
    "RseSpec",
    "site_map_for",
    "write_export",
]

FACILITY_UNDER_TEST: Final = "FrDF"
"""The facility whose mirror and daemon an end-to-end run measures."""

EXPORT_UNIVERSE_VERSION: Final = 8
"""Dimension universe version written into generated exports (daf_butler's current default)."""

STORAGE_CLASSES: Final = ("Exposure", "ExposureF", "SourceCatalog", "ExposureCatalog")
"""Storage classes of the generated data products (their usual formatters live outside daf_butler)."""

_NAMESPACE: Final = uuid.UUID("c3f0d1a4-6f0e-4d8e-9b7a-2e5c8f1d9a10")
"""UUID5 namespace of generated ids: the same seed and tag give the same events."""

_LOG_FORMATTER: Final = "lsst.daf.butler.formatters.logs.ButlerLogRecordsFormatter"


@dataclass(frozen=True, slots=True)
class RseSpec:
    """One destination RSE: its facility, the scope its events use and its URL prefixes."""

    name: str
    facility: str
    rucio_prefix: str
    scope: str


_IN2P3: Final = "root://ccxrootd.in2p3.fr:1094//pnfs/in2p3.fr/data/lsst/"

RSES: Final[tuple[RseSpec, ...]] = (
    RseSpec("IN2P3_BUTLER_DISK", "FrDF", f"{_IN2P3}butler/", "dp2_prep"),
    RseSpec("IN2P3_RAW_DISK", "FrDF", f"{_IN2P3}raw/", "raw"),
    RseSpec("RAL_BUTLER_DISK", "UKDF", "root://xrootd.echo.stfc.ac.uk:1094/lsst:butler/", "dp2_prep"),
    RseSpec(
        "LANCS_BUTLER_DISK",
        "UKDF",
        "davs://fal-pygrid-30.lancs.ac.uk:2880/dpm/lancs.ac.uk/home/lsst/",
        "dp2_prep",
    ),
)
"""The RSEs events go to; FrDF keeps HermesK's topic per RSE and scope, UKDF one topic for the facility."""

_SOURCE_RSE: Final = "SLAC_BUTLER_DISK"
_SOURCE_PREFIX: Final = "root://sdfdtn005.slac.stanford.edu:1094//rucio/"


def site_map_for(prefix: str, storage: Path | None = None) -> SiteMap:
    """The site map of a run whose topic names all start with ``prefix`` (unique per run).

    Parameters
    ----------
    prefix
        Topic-name prefix (``e2e.<run id>``): runs on shared brokers never see each other.
    storage
        Root of the local storage; FrDF's RSEs map into ``<storage>/<RSE>/``. Without it
        the map carries no URL prefixes (publisher and mirror need none).
    """
    facilities: list[dict[str, Any]] = []
    for name, topic in ((FACILITY_UNDER_TEST, None), ("UKDF", f"{prefix}.rucio.transfers.{{facility}}")):
        rses = [rse for rse in RSES if rse.facility == name]
        entry: dict[str, Any] = {"name": name, "rses": [rse.name for rse in rses]}
        if topic is not None:
            entry["topic"] = topic
        if storage is not None and name == FACILITY_UNDER_TEST:
            entry["prefixes"] = {
                rse.name: {"rucio_prefix": rse.rucio_prefix, "fs_prefix": str(storage / rse.name) + "/"}
                for rse in rses
            }
        facilities.append(entry)
    return SiteMap.model_validate(
        {
            "topic_template": f"{prefix}.{{dst_rse}}-{{scope}}",
            "catch_all_topic": f"{prefix}.unrouted",
            "facilities": facilities,
        }
    )


@dataclass(frozen=True, slots=True)
class EventMix:
    """How events are spread over facilities and kinds.

    Parameters
    ----------
    facility_share
        Fraction of events for the facility under test; the rest go to UKDF.
    zip_share
        Fraction of the facility's events that are ``zip_file``.
    dim_share
        Fraction of the facility's events that are ``dim_file``.
    logs_per_zip
        Task logs in each zip (two per detector: ``isr_log`` and ``calibrate_log``).
    """

    facility_share: float = 0.9
    zip_share: float = 0.02
    dim_share: float = 0.01
    logs_per_zip: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.facility_share <= 1.0:
            raise ValueError(f"facility_share must be in (0, 1], not {self.facility_share}")
        if self.zip_share < 0 or self.dim_share < 0 or self.zip_share + self.dim_share >= 1.0:
            raise ValueError("zip_share and dim_share must be non-negative and sum to less than 1")
        if self.logs_per_zip < 2 or self.logs_per_zip % 2:
            raise ValueError("logs_per_zip must be an even number of at least 2 (isr and calibrate logs)")


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One event, what it announces and what the facility's registry must hold because of it."""

    index: int
    """Position in the generated stream (0-based)."""
    facility: str
    kind: ButlerKind
    rse: str
    scope: str
    name: str
    transfer_id: str
    payload: dict[str, Any]
    """The Rucio payload; time stamps are set when the event is written to Rucio."""
    dataset_ids: tuple[uuid.UUID, ...] = ()
    """Datasets registered because of it (one for a data event, the zip's for a zip)."""
    dimension_key: str | None = None
    """For a ``dim_file``: ``exposure:<instrument>/<id>`` of the new exposure it carries."""

    @property
    def did(self) -> str:
        """``scope:name``, the publisher's record key."""
        return f"{self.scope}:{self.name}"


@dataclass
class _DatasetSlot:
    """A dataset of the campaign: type, required data ID, run."""

    type_name: str
    storage_class: str
    dimensions: tuple[str, ...]
    data_id: dict[str, int | str]
    run: str


_DATA_TYPES: Final = (
    ("raw", "Exposure", ("instrument", "detector", "exposure")),
    ("calexp", "ExposureF", ("instrument", "detector", "visit")),
    ("src", "SourceCatalog", ("instrument", "detector", "visit")),
)
_SUMMARY_TYPE: Final = ("visitSummary", "ExposureCatalog", ("instrument", "visit"))
_LOG_TYPES: Final = (
    ("isr_log", ("instrument", "detector", "exposure")),
    ("calibrate_log", ("instrument", "detector", "visit")),
)


@dataclass
class Campaign:
    """A stream of realistic events and the files they point to.

    Parameters
    ----------
    storage
        Local storage root (``<storage>/<RSE>/<scope>/<name>``, what FrDF's prefixes map to).
    events
        How many events :meth:`events` yields.
    mix
        Facility and kind shares.
    seed
        Seeds the interleaving of kinds and facilities.
    tag
        Distinguishes runs: it is part of every dataset id and run name.
    detectors
        Detectors per exposure.
    write_data_files
        Write the file of every data product and raw (a few hundred bytes each) so that
        verification and ``Butler.ingest`` can see it; zips and exports are always written.
    """

    storage: Path
    events: int
    mix: EventMix = field(default_factory=EventMix)
    seed: int = 0
    tag: str = "e2e"
    detectors: int = 189
    write_data_files: bool = True
    instrument: str = "LSSTCam"
    day_obs: int = 20250601

    def __post_init__(self) -> None:
        if self.events < 0:
            raise ValueError("events must not be negative")
        per_exposure = self.detectors * len(_DATA_TYPES) + 1
        logs_per_exposure = self.detectors * len(_LOG_TYPES)
        self._data_exposures = max(1, math.ceil(self.events / per_exposure))
        zips = math.ceil(self.events * self.mix.zip_share * 1.5) + 2
        self._log_exposures = max(1, math.ceil(zips * self.mix.logs_per_zip / logs_per_exposure))
        self._used_exposures = max(self._data_exposures, self._log_exposures)
        self._dim_exposures = math.ceil(self.events * self.mix.dim_share * 1.5) + 2
        self._synthetic = SyntheticCampaign(
            instrument=self.instrument,
            detectors=self.detectors,
            exposures=self._used_exposures + self._dim_exposures,
            day_obs=self.day_obs,
        )

    # -- names -----------------------------------------------------------------------------------

    @property
    def processing_run(self) -> str:
        """The run of the facility's data products and logs."""
        return f"{self.instrument}/runs/DRP/{self.tag}"

    @property
    def raw_run(self) -> str:
        """The run of the facility's raws."""
        return f"{self.instrument}/raw/{self.tag}"

    def rse(self, name: str) -> RseSpec:
        """The RSE called ``name``."""
        for rse in RSES:
            if rse.name == name:
                return rse
        raise KeyError(name)

    def local_path(self, rse: str, scope: str, name: str) -> Path:
        """Where the facility finds the file of ``scope:name`` at ``rse``."""
        return self.storage / rse / scope / name

    # -- dimension records ----------------------------------------------------------------------

    def write_bootstrap_export(self, path: Path) -> Path:
        """Write the records every event of the run refers to (a Butler export YAML)."""
        records = self._synthetic.dimension_records()
        used = {self._synthetic.exposure_id(index) for index in range(self._used_exposures)}
        for element in ("exposure", "visit"):
            records[element] = [r for r in records[element] if r["id"] in used]
        records["group"] = [
            r for r in records["group"] if int(r["name"].split("T")[1]) < self._used_exposures
        ]
        records["visit_definition"] = [r for r in records["visit_definition"] if r["visit"] in used]
        records["visit_system_membership"] = [
            r for r in records["visit_system_membership"] if r["visit"] in used
        ]
        return write_export(path, records)

    def _new_exposure_records(self, ordinal: int) -> tuple[str, dict[str, list[dict[str, Any]]]]:
        """Records of the ``ordinal``-th exposure no dataset refers to (what a dim_file brings)."""
        index = self._used_exposures + ordinal
        exposure = self._synthetic.exposure_id(index)
        physical = ("u_24", "g_6", "r_57", "i_39", "z_20", "y_10")[index % 6]
        group = f"{self.day_obs}T{index:05d}"
        common = {
            "instrument": self.instrument,
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
        records: dict[str, list[dict[str, Any]]] = {
            "group": [{"instrument": self.instrument, "name": group}],
            "exposure": [
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
            ],
            "visit": [{**common, "name": f"MC_O_{self.day_obs}_{index + 1:06d}"}],
            "visit_definition": [{"instrument": self.instrument, "exposure": exposure, "visit": exposure}],
            "visit_system_membership": [
                {"instrument": self.instrument, "visit_system": 0, "visit": exposure}
            ],
        }
        return f"exposure:{self.instrument}/{exposure}", records

    # -- datasets ----------------------------------------------------------------------------------

    def _data_slots(self, run_tag: str) -> Iterator[_DatasetSlot]:
        """raw, calexp, src per exposure and detector, then the exposure's visitSummary; in order."""
        raw_run = f"{self.instrument}/raw/{run_tag}"
        processing_run = f"{self.instrument}/runs/DRP/{run_tag}"
        filters = ("u_24", "g_6", "r_57", "i_39", "z_20", "y_10")
        for index in range(self._data_exposures * 4):  # more than enough; the caller stops
            exposure = self._synthetic.exposure_id(index % self._data_exposures)
            cycle = index // self._data_exposures
            suffix = "" if cycle == 0 else f"-{cycle}"
            physical = filters[(index % self._data_exposures) % 6]
            implied: dict[str, int | str] = {
                "band": physical.split("_")[0],
                "physical_filter": physical,
                "day_obs": self.day_obs,
            }
            for detector in range(self.detectors):
                for name, storage_class, dimensions in _DATA_TYPES:
                    key = "exposure" if "exposure" in dimensions else "visit"
                    run = raw_run if name == "raw" else processing_run
                    yield _DatasetSlot(
                        name,
                        storage_class,
                        dimensions,
                        {"instrument": self.instrument, "detector": detector, key: exposure, **implied},
                        run + suffix,
                    )
            summary_name, summary_class, summary_dimensions = _SUMMARY_TYPE
            yield _DatasetSlot(
                summary_name,
                summary_class,
                summary_dimensions,
                {"instrument": self.instrument, "visit": exposure, **implied},
                processing_run + suffix,
            )

    def _log_slots(self) -> Iterator[_DatasetSlot]:
        filters = ("u_24", "g_6", "r_57", "i_39", "z_20", "y_10")
        for index in range(self._log_exposures):
            exposure = self._synthetic.exposure_id(index)
            physical = filters[index % 6]
            implied: dict[str, int | str] = {
                "band": physical.split("_")[0],
                "physical_filter": physical,
                "day_obs": self.day_obs,
            }
            for detector in range(self.detectors):
                for name, dimensions in _LOG_TYPES:
                    key = "exposure" if "exposure" in dimensions else "visit"
                    yield _DatasetSlot(
                        name,
                        "ButlerLogRecords",
                        dimensions,
                        {"instrument": self.instrument, "detector": detector, key: exposure, **implied},
                        self.processing_run,
                    )

    def _dataset_id(self, stream: str, slot: _DatasetSlot) -> uuid.UUID:
        required = ",".join(f"{key}={slot.data_id[key]}" for key in slot.dimensions)
        return uuid.uuid5(_NAMESPACE, f"{self.tag}|{stream}|{slot.type_name}|{slot.run}|{required}")

    @staticmethod
    def _file_name(slot: _DatasetSlot, dataset_id: uuid.UUID, extension: str = "fits") -> str:
        """A Butler-template-like file name, unique per dataset."""
        values = "_".join(str(slot.data_id[key]) for key in slot.dimensions if key != "instrument")
        run = slot.run.replace("/", "_")
        stem = f"{slot.type_name}_{slot.data_id['instrument']}_{values}_{run}_{dataset_id.hex[:8]}"
        return f"{slot.run}/{slot.type_name}/{stem}.{extension}"

    # -- events ------------------------------------------------------------------------------------

    def events_iter(self) -> Iterator[GeneratedEvent]:
        """Yield the run's :attr:`events` events, lazily (call once per campaign)."""
        rng = random.Random(self.seed)
        facility_data = self._data_slots(self.tag)
        other_data = self._data_slots(f"{self.tag}-ukdf")
        logs = self._log_slots()
        butler_rse, raw_rse = self.rse("IN2P3_BUTLER_DISK"), self.rse("IN2P3_RAW_DISK")
        other_rses = [rse for rse in RSES if rse.facility != FACILITY_UNDER_TEST]
        zips = dims = 0
        for index in range(self.events):
            if rng.random() >= self.mix.facility_share:
                slot = next(other_data)
                yield self._data_event(index, slot, other_rses[index % len(other_rses)], "ukdf", write=False)
                continue
            draw = rng.random()
            if draw < self.mix.dim_share:
                yield self._dim_event(index, dims, butler_rse)
                dims += 1
            elif draw < self.mix.dim_share + self.mix.zip_share:
                batch = [next(logs) for _ in range(self.mix.logs_per_zip)]
                yield self._zip_event(index, zips, batch, butler_rse)
                zips += 1
            else:
                slot = next(facility_data)
                rse = raw_rse if slot.type_name == "raw" else butler_rse
                yield self._data_event(index, slot, rse, "data", write=self.write_data_files)

    def _data_event(
        self, index: int, slot: _DatasetSlot, rse: RseSpec, stream: str, *, write: bool
    ) -> GeneratedEvent:
        dataset_id = self._dataset_id(stream, slot)
        name = self._file_name(slot, dataset_id)
        content = _data_file_content(dataset_id, slot)
        if write:
            path = self.local_path(rse.name, rse.scope, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        sidecar = {
            "id": str(dataset_id),
            "datasetType": {
                "name": slot.type_name,
                "storageClass": slot.storage_class,
                "dimensions": list(slot.dimensions),
            },
            "dataId": {"dataId": slot.data_id},
            "run": slot.run,
        }
        kind = ButlerKind.raw_file if slot.type_name == "raw" else ButlerKind.data_product
        transfer_id = str(uuid.uuid5(dataset_id, "transfer"))
        payload = _payload(
            rse,
            name,
            content,
            transfer_id=transfer_id,
            kind=kind,
            sidecar=json.dumps(sidecar, separators=(",", ":")),
            dataset=slot.run,
        )
        return GeneratedEvent(
            index=index,
            facility=rse.facility,
            kind=kind,
            rse=rse.name,
            scope=rse.scope,
            name=name,
            transfer_id=transfer_id,
            payload=payload,
            dataset_ids=(dataset_id,) if rse.facility == FACILITY_UNDER_TEST else (),
        )

    def _zip_event(
        self, index: int, ordinal: int, slots: Sequence[_DatasetSlot], rse: RseSpec
    ) -> GeneratedEvent:
        ids = [self._dataset_id("logs", slot) for slot in slots]
        zip_id = uuid.uuid5(_NAMESPACE, f"{self.tag}|zip|{ordinal}")
        name = f"{self.processing_run}/zips/{zip_id}.zip"
        content = butler_zip(slots, ids, universe_version=EXPORT_UNIVERSE_VERSION)
        path = self.local_path(rse.name, rse.scope, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        transfer_id = str(uuid.uuid5(zip_id, "transfer"))
        payload = _payload(
            rse, name, content, transfer_id=transfer_id, kind=ButlerKind.zip_file, sidecar="", dataset="zips"
        )
        return GeneratedEvent(
            index=index,
            facility=rse.facility,
            kind=ButlerKind.zip_file,
            rse=rse.name,
            scope=rse.scope,
            name=name,
            transfer_id=transfer_id,
            payload=payload,
            dataset_ids=tuple(ids),
        )

    def _dim_event(self, index: int, ordinal: int, rse: RseSpec) -> GeneratedEvent:
        key, records = self._new_exposure_records(ordinal)
        name = f"{self.processing_run}/dimensions/exposure_{ordinal:07d}.yaml"
        path = self.local_path(rse.name, rse.scope, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_export(path, records)
        content = path.read_bytes()
        transfer_id = str(uuid.uuid5(_NAMESPACE, f"{self.tag}|dim|{ordinal}"))
        payload = _payload(
            rse,
            name,
            content,
            transfer_id=transfer_id,
            kind=ButlerKind.dim_file,
            sidecar="",
            dataset="dimensions",
        )
        return GeneratedEvent(
            index=index,
            facility=rse.facility,
            kind=ButlerKind.dim_file,
            rse=rse.name,
            scope=rse.scope,
            name=name,
            transfer_id=transfer_id,
            payload=payload,
            dimension_key=key,
        )


def _data_file_content(dataset_id: uuid.UUID, slot: _DatasetSlot) -> bytes:
    """A small file unique to the dataset (what verification checksums and the Butler stats)."""
    header = json.dumps(
        {"id": str(dataset_id), "type": slot.type_name, "dataId": slot.data_id}, sort_keys=True
    )
    return (header + "\n").encode() * 3


def _payload(
    rse: RseSpec,
    name: str,
    content: bytes,
    *,
    transfer_id: str,
    kind: ButlerKind,
    sidecar: str,
    dataset: str,
) -> dict[str, Any]:
    """A transfer-done payload with every key HermesK sends (time stamps added on insertion)."""
    request_id = uuid.uuid5(uuid.UUID(transfer_id), "request").hex
    return {
        "activity": "User Subscriptions",
        "request-id": request_id,
        "duration": 3,
        "checksum-adler": f"{zlib.adler32(content) & 0xFFFFFFFF:08x}",
        "checksum-md5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
        "file-size": len(content),
        "bytes": len(content),
        "guid": "None",
        "previous-request-id": "None",
        "protocol": rse.rucio_prefix.split(":", 1)[0],
        "scope": rse.scope,
        "name": name,
        "dataset": dataset,
        "datasetScope": rse.scope,
        "src-type": "DISK",
        "src-rse": _SOURCE_RSE,
        "src-url": f"{_SOURCE_PREFIX}{rse.scope}/{name}",
        "dst-type": "DISK",
        "dst-rse": rse.name,
        "dst-url": f"{rse.rucio_prefix}{rse.scope}/{name}",
        "reason": "",
        "transfer-endpoint": "https://fts3-pilot.cern.ch:8446",
        "transfer-id": transfer_id,
        "transfer-link": "None",
        "tool-id": "rucio-conveyor",
        "account": "rubin_prod",
        "datatype": "None",
        "transfer_link": f"https://fts3-pilot.cern.ch:8449/fts3/ftsmon/#/job/{transfer_id}",
        "rubin_butler": kind.value,
        "rubin_sidecar": sidecar,
    }


def write_export(path: Path, records: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Write dimension records as a Butler export YAML (the file ``butler import`` and a ``dim_file`` take).

    Parameters
    ----------
    path
        Where to write.
    records
        Element name → records, parents before children (the order of :meth:`Campaign` output).
    """
    document = {
        "description": "Butler Data Repository Export",
        "version": "1.0.2",
        "universe_version": EXPORT_UNIVERSE_VERSION,
        "universe_namespace": "daf_butler",
        "data": [
            {"type": "dimension", "element": element, "records": [dict(row) for row in rows]}
            for element, rows in records.items()
            if rows
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when available: ten times faster
    with open(path, "w", encoding="utf-8") as stream:
        yaml.dump(document, stream, Dumper=dumper, sort_keys=False)
    return path


def butler_zip(slots: Sequence[_DatasetSlot], ids: Sequence[uuid.UUID], *, universe_version: int) -> bytes:
    """A Butler zip of task logs, laid out as ``Butler.retrieve_artifacts_zip`` writes it.

    The index (``_butler_zip_index.json``, index and container version ``V1``) lists the
    dataset types, one compact ref per dataset and one artifact per member; members are
    ``ButlerLogRecords`` JSON documents, whose formatter ships with daf_butler itself.
    """
    dataset_types: dict[str, Any] = {}
    compact_refs: dict[str, Any] = {}
    artifacts: dict[str, Any] = {}
    members: list[tuple[str, bytes]] = []
    for slot, dataset_id in zip(slots, ids, strict=True):
        dataset_types[slot.type_name] = {
            "name": slot.type_name,
            "storageClass": slot.storage_class,
            "dimensions": list(slot.dimensions),
            "parentStorageClass": None,
            "isCalibration": False,
        }
        compact_refs[str(dataset_id)] = {
            "dataset_type_name": slot.type_name,
            "run": slot.run,
            "data_id": dict(slot.data_id),
        }
        body = json.dumps(
            {
                "extended": True,
                "version": 2,
                "records": [
                    {
                        "name": f"lsst.{slot.type_name.removesuffix('_log')}",
                        "asctime": "2025-06-01T03:12:31",
                        "message": f"Processing {slot.data_id}",
                        "levelno": 20,
                        "levelname": "INFO",
                        "filename": "task.py",
                        "pathname": "/opt/lsst/pipe_tasks/task.py",
                        "lineno": 512,
                        "funcName": "run",
                        "process": 4242,
                        "processName": "MainProcess",
                        "MDC": {"LABEL": slot.type_name.removesuffix("_log"), "RUN": slot.run},
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()
        in_repo = (
            f"{slot.run}/{slot.type_name}/{Campaign._file_name(slot, dataset_id, 'json').rsplit('/', 1)[-1]}"
        )
        member = f"{dataset_id.hex[:8]}-{in_repo.rsplit('/', 1)[-1]}"
        artifacts[member] = {
            "info": {
                "formatter": _LOG_FORMATTER,
                "path": in_repo,
                "storage_class": slot.storage_class,
                "component": None,
                "checksum": None,
                "file_size": len(body),
            },
            "ids": [str(dataset_id)],
        }
        members.append((member, body))
    index = {
        "index_version": "V1",
        "refs": {
            "container_version": "V1",
            "universe_version": universe_version,
            "universe_namespace": "daf_butler",
            "dataset_types": dataset_types,
            "compact_refs": compact_refs,
        },
        "artifact_map": artifacts,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("_butler_zip_index.json", json.dumps(index), compress_type=zipfile.ZIP_DEFLATED)
        for member, body in members:
            archive.writestr(member, body, compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()
