"""plan(): one raw record in, exactly one Planned item out, with a bounded reason when it is not work."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingestd.config import load_settings
from ingestd.events import RejectClass
from ingestd.mapping import UrlMapper
from ingestd.planning import INTERNAL_ERROR_CLASS, PlanRules, plan
from ingestd.sitemap import Facility, RsePrefix, SiteMap
from ingestd.work import ButlerKind, ImportDimensions, ImportZip, Position, RegisterDataset, Reject, Skip

from .support import Prefix, ctrl_ingestd_rules, encode, sample_bytes, sample_event

KAFKA = Position("kafka", topic="XRD5-test", partition=2, offset=41)
MIRRORED = Position("kafka", topic="usdf.XRD5-test", partition=0, offset=7)
FILE = Position("file", line=3)


def _reject(planned: object, error_class: RejectClass | str) -> Reject:
    assert isinstance(planned, Reject), planned
    assert planned.error_class == str(error_class), planned
    return planned


def _with_payload(sample: str = "message.json", /, **changes: Any) -> bytes:
    event = sample_event(sample)
    event["payload"].update(changes)
    return encode(event)


# --- the shared samples ---------------------------------------------------------------------------


def test_data_product_becomes_a_dataset_record() -> None:
    planned = plan(sample_bytes("message.json"), KAFKA, ctrl_ingestd_rules())
    assert isinstance(planned, RegisterDataset)
    record = planned.record
    assert record.id == uuid.UUID("0ef08762-b0dd-4a02-8b1c-e09b1544992d")
    assert record.dataset_type.name == "visitSummary"
    assert record.data_id == {"instrument": "HSC", "visit": 328, "band": "y", "physical_filter": "HSC-Y"}
    assert record.file is not None
    assert record.file.path == (
        "/data/rucio/xrd5/visitSummary_HSC_y_HSC-Y_328_HSC_runs_RC2_w_2023_32_DM-40356_20230814T170253Z.fits"
    )
    assert (record.file.size, record.file.adler32, record.file.md5) == (
        1365120,
        "3210cb3f",
        "7018315389da34f8e4d1d2d3c57b014a",
    )
    provenance = record.provenance
    assert provenance is not None
    assert (provenance.source, provenance.topic, provenance.partition, provenance.offset) == (
        "kafka",
        "XRD5-test",
        2,
        41,
    )
    assert provenance.transfer_id == "ee01ae98-0504-11f0-9b97-0242ac120003"
    assert (provenance.rse, provenance.scope) == ("XRD5", "test")
    assert provenance.event_time == datetime(2025, 3, 19, 20, 58, 46, tzinfo=UTC)
    summary = planned.summary
    assert summary.kind is ButlerKind.data_product
    assert summary.dataset_id == record.id
    assert (summary.dataset_type, summary.run) == ("visitSummary", record.run)
    assert (summary.rse, summary.scope, summary.size, summary.adler32) == (
        "XRD5",
        "test",
        1365120,
        "3210cb3f",
    )
    assert summary.transferred_at == provenance.event_time


def test_message440_and_raw() -> None:
    rules = ctrl_ingestd_rules()
    other = plan(sample_bytes("message440.json"), KAFKA, rules)
    assert isinstance(other, RegisterDataset)
    assert other.record.data_id["visit"] == 330
    raw = plan(sample_bytes("raw_message.json"), KAFKA, rules)
    assert isinstance(raw, RegisterDataset)
    assert raw.summary.kind is ButlerKind.raw_file
    assert raw.record.file is not None
    assert raw.record.file.path == "/data/rucio/xrd5/AT_O_20250113_000004_R00_S00.fits"


def test_dim_file_becomes_an_import() -> None:
    planned = plan(sample_bytes("dim_message.json"), MIRRORED, ctrl_ingestd_rules())
    assert isinstance(planned, ImportDimensions)
    assert planned.path == Path("/data/rucio/xrd5/prep.yaml")
    assert planned.provenance.topic == "usdf.XRD5-test"
    assert planned.summary.kind is ButlerKind.dim_file
    assert planned.summary.dataset_id is None


def test_zip_file_becomes_a_zip_import() -> None:
    raw = _with_payload(
        "dim_message.json", rubin_butler="zip_file", **{"dst-url": "root://xrd5:1098//rucio/a/b.zip"}
    )
    planned = plan(raw, KAFKA, ctrl_ingestd_rules())
    assert isinstance(planned, ImportZip)
    assert planned.path == Path("/data/rucio/xrd5/a/b.zip")


def test_truncated_sample_maps_to_data_fits() -> None:
    planned = plan(sample_bytes("truncated.json"), KAFKA, ctrl_ingestd_rules())
    assert isinstance(planned, RegisterDataset)
    assert planned.record.file is not None
    assert planned.record.file.path == "/data/rucio/xrd5/data.fits"


def test_nosidecar_sample_is_rejected_with_its_reason() -> None:
    planned = _reject(
        plan(sample_bytes("nosidecar.json"), KAFKA, ctrl_ingestd_rules()), RejectClass.unknown_kind
    )
    assert "rubin_butler is 1" in planned.reason
    assert planned.summary.rse == "XRD2"
    assert planned.summary.kind is None
    assert planned.summary.name is not None
    assert planned.summary.name.startswith("srp/data/calexp_HSC")


def test_file_replay_uses_the_nominal_topic() -> None:
    planned = plan(sample_bytes("message.json"), FILE, ctrl_ingestd_rules())
    assert isinstance(planned, RegisterDataset)
    assert planned.record.provenance is not None
    assert (planned.record.provenance.source, planned.record.provenance.topic) == ("file", None)


# --- skips -------------------------------------------------------------------------------------------


def test_other_event_types_are_skipped() -> None:
    event = {
        "event_type": "deletion-done",
        "payload": {"scope": "test", "name": "f", "rse": "XRD5", "bytes": 3},
    }
    planned = plan(encode(event), KAFKA, ctrl_ingestd_rules())
    assert isinstance(planned, Skip)
    assert "deletion-done" in planned.reason
    assert (planned.summary.event_type, planned.summary.rse, planned.summary.size) == (
        "deletion-done",
        "XRD5",
        3,
    )


def test_accepted_event_types_are_configurable() -> None:
    event = sample_event("message.json")
    event["event_type"] = "transfer-failed"
    assert isinstance(plan(encode(event), KAFKA, ctrl_ingestd_rules()), Skip)
    rules = ctrl_ingestd_rules(event_types=frozenset({"transfer-done", "transfer-failed"}))
    assert isinstance(plan(encode(event), KAFKA, rules), RegisterDataset)


def _two_facilities() -> SiteMap:
    return SiteMap(
        facilities=[
            Facility(name="FrDF", rses=["XRD5"]),
            Facility(name="UKDF", rses=["XRD2", "RAL_.*"]),
        ]
    )


def test_destination_of_another_facility_is_skipped() -> None:
    rules = ctrl_ingestd_rules(site=_two_facilities(), facility="UKDF")
    planned = plan(sample_bytes("message.json"), KAFKA, rules)
    assert isinstance(planned, Skip)
    assert "'FrDF'" in planned.reason
    assert planned.summary.facility == "FrDF"
    mine = ctrl_ingestd_rules(site=_two_facilities(), facility="FrDF")
    accepted = plan(sample_bytes("message.json"), KAFKA, mine)
    assert isinstance(accepted, RegisterDataset)
    assert accepted.summary.facility == "FrDF"


def test_destination_of_no_facility_is_not_skipped() -> None:
    site = SiteMap(facilities=[Facility(name="UKDF", rses=["RAL_.*"])])
    planned = plan(sample_bytes("message.json"), KAFKA, ctrl_ingestd_rules(site=site, facility="UKDF"))
    assert isinstance(planned, RegisterDataset)
    assert planned.summary.facility is None


def test_unknown_facility_is_a_configuration_error() -> None:
    with pytest.raises(KeyError, match="UKDF"):
        ctrl_ingestd_rules(site=_two_facilities(), facility="Nowhere")


def test_disabled_kind_is_skipped() -> None:
    rules = ctrl_ingestd_rules(kinds=frozenset({ButlerKind.raw_file}))
    planned = plan(sample_bytes("message.json"), KAFKA, rules)
    assert isinstance(planned, Skip)
    assert "data_product" in planned.reason
    assert planned.summary.kind is ButlerKind.data_product


@pytest.mark.parametrize("value", [None, "", "None"])
def test_unlabelled_transfer_rejected_or_skipped(value: str | None) -> None:
    raw = _with_payload(rubin_butler=value)
    _reject(plan(raw, KAFKA, ctrl_ingestd_rules()), RejectClass.missing_kind)
    skipped = plan(raw, KAFKA, ctrl_ingestd_rules(unlabelled="skip"))
    assert isinstance(skipped, Skip)
    assert "rubin_butler is missing" in skipped.reason


# --- rejects: each malformed kind of record -------------------------------------------------------


def test_truncated_json() -> None:
    planned = _reject(
        plan(sample_bytes("message.json")[:900], KAFKA, ctrl_ingestd_rules()), RejectClass.invalid_json
    )
    assert "line 1" in planned.reason


def test_invalid_utf8() -> None:
    raw = sample_bytes("message.json").replace(b"visitSummary_HSC", b"visitSummary_\xc3\x28SC", 1)
    _reject(plan(raw, KAFKA, ctrl_ingestd_rules()), RejectClass.invalid_utf8)


def test_missing_sidecar() -> None:
    planned = _reject(
        plan(_with_payload(rubin_sidecar=""), KAFKA, ctrl_ingestd_rules()), RejectClass.missing_sidecar
    )
    assert planned.summary.kind is ButlerKind.data_product
    assert planned.summary.rse == "XRD5"
    _reject(
        plan(_with_payload("raw_message.json", rubin_sidecar=None), KAFKA, ctrl_ingestd_rules()),
        "missing_sidecar",
    )


def test_invalid_sidecar() -> None:
    sidecar = json.loads(sample_event("message.json")["payload"]["rubin_sidecar"])
    sidecar["id"] = 42
    planned = _reject(
        plan(_with_payload(rubin_sidecar=json.dumps(sidecar)), KAFKA, ctrl_ingestd_rules()),
        RejectClass.invalid_sidecar,
    )
    assert "rubin_sidecar.id" in planned.reason
    assert planned.summary.dataset_id is None
    assert planned.summary.kind is ButlerKind.data_product


def test_sidecar_mismatch() -> None:
    sidecar = json.loads(sample_event("message.json")["payload"]["rubin_sidecar"])
    sidecar["dataId"]["records"] = {
        "visit": {"definition": "visit", "record": {"instrument": "HSC", "id": 999}}
    }
    raw = _with_payload(rubin_sidecar=json.dumps(sidecar))
    _reject(plan(raw, KAFKA, ctrl_ingestd_rules()), RejectClass.sidecar_mismatch)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"file-size": "big"}, "payload.file-size"),
        ({"dst-url": 12}, "payload.dst-url"),
        ({"checksum-adler": "not-hex"}, "payload.checksum-adler"),
    ],
)
def test_wrong_types(changes: dict[str, Any], field: str) -> None:
    planned = _reject(
        plan(_with_payload(**changes), KAFKA, ctrl_ingestd_rules()), RejectClass.invalid_payload
    )
    assert field in planned.reason
    assert planned.summary.rse == "XRD5"
    assert planned.summary.scope == "test"


@pytest.mark.parametrize("kind", ["calexp", "DATA_PRODUCT", 3, ["data_product"]])
def test_unknown_kind(kind: object) -> None:
    planned = _reject(
        plan(_with_payload(rubin_butler=kind), KAFKA, ctrl_ingestd_rules()), RejectClass.unknown_kind
    )
    assert repr(kind) in planned.reason


@pytest.mark.parametrize(
    "url",
    [
        "root://xrd5:1098//rucio/../../etc/shadow",
        "root://xrd5:1098//rucio/test/../../secret.fits",
        "root://xrd5:1098//rucio/a.fits?x=1",
    ],
)
def test_path_escaping_its_prefix(url: str) -> None:
    planned = _reject(
        plan(_with_payload(**{"dst-url": url}), KAFKA, ctrl_ingestd_rules()), RejectClass.path_refused
    )
    assert planned.summary.dataset_id is not None  # decoded that far


def test_symlink_escape_at_planning(tmp_path: Path) -> None:
    (tmp_path / "rucio" / "xrd5").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "rucio" / "xrd5" / "data.fits").symlink_to(tmp_path / "outside" / "data.fits")
    rules = ctrl_ingestd_rules(tmp_path / "rucio")
    _reject(plan(sample_bytes("truncated.json"), KAFKA, rules), RejectClass.path_refused)


def test_no_prefix() -> None:
    planned = _reject(
        plan(_with_payload(**{"dst-url": "root://elsewhere:1//rucio/f"}), KAFKA, ctrl_ingestd_rules()),
        RejectClass.no_prefix,
    )
    assert "elsewhere" in planned.reason
    unknown = Position("kafka", topic="UNKNOWN-topic", partition=0, offset=0)
    _reject(plan(sample_bytes("message.json"), unknown, ctrl_ingestd_rules()), RejectClass.no_prefix)


def test_payload_of_several_megabytes() -> None:
    event = sample_event("message.json")
    event["payload"]["rubin_sidecar"] = json.dumps({"padding": "x" * (4 * 1024 * 1024)})
    planned = _reject(plan(encode(event), KAFKA, ctrl_ingestd_rules()), RejectClass.too_large)
    assert "exceeds the limit of 1048576 bytes" in planned.reason
    small = ctrl_ingestd_rules(max_event_bytes=1024)
    _reject(plan(sample_bytes("message.json"), KAFKA, small), RejectClass.too_large)


def test_envelope_problems() -> None:
    rules = ctrl_ingestd_rules()
    _reject(plan(b"[]", KAFKA, rules), RejectClass.invalid_envelope)
    bad = _reject(
        plan(b'{"event_type": "transfer-done", "payload": 3}', KAFKA, rules), RejectClass.invalid_envelope
    )
    assert bad.summary.event_type == "transfer-done"


def test_planner_failure_becomes_an_internal_error_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = ctrl_ingestd_rules()

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(UrlMapper, "map_text", broken)
    planned = _reject(plan(sample_bytes("message.json"), KAFKA, rules), INTERNAL_ERROR_CLASS)
    assert "RuntimeError: boom" in planned.reason


# --- rules from settings ---------------------------------------------------------------------------


def test_rules_from_a_ctrl_ingestd_style_config(tmp_path: Path) -> None:
    config = tmp_path / "ingestd.yml"
    config.write_text(
        "brokers: [kafka:9092]\n"
        "group_id: g\n"
        "butler_repo: sqlite:///registry.sqlite3\n"
        "topics:\n"
        "  XRD5-test:\n"
        "    rucio_prefix: root://xrd5:1098//rucio/\n"
        "    fs_prefix: file:///rucio/disks/xrd5/\n"
    )
    rules = PlanRules.from_settings(load_settings(config))
    planned = plan(sample_bytes("dim_message.json"), MIRRORED, rules)
    assert isinstance(planned, ImportDimensions)
    assert planned.path == Path("/rucio/disks/xrd5/prep.yaml")


def test_rules_from_site_map_settings() -> None:
    site = SiteMap(
        facilities=[
            Facility(
                name="Lab",
                rses=["XRD.*"],
                prefixes={"XRD5": RsePrefix(rucio_prefix="root://xrd5:1098//rucio/", fs_prefix="/lab/xrd5")},
            )
        ]
    )
    settings = load_settings(
        None, site=site.model_dump(), planning={"facility": "Lab", "kinds": ["dim_file"]}
    )
    rules = PlanRules.from_settings(settings)
    assert rules.facility == "Lab"
    assert rules.kinds == frozenset({ButlerKind.dim_file})
    planned = plan(sample_bytes("dim_message.json"), FILE, rules)
    assert isinstance(planned, ImportDimensions)
    assert planned.path == Path("/lab/xrd5/prep.yaml")
    assert planned.summary.facility == "Lab"
    assert isinstance(plan(sample_bytes("message.json"), FILE, rules), Skip)


def test_mirror_aliases_from_settings() -> None:
    settings = load_settings(
        None,
        consumer={"source_aliases": ["central"]},
        topic_prefixes={"XRD5-test": Prefix("root://xrd5:1098//rucio", "/x").__dict__},
    )
    rules = PlanRules.from_settings(settings)
    at_central = Position("kafka", topic="central.XRD5-test", partition=0, offset=0)
    assert isinstance(plan(sample_bytes("message.json"), at_central, rules), RegisterDataset)
    _reject(plan(sample_bytes("message.json"), MIRRORED, rules), RejectClass.no_prefix)
