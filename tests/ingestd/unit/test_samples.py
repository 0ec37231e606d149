"""The bundled demo: its events plan as documented, its files verify, its records cover its data IDs."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingestd.config import load_settings
from ingestd.events import RejectClass
from ingestd.planning import PlanRules, plan
from ingestd.samples import DEMO_RUCIO_PREFIX, demo_config, events_file, files_dir, samples_dir
from ingestd.verify import check_file
from ingestd.work import (
    ButlerKind,
    ImportDimensions,
    ImportZip,
    Planned,
    Position,
    RegisterDataset,
    Reject,
    Skip,
)


def _planned() -> list[Planned]:
    rules = PlanRules.from_settings(load_settings(demo_config()))
    lines = events_file().read_bytes().splitlines()
    return [plan(line, Position("file", line=number), rules) for number, line in enumerate(lines, start=1)]


class _TolerantLoader(yaml.SafeLoader):
    """Reads a Butler export without daf_butler: custom tags become plain values."""


def _any_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_TolerantLoader.add_constructor(None, _any_tag)


def _export() -> dict[str, list[dict[str, Any]]]:
    document = yaml.load((files_dir() / "dimensions.yaml").read_text(), Loader=_TolerantLoader)
    assert document["description"] == "Butler Data Repository Export"
    records: dict[str, list[dict[str, Any]]] = {}
    for entry in document["data"]:
        if entry["type"] == "dimension":
            records.setdefault(entry["element"], []).extend(entry["records"])
    return records


def _missing_records(data_id: dict[str, Any], records: dict[str, list[dict[str, Any]]]) -> Iterator[str]:
    """Data ID values with no record in the export (band comes from physical_filter records)."""
    instrument = data_id.get("instrument")
    for dimension, value in data_id.items():
        if dimension == "band":
            if not any(row.get("band") == value for row in records.get("physical_filter", [])):
                yield f"band={value}"
            continue
        rows = records.get(dimension, [])
        keys = ("name",) if dimension == "instrument" else ("id", "name")
        if not any(
            value in (row.get(key) for key in keys)
            and (dimension == "instrument" or row.get("instrument") == instrument)
            for row in rows
        ):
            yield f"{dimension}={value}"


def test_bundle_is_where_the_api_says() -> None:
    assert events_file().parent == samples_dir() == demo_config().parent
    assert files_dir().is_dir()
    text = events_file().read_text()
    assert text.endswith("\n")
    assert DEMO_RUCIO_PREFIX in text


def test_events_plan_as_documented() -> None:
    planned = _planned()
    kinds = [type(item).__name__ for item in planned]
    assert kinds == [
        "ImportDimensions",
        "RegisterDataset",
        "RegisterDataset",
        "RegisterDataset",
        "ImportZip",
        "Skip",
        "Reject",
    ]
    dims, first, second, raw, zipped, skipped, rejected = planned
    assert isinstance(dims, ImportDimensions)
    assert dims.path == files_dir() / "dimensions.yaml"
    assert isinstance(first, RegisterDataset)
    assert first.record.data_id["visit"] == 328
    assert isinstance(second, RegisterDataset)
    assert second.record.data_id["visit"] == 330
    assert isinstance(raw, RegisterDataset)
    assert raw.summary.kind is ButlerKind.raw_file
    assert isinstance(zipped, ImportZip)
    assert zipped.path.suffix == ".zip"
    assert isinstance(skipped, Skip)
    assert "transfer-submitted" in skipped.reason
    assert isinstance(rejected, Reject)
    assert rejected.error_class == RejectClass.invalid_json
    assert all(item.summary.facility == "Demo" for item in planned[:5])


def test_every_file_verifies() -> None:
    for item in _planned():
        if isinstance(item, RegisterDataset):
            assert item.record.file is not None
            path, size, adler, md5 = (
                item.record.file.path,
                item.record.file.size,
                item.record.file.adler32,
                item.record.file.md5,
            )
        elif isinstance(item, ImportDimensions | ImportZip):
            path, size, adler, md5 = str(item.path), item.summary.size, item.summary.adler32, item.summary.md5
        else:
            continue
        check = check_file(path, size=size, adler32=adler, md5=md5, within=files_dir())
        assert check.ok, check


def test_real_hermesk_format() -> None:
    lines = events_file().read_text().splitlines()
    for line in lines[:-1]:
        event = json.loads(line)
        assert set(event) == {"event_type", "payload", "created_at"}  # HermesK: no id, no services
        assert not event["created_at"].startswith("datetime")
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[-1])


def test_export_has_every_record_the_data_products_need() -> None:
    records = _export()
    for item in _planned():
        if isinstance(item, RegisterDataset):
            assert list(_missing_records(dict(item.record.data_id), records)) == [], item.record.data_id
    visits = {row["id"] for row in records["visit"] if row["instrument"] == "HSC"}
    assert {328, 330} <= visits


def test_zip_is_a_butler_zip_whose_records_are_exported() -> None:
    (archive,) = files_dir().glob("*.zip")
    with zipfile.ZipFile(archive) as opened:
        index = json.loads(opened.read("_butler_zip_index.json"))
        members = set(opened.namelist())
    assert set(index["artifact_map"]) <= members
    records = _export()
    refs = index["refs"]["compact_refs"]
    assert len(refs) == 2
    for ref in refs.values():
        assert list(_missing_records(ref["data_id"], records)) == [], ref


def test_demo_config_maps_into_the_bundle() -> None:
    settings = load_settings(demo_config())
    (facility,) = settings.site.facilities
    prefix = facility.prefixes["XRD5"]
    assert prefix.rucio_prefix == DEMO_RUCIO_PREFIX
    assert Path(prefix.fs_prefix) == files_dir().resolve()
    assert settings.verification.enabled
    assert settings.registry.is_sqlite


@pytest.mark.butler
def test_real_butler_accepts_the_bundle(tmp_path: Path) -> None:
    """The export imports into a fresh daf_butler repository, every data ID expands, the zip ingests."""
    from lsst.daf.butler import Butler

    Butler.makeRepo(str(tmp_path / "repo"))
    butler = Butler.from_config(str(tmp_path / "repo"), writeable=True)
    butler.import_(filename=str(files_dir() / "dimensions.yaml"))
    for item in _planned():
        if isinstance(item, RegisterDataset):
            expanded = butler.registry.expandDataId(dict(item.record.data_id))
            assert expanded.hasRecords()
    (archive,) = files_dir().glob("*.zip")
    butler.ingest_zip(str(archive), transfer="copy")
    assert len(list(butler.registry.queryDatasets(..., collections=...))) == 2


def test_demo_replays_with_no_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ingestd replay --sample` on a fresh machine: 5 registered, 1 skipped, 1 rejected; then idempotent."""
    from ingestd.cli import main

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("INGESTD_") and not name.startswith("INGESTD_TEST"):
            monkeypatch.delenv(name)
    outcomes = []
    for _ in range(2):
        assert main(["replay", "--sample", "--no-progress", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        outcomes.append({key: value for key, value in summary["outcomes"].items() if value})
    assert outcomes == [
        {"registered": 5, "skipped": 1, "rejected": 1},
        {"already_present": 5, "skipped": 1, "rejected": 1},
    ]
    letters = [
        json.loads(line) for line in (tmp_path / "ingestd-demo-dead-letters.jsonl").read_text().splitlines()
    ]
    assert {letter["headers"]["ingestd.error_class"] for letter in letters} == {"invalid_json"}


@pytest.mark.butler
def test_bundle_is_reproducible(tmp_path: Path) -> None:
    """Regenerating the samples with the real Butler gives the same events and files (zip ids aside)."""
    from ingestd.samples._build import build

    build(Path(__file__).resolve().parents[2] / "data" / "samples" / "prep.yaml", tmp_path)
    fresh = (tmp_path / "transfer-done.jsonl").read_text().splitlines()
    bundled = events_file().read_text().splitlines()
    assert len(fresh) == len(bundled)
    for new, old in zip(fresh, bundled, strict=True):
        if '"zip_file"' in old:  # a zip embeds fresh dataset ids and times: same shape, other checksum
            new_event, old_event = json.loads(new), json.loads(old)
            for key in ("checksum-adler", "checksum-md5", "file-size", "bytes", "name", "dst-url", "src-url"):
                new_event["payload"].pop(key)
                old_event["payload"].pop(key)
            for key in ("request-id", "transfer-id", "transfer_link"):
                new_event["payload"].pop(key)
                old_event["payload"].pop(key)
            assert new_event == old_event
        else:
            assert new == old
    for path in files_dir().iterdir():
        if path.suffix != ".zip":
            assert (tmp_path / "files" / path.name).read_bytes() == path.read_bytes(), path.name
