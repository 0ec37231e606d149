"""Property tests: plan() never raises and always returns exactly one Planned item.

Inputs are arbitrary bytes, arbitrary JSON documents, and the real-format samples
mutated in every way a producer could get them wrong (keys removed, values of
any JSON type, sidecar fields changed, records truncated or spliced).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.events import RejectClass
from ingestd.planning import PlanRules, plan
from ingestd.work import ImportDimensions, ImportZip, Position, RegisterDataset, Reject, Skip

from .support import VALID_SAMPLES, ctrl_ingestd_rules, sample_bytes, sample_event

RULES: PlanRules = ctrl_ingestd_rules()
POSITIONS = st.sampled_from(
    [
        Position("kafka", topic="XRD5-test", partition=0, offset=1),
        Position("kafka", topic="usdf.XRD5-test", partition=1, offset=2),
        Position("kafka", topic="unknown", partition=0, offset=3),
        Position("file", line=4),
    ]
)
PLANNED_TYPES = (RegisterDataset, ImportDimensions, ImportZip, Skip, Reject)
REJECT_CLASSES = frozenset(RejectClass)
SAMPLES = (*VALID_SAMPLES, "nosidecar.json", "truncated.json")
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
PAYLOAD_KEYS = [
    "scope", "name", "dst-rse", "dst-url", "file-size", "bytes", "checksum-adler", "checksum-md5",
    "transfer-id", "request-id", "activity", "created_at", "transferred_at", "rubin_butler",
    "rubin_sidecar", "src-rse", "guid",
]  # fmt: skip
SIDECAR_PATHS = [("id",), ("run",), ("datasetType",), ("datasetType", "name"), ("datasetType", "dimensions"),
                 ("datasetType", "storageClass"), ("dataId",), ("dataId", "dataId"), ("dataId", "records"),
                 ("dataId", "dataId", "visit"), ("component",)]  # fmt: skip


def _check(planned: object) -> None:
    assert isinstance(planned, PLANNED_TYPES), planned
    if isinstance(planned, Reject):
        assert planned.error_class in REJECT_CLASSES, planned
        assert planned.reason


@PROPERTY_SETTINGS
@given(raw=st.binary(max_size=4096), position=POSITIONS)
def test_arbitrary_bytes(raw: bytes, position: Position) -> None:
    _check(plan(raw, position, RULES))


@PROPERTY_SETTINGS
@given(document=json_values, position=POSITIONS)
def test_arbitrary_json_documents(document: Any, position: Position) -> None:
    _check(plan(json.dumps(document).encode(), position, RULES))


@PROPERTY_SETTINGS
@given(
    sample=st.sampled_from(SAMPLES),
    changes=st.dictionaries(st.sampled_from(PAYLOAD_KEYS), json_values, max_size=4),
    removed=st.lists(st.sampled_from(PAYLOAD_KEYS), max_size=3),
    event_type=st.sampled_from(["transfer-done", "transfer-done", "transfer-failed", ""]),
    position=POSITIONS,
)
def test_mutated_payloads(
    sample: str, changes: dict[str, Any], removed: list[str], event_type: str, position: Position
) -> None:
    event = sample_event(sample)
    event["event_type"] = event_type
    event["payload"].update(changes)
    for key in removed:
        event["payload"].pop(key, None)
    _check(plan(json.dumps(event).encode(), position, RULES))


@PROPERTY_SETTINGS
@given(
    sample=st.sampled_from(["message.json", "message440.json", "raw_message.json"]),
    path=st.sampled_from(SIDECAR_PATHS),
    value=json_values,
    delete=st.booleans(),
    position=POSITIONS,
)
def test_mutated_sidecars(
    sample: str, path: tuple[str, ...], value: Any, delete: bool, position: Position
) -> None:
    event = sample_event(sample)
    sidecar = json.loads(event["payload"]["rubin_sidecar"])
    target = sidecar
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else {}
    if isinstance(target, dict):
        if delete:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    event["payload"]["rubin_sidecar"] = json.dumps(sidecar)
    _check(plan(json.dumps(event).encode(), position, RULES))


@PROPERTY_SETTINGS
@given(
    sample=st.sampled_from(SAMPLES),
    cut=st.integers(min_value=0, max_value=2000),
    splice=st.binary(max_size=16),
    at=st.integers(min_value=0, max_value=2000),
    position=POSITIONS,
)
def test_truncated_and_spliced_records(
    sample: str, cut: int, splice: bytes, at: int, position: Position
) -> None:
    raw = sample_bytes(sample)
    _check(plan(raw[:cut], position, RULES))
    _check(plan(raw[:at] + splice + raw[at:], position, RULES))


@PROPERTY_SETTINGS
@given(sample=st.sampled_from(VALID_SAMPLES), position=POSITIONS)
def test_valid_samples_never_reject_for_decoding(sample: str, position: Position) -> None:
    planned = plan(sample_bytes(sample), position, RULES)
    _check(planned)
    if isinstance(planned, Reject):
        assert planned.error_class == RejectClass.no_prefix  # only the unknown topic
