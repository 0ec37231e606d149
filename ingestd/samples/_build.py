"""Regenerate the bundled demo samples with the real Butler (needs the ``[butler]`` extra).

Run from the repository root::

    python -m ingestd.samples._build [--prep tests/data/samples/prep.yaml]

What it writes into ``ingestd/samples/``:

``files/dimensions.yaml``
    A Butler export (the format ``butler import`` reads) made by the real Butler:
    ctrl_ingestd's ``prep.yaml`` (HSC, visit 330), plus HSC visit 328 (derived
    from 330: same pointing, taken 8 minutes earlier) and the LATISS records
    of the raw exposure in ``raw_message.json`` (instrument, detector 0, filter,
    day_obs, group, exposure), all in the current dimension universe.
``files/*.fits``
    Minimal valid FITS files (one 2880-byte header) standing in for the
    transferred data, so verification can check real sizes and checksums.
``files/<uuid>.zip``
    A Butler zip (``Butler.retrieve_artifacts_zip``) of two HSC task logs.
``transfer-done.jsonl``
    Events in HermesK's exact format (no ``id``/``services``, ``created_at`` as
    ``str(datetime)``) pointing at those files: the ``dim_file`` first, then two
    ``data_product`` events (the sidecars of ctrl_ingestd's ``message.json`` and
    ``message440.json``), the LATISS ``raw_file`` (``raw_message.json``), the
    ``zip_file``, a ``transfer-submitted`` event (skipped) and a truncated line
    (rejected).

The sizes and checksums in the events are those of the bundled files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import uuid
import warnings
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).resolve().parent
RUCIO_PREFIX = "root://xrd5:1098//rucio/demo/"
"""The Rucio prefix of every demo ``dst-url``; ``demo.yaml`` maps it into ``files/``."""

HSC_RUN = "HSC/runs/RC2/w_2023_32/DM-40356/20230814T170253Z"
CALEXP_RUN = "HSC/runs/RC2/w_2023_32/DM-40356/20230812T080035Z"
RAW_RUN = "LATISS/raw/all"

VISIT_SUMMARIES = {
    328: uuid.UUID("0ef08762-b0dd-4a02-8b1c-e09b1544992d"),  # ctrl_ingestd message.json
    330: uuid.UUID("ecbe7866-a115-4b38-9959-4df8e55517db"),  # ctrl_ingestd message440.json
}
RAW_ID = uuid.UUID("bad79e54-31ae-5403-984b-22c992ff6eec")  # ctrl_ingestd raw_message.json
LATISS_DATA_ID: dict[str, Any] = {
    "instrument": "LATISS",
    "detector": 0,
    "exposure": 2025011300004,
    "band": "g",
    "day_obs": 20250113,
    "group": "2025-01-13T19:57:30.535",
    "physical_filter": "BG40_65mm_1~blue300lpmm_qn1",
}


def fits_file(path: Path, cards: dict[str, str]) -> None:
    """Write a minimal valid FITS file: one primary header, no data."""
    lines = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    0",
    ]
    lines += [f"{key:<8}= '{value}'"[:80] for key, value in cards.items()]
    lines.append("END")
    header = "".join(line.ljust(80) for line in lines)
    path.write_bytes(header.ljust(2880).encode("ascii"))


def checksums(path: Path) -> tuple[int, str, str]:
    """Size, adler32 (8 hex digits) and md5 of a file."""
    data = path.read_bytes()
    return (
        len(data),
        f"{zlib.adler32(data) & 0xFFFFFFFF:08x}",
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
    )


def latiss_records() -> dict[str, list[dict[str, Any]]]:
    """Dimension records of the LATISS raw of ``raw_message.json`` (modelled on obs_lsst's LATISS)."""
    from astropy.time import Time  # type: ignore[import-untyped]
    from lsst.daf.butler import Timespan

    begin = Time("2025-01-13T19:57:30.535", scale="tai")
    end = Time("2025-01-13T19:58:00.535", scale="tai")
    day_begin = Time("2025-01-13T12:00:00", scale="tai")
    return {
        "instrument": [
            {
                "name": "LATISS",
                "visit_max": 7050123199999,
                "visit_system": 2,
                "exposure_max": 7050123199999,
                "detector_max": 1000,
                "class_name": "lsst.obs.lsst.Latiss",
            }
        ],
        "band": [],
        "detector": [
            {
                "instrument": "LATISS",
                "id": 0,
                "full_name": "RXX_S00",
                "name_in_raft": "S00",
                "raft": "RXX",
                "purpose": "SCIENCE",
            }
        ],
        "physical_filter": [{"instrument": "LATISS", "name": LATISS_DATA_ID["physical_filter"], "band": "g"}],
        "day_obs": [
            {
                "instrument": "LATISS",
                "id": 20250113,
                "timespan": Timespan(day_begin, day_begin + timedelta(days=1)),
            }
        ],
        "group": [{"instrument": "LATISS", "name": LATISS_DATA_ID["group"]}],
        "exposure": [
            {
                "instrument": "LATISS",
                "id": LATISS_DATA_ID["exposure"],
                "obs_id": "AT_O_20250113_000004",
                "physical_filter": LATISS_DATA_ID["physical_filter"],
                "group": LATISS_DATA_ID["group"],
                "day_obs": 20250113,
                "exposure_time": 30.0,
                "dark_time": 30.3,
                "observation_type": "science",
                "observation_reason": "science",
                "seq_num": 4,
                "seq_start": 4,
                "seq_end": 4,
                "target_name": "HD 2261",
                "science_program": "BLOCK-306",
                "tracking_ra": 6.4245,
                "tracking_dec": -46.6812,
                "sky_angle": 12.0,
                "azimuth": 162.3,
                "zenith_angle": 17.1,
                "has_simulated": False,
                "can_see_sky": True,
                "timespan": Timespan(begin, end),
            }
        ],
    }


def hsc_visit_328(butler: Any) -> dict[str, list[dict[str, Any]]]:
    """HSC visit 328, derived from visit 330 of ``prep.yaml``: same pointing, 8 minutes earlier."""
    from lsst.daf.butler import Timespan

    shift = timedelta(minutes=8)
    records: dict[str, list[dict[str, Any]]] = {"group": [{"instrument": "HSC", "name": "328"}]}
    for element in ("exposure", "visit"):
        (source,) = butler.query_dimension_records(element, instrument="HSC", where=f"{element}.id = 330")
        record = source.toDict()
        record["id"] = 328
        record["seq_num"] = 328
        if element == "exposure":
            record.update(obs_id="HSCA00032800", seq_start=328, seq_end=328, group="328")
        else:
            record["name"] = "HSCA00032800"
        span = record["timespan"]
        record["timespan"] = Timespan(span.begin - shift, span.end - shift)
        records[element] = [record]
    records["visit_definition"] = [{"instrument": "HSC", "exposure": 328, "visit": 328}]
    records["visit_system_membership"] = [{"instrument": "HSC", "visit_system": 0, "visit": 328}]
    return records


def build_repository(root: Path, prep: Path) -> Any:
    """A scratch Butler with every record the samples need."""
    from lsst.daf.butler import Butler

    Butler.makeRepo(str(root))
    butler = Butler.from_config(str(root), writeable=True)
    with warnings.catch_warnings():
        # prep.yaml predates day_obs as a dimension (universe 3): the import derives the HSC day_obs
        # record without a timespan, as expected; the warning would only say so.
        warnings.filterwarnings("ignore", message="Constructing day_obs records", category=UserWarning)
        butler.import_(filename=str(prep))
    for records in (hsc_visit_328(butler), latiss_records()):
        for element, rows in records.items():
            if rows:
                butler.registry.insertDimensionData(element, *rows, skip_existing=True)
    return butler


def export_dimensions(butler: Any, destination: Path) -> None:
    """Export every dimension record of the scratch repository."""
    with butler.export(filename=str(destination), format="yaml") as export:
        for element in butler.dimensions.getStaticElements():
            if not element.has_own_table:
                continue
            rows = list(butler.query_dimension_records(element.name, explain=False))
            if rows:
                export.saveDimensionData(element.name, rows)


def task_logs_zip(butler: Any, work: Path, files: Path) -> Path:
    """Ingest two task logs of HSC visit 330, detector 1 (1_54) and zip them with ``retrieve_artifacts_zip``.

    Task logs (storage class ``ButlerLogRecords``) are real per-quantum outputs
    whose formatter ships with daf_butler itself, so the zip ingests into a plain
    daf_butler repository without the science pipelines installed.
    """
    from lsst.daf.butler import DatasetRef, DatasetType, FileDataset
    from lsst.daf.butler.logging import ButlerLogRecord, ButlerLogRecords

    butler.registry.registerRun(CALEXP_RUN)
    refs = []
    for task, dimensions, data_id in (
        ("isr", ("instrument", "exposure", "detector"), {"exposure": 330}),
        ("calibrate", ("instrument", "visit", "detector"), {"visit": 330}),
    ):
        log_type = DatasetType(f"{task}_log", dimensions, "ButlerLogRecords", universe=butler.dimensions)
        butler.registry.registerDatasetType(log_type)
        expanded = butler.registry.expandDataId(instrument="HSC", detector=1, **data_id)
        ref = DatasetRef(log_type, expanded, run=CALEXP_RUN)
        record = ButlerLogRecord(
            name=f"lsst.{task}",
            asctime=datetime(2023, 8, 12, 8, 12, 31),
            message=f"Processing HSC {data_id} detector 1 (1_54)",
            levelno=20,
            levelname="INFO",
            filename=f"{task}.py",
            pathname=f"/opt/lsst/pipe_tasks/{task}.py",
            lineno=512,
            funcName="run",
            process=4242,
            processName="MainProcess",
            MDC={"LABEL": task, "RUN": CALEXP_RUN},
        )
        staged = work / f"{task}_log_HSC_330_1_54.json"
        staged.write_text(ButlerLogRecords.from_records([record]).to_json_data())
        butler.ingest(FileDataset(path=str(staged), refs=[ref]), transfer="copy")
        refs.append(ref)
    zipped = butler.retrieve_artifacts_zip(refs, str(work / "zip"))
    target = files / Path(zipped.ospath).name
    shutil.copyfile(zipped.ospath, target)
    return target


def sidecar(
    dataset_id: uuid.UUID, name: str, storage: str, dims: list[str], *, data_id: dict[str, Any], run: str
) -> str:
    """The ``rubin_sidecar`` text, as ``DatasetRef.to_json()`` writes it."""
    body = {
        "id": str(dataset_id),
        "datasetType": {"name": name, "storageClass": storage, "dimensions": dims},
        "dataId": {"dataId": data_id},
        "run": run,
    }
    return json.dumps(body, separators=(",", ":"))


def transfer_event(
    path: Path, kind: str, side: str, *, when: datetime, scope: str = "test", transfer_id: str
) -> dict[str, Any]:
    """A ``transfer-done`` message in HermesK's format for a bundled file."""
    size, adler, md5 = checksums(path)
    name = f"demo/{path.name}"
    submitted = when - timedelta(seconds=12)
    return {
        "event_type": "transfer-done",
        "payload": {
            "activity": "User Subscriptions",
            "request-id": uuid.uuid5(uuid.NAMESPACE_URL, name).hex,
            "duration": 4,
            "checksum-adler": adler,
            "checksum-md5": md5,
            "file-size": size,
            "bytes": size,
            "guid": None,
            "previous-request-id": None,
            "protocol": "root",
            "scope": scope,
            "name": name,
            "dataset": "rubin_dataset",
            "datasetScope": scope,
            "src-type": "DISK",
            "src-rse": "XRD1",
            "src-url": f"root://xrd1:1094//rucio/{scope}/{name}",
            "dst-type": "DISK",
            "dst-rse": "XRD5",
            "dst-url": f"{RUCIO_PREFIX}{path.name}",
            "reason": "",
            "transfer-endpoint": "https://fts:8446",
            "transfer-id": transfer_id,
            "transfer-link": None,
            "created_at": str(submitted - timedelta(seconds=25)),
            "submitted_at": str(submitted),
            "started_at": str(when - timedelta(seconds=4)).split(".")[0],
            "transferred_at": str(when).split(".")[0],
            "tool-id": "rucio-conveyor",
            "account": "root",
            "datatype": None,
            "transfer_link": f"https://fts:8449/fts3/ftsmon/#/job/{transfer_id}",
            "rubin_butler": kind,
            "rubin_sidecar": side,
        },
        "created_at": str(when + timedelta(seconds=34, microseconds=153695)),
    }


def build(prep: Path, destination: Path = SAMPLES) -> None:
    """Write every sample file into ``destination`` (``files/`` and ``transfer-done.jsonl``)."""
    files = destination / "files"
    files.mkdir(parents=True, exist_ok=True)
    for stale in files.iterdir():
        stale.unlink()
    when = datetime(2025, 3, 20, 20, 15, 9)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        butler = build_repository(work / "repo", prep)
        export_dimensions(butler, files / "dimensions.yaml")
        zip_path = task_logs_zip(butler, work, files)

    events: list[dict[str, Any]] = [
        transfer_event(
            files / "dimensions.yaml",
            "dim_file",
            "",
            when=when,
            transfer_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "dim")),
        )
    ]
    for offset, (visit, dataset_id) in enumerate(VISIT_SUMMARIES.items(), start=1):
        path = (
            files / f"visitSummary_HSC_y_HSC-Y_{visit}_HSC_runs_RC2_w_2023_32_DM-40356_20230814T170253Z.fits"
        )
        fits_file(path, {"INSTRUME": "HSC", "OBJECT": f"visitSummary {visit}", "RUN": HSC_RUN[:60]})
        data_id = {"instrument": "HSC", "visit": visit, "band": "y", "physical_filter": "HSC-Y"}
        side = sidecar(
            dataset_id,
            "visitSummary",
            "ExposureCatalog",
            ["instrument", "visit"],
            data_id=data_id,
            run=HSC_RUN,
        )
        events.append(
            transfer_event(
                path,
                "data_product",
                side,
                when=when + timedelta(seconds=offset),
                transfer_id=str(uuid.uuid5(uuid.NAMESPACE_URL, path.name)),
            )
        )
    raw = files / "AT_O_20250113_000004_R00_S00.fits"
    fits_file(raw, {"INSTRUME": "LATISS", "OBSID": "AT_O_20250113_000004", "DAYOBS": "20250113"})
    side = sidecar(
        RAW_ID, "raw", "Exposure", ["instrument", "detector", "exposure"], data_id=LATISS_DATA_ID, run=RAW_RUN
    )
    events.append(
        transfer_event(
            raw,
            "raw_file",
            side,
            when=when + timedelta(seconds=3),
            transfer_id=str(uuid.uuid5(uuid.NAMESPACE_URL, raw.name)),
        )
    )
    events.append(
        transfer_event(
            zip_path,
            "zip_file",
            "",
            when=when + timedelta(seconds=4),
            transfer_id=str(uuid.uuid5(uuid.NAMESPACE_URL, zip_path.name)),
        )
    )
    submitted = {
        "event_type": "transfer-submitted",
        "payload": {
            "request-id": "5f2b1c0a7e6d4c3b9a8f7e6d5c4b3a29",
            "scope": "test",
            "name": "demo/next_file.fits",
            "dst-rse": "XRD5",
            "src-rse": "XRD1",
            "file-size": 2880,
            "activity": "User Subscriptions",
            "transfer-id": "4c1d2e3f-05c7-11f0-aa61-0242ac12000f",
            "created_at": str(when + timedelta(seconds=5)),
        },
        "created_at": str(when + timedelta(seconds=6, microseconds=512000)),
    }
    lines = [json.dumps(event) for event in (*events, submitted)]
    # A record cut short by a producer crash: rejected (invalid_json) and dead-lettered, never dropped.
    lines.append(lines[1][: len(lines[1]) // 2])
    (destination / "transfer-done.jsonl").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prep", type=Path, default=Path("tests/data/samples/prep.yaml"))
    parser.add_argument("--destination", type=Path, default=SAMPLES, help="default: the package folder")
    arguments = parser.parse_args()
    build(arguments.prep, arguments.destination)


if __name__ == "__main__":
    main()
