"""The event model: real HermesK envelopes, transfer-done payloads and DatasetRef sidecars."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ingestd.events import (
    EventDecodeError,
    HermesEnvelope,
    RejectClass,
    Sidecar,
    TransferPayload,
    decode_envelope,
    decode_sidecar,
    decode_transfer,
    parse_json,
)

from .support import VALID_SAMPLES, encode, sample_bytes, sample_event


def _payload(sample: str = "message.json", /, **changes: Any) -> dict[str, Any]:
    payload = dict(sample_event(sample)["payload"])
    payload.update(changes)
    return payload


def _sidecar(name: str = "message.json") -> dict[str, Any]:
    sidecar: dict[str, Any] = json.loads(sample_event(name)["payload"]["rubin_sidecar"])
    return sidecar


# --- the shared samples ------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALID_SAMPLES)
def test_shared_samples_decode(name: str) -> None:
    envelope = decode_envelope(sample_bytes(name))
    payload = decode_transfer(envelope)
    assert envelope.event_type == "transfer-done"
    assert payload.scope == "test"
    assert payload.dst_url.startswith("root://xrd5:1098//rucio/")
    assert payload.dst_rse == "XRD5"
    assert payload.size is not None
    assert payload.size > 0
    assert payload.checksum_adler is not None
    assert len(payload.checksum_adler) == 8
    assert payload.transferred_at is not None
    assert payload.transferred_at.utcoffset() == timedelta(0)


def test_message_json_fields() -> None:
    envelope = decode_envelope(sample_bytes("message.json"))
    payload = decode_transfer(envelope)
    assert envelope.id == "cd5a1016b084469c8a1f6f39c5f6d189"
    assert envelope.services == "kafka"
    assert envelope.created_at == datetime(2025, 3, 19, 20, 58, 49, 551652, tzinfo=UTC)
    assert payload.file_size == 1365120
    assert payload.checksum_adler == "3210cb3f"
    assert payload.checksum_md5 == "7018315389da34f8e4d1d2d3c57b014a"
    assert payload.transfer_id == "ee01ae98-0504-11f0-9b97-0242ac120003"
    assert payload.transferred_at == datetime(2025, 3, 19, 20, 58, 46, tzinfo=UTC)
    assert payload.rubin_butler == "data_product"
    sidecar = decode_sidecar(payload.rubin_sidecar)
    assert sidecar.id == uuid.UUID("0ef08762-b0dd-4a02-8b1c-e09b1544992d")
    assert sidecar.dataset_type.name == "visitSummary"
    assert sidecar.dataset_type.storage_class == "ExposureCatalog"
    assert sidecar.dataset_type.dimensions == ("instrument", "visit")
    assert sidecar.data_id.values == {
        "instrument": "HSC",
        "visit": 328,
        "band": "y",
        "physical_filter": "HSC-Y",
    }
    assert sidecar.run == "HSC/runs/RC2/w_2023_32/DM-40356/20230814T170253Z"


def test_raw_message_sidecar() -> None:
    payload = decode_transfer(decode_envelope(sample_bytes("raw_message.json")))
    record = decode_sidecar(payload.rubin_sidecar).to_record()
    assert record.dataset_type.name == "raw"
    assert record.dataset_type.dimensions == ("instrument", "detector", "exposure")
    assert record.data_id["exposure"] == 2025011300004
    assert record.data_id["group"] == "2025-01-13T19:57:30.535"
    assert record.run == "LATISS/raw/all"
    assert record.dimension_records is None


def test_hermesk_envelope_without_id_and_services() -> None:
    envelope = decode_envelope(sample_bytes("dim_message.json"))
    assert envelope.id is None
    assert envelope.services is None
    assert envelope.created_at == datetime(2025, 3, 20, 20, 15, 43, 153695, tzinfo=UTC)
    payload = decode_transfer(envelope)
    assert payload.rubin_butler == "dim_file"
    assert payload.rubin_sidecar == ""
    assert payload.info("guid") is None  # JSON null


def test_nosidecar_payload_decodes_but_has_no_kind() -> None:
    payload = decode_transfer(decode_envelope(sample_bytes("nosidecar.json")))
    assert payload.rubin_butler == 1
    assert payload.rubin_sidecar is None
    assert payload.checksum_md5 is None  # "None"


# --- created_at and other timestamps ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-20 20:15:43.153695", datetime(2025, 3, 20, 20, 15, 43, 153695, tzinfo=UTC)),
        ("2025-03-20 20:15:43", datetime(2025, 3, 20, 20, 15, 43, tzinfo=UTC)),
        ("2025-03-20T20:15:43.153695", datetime(2025, 3, 20, 20, 15, 43, 153695, tzinfo=UTC)),
        ("2025-03-20T20:15:43Z", datetime(2025, 3, 20, 20, 15, 43, tzinfo=UTC)),
        ("2025-03-20T22:15:43+02:00", datetime(2025, 3, 20, 20, 15, 43, tzinfo=UTC)),
        (
            "datetime.datetime(2025, 3, 19, 20, 58, 49, 551652)",
            datetime(2025, 3, 19, 20, 58, 49, 551652, tzinfo=UTC),
        ),
        ("datetime.datetime(2025, 3, 19, 20, 58)", datetime(2025, 3, 19, 20, 58, tzinfo=UTC)),
        (
            "datetime.datetime(2025, 3, 19, 20, 58, 49, tzinfo=datetime.timezone.utc)",
            datetime(2025, 3, 19, 20, 58, 49, tzinfo=UTC),
        ),
        ("None", None),
    ],
)
def test_created_at_forms(text: str, expected: datetime | None) -> None:
    event = {"event_type": "transfer-done", "payload": {}, "created_at": text}
    envelope = decode_envelope(encode(event))
    assert envelope.created_at == expected
    if expected is not None:
        assert envelope.created_at is not None
        assert envelope.created_at.utcoffset() == timedelta(0)
    payload = decode_transfer(
        HermesEnvelope(event_type="transfer-done", payload=_payload(transferred_at=text, created_at=text))
    )
    assert payload.transferred_at == expected
    assert payload.created_at == expected


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "datetime.datetime(2025, 13, 40)",
        "datetime.datetime(2025, 3, 19, tzinfo=EST)",
        "2025-02-30",
    ],
)
def test_bad_created_at_is_an_invalid_envelope(text: str) -> None:
    event = {"event_type": "transfer-done", "payload": {}, "created_at": text}
    with pytest.raises(EventDecodeError) as caught:
        decode_envelope(encode(event))
    assert caught.value.error_class is RejectClass.invalid_envelope
    assert "created_at" in caught.value.reason


def test_bad_transferred_at_names_the_key() -> None:
    envelope = HermesEnvelope(event_type="transfer-done", payload=_payload(transferred_at="soon"))
    with pytest.raises(EventDecodeError) as caught:
        decode_transfer(envelope)
    assert caught.value.error_class is RejectClass.invalid_payload
    assert "payload.transferred_at" in caught.value.reason
    assert "'soon'" in caught.value.reason


def test_event_time_falls_back_to_created_at() -> None:
    payload = TransferPayload.model_validate(_payload(transferred_at="None"))
    assert payload.transferred_at is None
    assert payload.event_time == datetime(2025, 3, 19, 20, 58, 8, 892187, tzinfo=UTC)


# --- "None" strings, extras, checksums --------------------------------------------------------------


def test_none_strings_are_missing_values() -> None:
    payload = TransferPayload.model_validate(
        _payload(**{"file-size": "None", "checksum-md5": "None", "src-rse": "None", "transfer-id": "None"})
    )
    assert payload.file_size is None
    assert payload.size == 1365120  # falls back to "bytes"
    assert payload.checksum_md5 is None
    assert payload.info("src-rse") is None
    assert payload.transfer_id is None
    assert payload.info("previous-request-id") is None  # an extra sent as "None"


def test_extra_fields_are_kept() -> None:
    event = sample_event("dim_message.json")
    event["hermes_version"] = "38.1-rubin"
    event["payload"]["new-rucio-key"] = {"nested": [1, 2]}
    envelope = decode_envelope(encode(event))
    assert envelope.model_extra == {"hermes_version": "38.1-rubin"}
    payload = decode_transfer(envelope)
    assert payload.info("new-rucio-key") == {"nested": [1, 2]}
    assert (
        payload.info("transfer_link")
        == "https://fts:8449/fts3/ftsmon/#/job/fe087cfe-05c7-11f0-aa61-0242ac12000f"
    )
    assert payload.info("dst-type") == "DISK"
    sidecar = dict(_sidecar())
    sidecar["futureKey"] = 3
    sidecar["datasetType"] = {**sidecar["datasetType"], "isCalibration": False, "futureTypeKey": "x"}
    decoded = decode_sidecar(json.dumps(sidecar))
    assert decoded.model_extra == {"futureKey": 3}
    assert decoded.dataset_type.model_extra == {"futureTypeKey": "x"}


def test_underscore_field_names_are_accepted_too() -> None:
    payload = TransferPayload.model_validate(
        {"scope": "s", "name": "n", "dst_rse": "R", "dst_url": "root://h//p/n", "file_size": 3}
    )
    assert (payload.dst_rse, payload.dst_url, payload.size) == ("R", "root://h//p/n", 3)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("3210CB3F", "3210cb3f"), ("1a2b", "00001a2b"), (" 3210cb3f ", "3210cb3f"), ("None", None), ("", None)],
)
def test_adler32_is_normalised(sent: str, kept: str | None) -> None:
    assert TransferPayload.model_validate(_payload(**{"checksum-adler": sent})).checksum_adler == kept


@pytest.mark.parametrize(
    ("key", "value"), [("checksum-adler", "xyz"), ("checksum-adler", "123456789"), ("checksum-md5", "abc")]
)
def test_malformed_checksum_names_the_key(key: str, value: str) -> None:
    envelope = HermesEnvelope(event_type="transfer-done", payload=_payload(**{key: value}))
    with pytest.raises(EventDecodeError) as caught:
        decode_transfer(envelope)
    assert caught.value.error_class is RejectClass.invalid_payload
    assert f"payload.{key}" in caught.value.reason


def test_informational_numbers_are_kept_as_text() -> None:
    payload = TransferPayload.model_validate(_payload(**{"transfer-id": 1234}))
    assert payload.transfer_id == "1234"
    assert TransferPayload.model_validate(_payload(**{"transfer-id": 17.5})).transfer_id == "17.5"
    assert TransferPayload.model_validate(_payload(**{"request-id": 17})).info("request-id") == 17


# --- wrong types and malformed records ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"file-size": "lots"}, "payload.file-size"),
        ({"file-size": -5}, "payload.file-size"),
        ({"dst-url": 17}, "payload.dst-url"),
        ({"dst-rse": ["XRD5"]}, "payload.dst-rse"),
        ({"scope": ""}, "payload.scope"),
        ({"name": None}, "payload.name"),
        ({"transfer-id": True}, "payload.transfer-id"),
    ],
)
def test_wrong_types_are_invalid_payloads(changes: dict[str, Any], field: str) -> None:
    envelope = HermesEnvelope(event_type="transfer-done", payload=_payload(**changes))
    with pytest.raises(EventDecodeError) as caught:
        decode_transfer(envelope)
    assert caught.value.error_class is RejectClass.invalid_payload
    assert field in caught.value.reason


def test_missing_required_key_is_named() -> None:
    payload = _payload()
    del payload["dst-url"]
    with pytest.raises(EventDecodeError) as caught:
        decode_transfer(HermesEnvelope(event_type="transfer-done", payload=payload))
    assert caught.value.reason == "payload.dst-url: required but missing"


@pytest.mark.parametrize(
    ("raw", "error_class", "words"),
    [
        (sample_bytes("message.json")[:700], RejectClass.invalid_json, "not a JSON document"),
        (b"", RejectClass.invalid_json, "not a JSON document"),
        (
            b'{"event_type": "transfer-done", "payload": {"name": "\xff\xfe"}}',
            RejectClass.invalid_utf8,
            "UTF-8",
        ),
        (b"[1, 2, 3]", RejectClass.invalid_envelope, "array"),
        (b'"transfer-done"', RejectClass.invalid_envelope, "string"),
        (b'{"payload": {}}', RejectClass.invalid_envelope, "event_type: required but missing"),
        (b'{"event_type": 7, "payload": {}}', RejectClass.invalid_envelope, "event_type"),
        (b'{"event_type": "transfer-done", "payload": [1]}', RejectClass.invalid_envelope, "payload"),
        (b'{"event_type": "transfer-done", "payload": {}, "x": NaN}', RejectClass.invalid_json, "JSON"),
    ],
)
def test_malformed_records(raw: bytes, error_class: RejectClass, words: str) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_envelope(raw)
    assert caught.value.error_class is error_class
    assert words in caught.value.reason


def test_size_bound_is_checked_before_parsing() -> None:
    event = sample_event("message.json")
    event["payload"]["padding"] = "x" * (3 * 1024 * 1024)
    raw = encode(event)
    with pytest.raises(EventDecodeError) as caught:
        decode_envelope(raw)
    assert caught.value.error_class is RejectClass.too_large
    assert str(len(raw)) in caught.value.reason
    with pytest.raises(EventDecodeError) as small:
        parse_json(b"{}" + b" " * 2000, max_bytes=1024)
    assert small.value.error_class is RejectClass.too_large
    assert decode_envelope(raw, max_bytes=4 * 1024 * 1024).event_type == "transfer-done"


def test_double_encoded_payload_is_accepted() -> None:
    event = sample_event("message.json")
    event["payload"] = json.dumps(event["payload"])
    payload = decode_transfer(decode_envelope(encode(event)))
    assert payload.dst_rse == "XRD5"


def test_text_and_memoryview_records() -> None:
    raw = sample_bytes("message.json")
    assert decode_envelope(raw.decode()).event_type == "transfer-done"
    assert decode_envelope(memoryview(raw)).event_type == "transfer-done"
    assert decode_envelope(bytearray(raw)).event_type == "transfer-done"


# --- sidecar forms ------------------------------------------------------------------------------------


def test_dimensions_as_old_names_object() -> None:
    sidecar = _sidecar()
    sidecar["datasetType"]["dimensions"] = {"names": ["instrument", "visit"], "universe": 3}
    assert decode_sidecar(json.dumps(sidecar)).dataset_type.dimensions == ("instrument", "visit")


def test_flat_data_id_is_read_as_nested() -> None:
    sidecar = _sidecar()
    sidecar["dataId"] = sidecar["dataId"]["dataId"]
    assert decode_sidecar(json.dumps(sidecar)).data_id.values["visit"] == 328


def test_sidecar_object_instead_of_text() -> None:
    assert decode_sidecar(_sidecar()).id == uuid.UUID("0ef08762-b0dd-4a02-8b1c-e09b1544992d")


def test_expanded_sidecar_records_become_dimension_records() -> None:
    sidecar = _sidecar()
    visit = {
        "instrument": "HSC",
        "id": 328,
        "name": "HSCA00032800",
        "physical_filter": "HSC-Y",
        "day_obs": 20140325,
    }
    sidecar["dataId"]["records"] = {
        "visit": {"definition": "visit", "record": visit},
        "physical_filter": {
            "definition": "physical_filter",
            "record": {"instrument": "HSC", "name": "HSC-Y", "band": "y"},
        },
    }
    record = decode_sidecar(json.dumps(sidecar)).to_record()
    assert record.dimension_records == {
        "visit": [visit],
        "physical_filter": [{"instrument": "HSC", "name": "HSC-Y", "band": "y"}],
    }


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ({"visit": {"definition": "visit", "record": {"instrument": "HSC", "id": 330}}}, "describes 330"),
        ({"visit": {"definition": "exposure", "record": {"instrument": "HSC", "id": 328}}}, "definition"),
        ({"visit": {"definition": "visit", "record": {"instrument": "LATISS", "id": 328}}}, "instrument"),
    ],
)
def test_records_contradicting_the_data_id(records: dict[str, Any], words: str) -> None:
    sidecar = _sidecar()
    sidecar["dataId"]["records"] = records
    with pytest.raises(EventDecodeError) as caught:
        decode_sidecar(json.dumps(sidecar))
    assert caught.value.error_class is RejectClass.sidecar_mismatch
    assert words in caught.value.reason


def test_component_ref_registers_its_parent() -> None:
    sidecar = _sidecar()
    sidecar["datasetType"] = {
        "name": "visitSummary.wcs",
        "storageClass": "Wcs",
        "dimensions": ["instrument", "visit"],
        "parentStorageClass": "ExposureCatalog",
    }
    record = decode_sidecar(json.dumps(sidecar)).to_record()
    assert record.dataset_type.name == "visitSummary"
    assert record.dataset_type.storage_class == "ExposureCatalog"
    assert record.id == uuid.UUID("0ef08762-b0dd-4a02-8b1c-e09b1544992d")


def test_component_without_parent_storage_class_is_invalid() -> None:
    sidecar = _sidecar()
    sidecar["datasetType"]["name"] = "visitSummary.wcs"
    with pytest.raises(EventDecodeError) as caught:
        decode_sidecar(json.dumps(sidecar))
    assert caught.value.error_class is RejectClass.invalid_sidecar
    assert "parentStorageClass" in caught.value.reason


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_sidecar(value: str | None) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_sidecar(value)
    assert caught.value.error_class is RejectClass.missing_sidecar


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda s: s.update(id="not-a-uuid"), "rubin_sidecar.id"),
        (lambda s: s.pop("run"), "rubin_sidecar.run: required but missing"),
        (lambda s: s.update(run=""), "rubin_sidecar.run"),
        (lambda s: s["datasetType"].pop("storageClass"), "storageClass"),
        (lambda s: s["datasetType"].update(dimensions="instrument"), "rubin_sidecar.datasetType.dimensions"),
        (lambda s: s["dataId"]["dataId"].update(visit=328.5), "rubin_sidecar.dataId.dataId.visit"),
        (lambda s: s["dataId"]["dataId"].update(visit=True), "rubin_sidecar.dataId.dataId.visit"),
        (lambda s: s.update(dataId=[1]), "rubin_sidecar.dataId"),
    ],
)
def test_invalid_sidecars_name_the_field(mutate: Any, words: str) -> None:
    sidecar = _sidecar()
    mutate(sidecar)
    with pytest.raises(EventDecodeError) as caught:
        decode_sidecar(json.dumps(sidecar))
    assert caught.value.error_class is RejectClass.invalid_sidecar
    assert words in caught.value.reason


@pytest.mark.parametrize("text", ['{"id": "0ef08762-b0dd-4a02-8b1c-e09b1544992d", ', "[]", "42"])
def test_sidecar_that_is_not_an_object(text: str) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_sidecar(text)
    assert caught.value.error_class is RejectClass.invalid_sidecar


def test_sidecar_of_wrong_json_type() -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_sidecar(17)
    assert caught.value.error_class is RejectClass.invalid_sidecar
    assert "number" in caught.value.reason


def test_models_are_frozen() -> None:
    sidecar = Sidecar.model_validate(_sidecar())
    with pytest.raises(ValueError, match="frozen"):
        sidecar.run = "other"  # type: ignore[misc]


def test_timezone_aware_transfer_times_convert_to_utc() -> None:
    when = datetime(2025, 3, 20, 22, 15, 9, tzinfo=timezone(timedelta(hours=2)))
    payload = TransferPayload.model_validate(_payload(transferred_at=when.isoformat()))
    assert payload.transferred_at == when
    assert payload.transferred_at is not None
    assert payload.transferred_at.utcoffset() == timedelta(0)
