"""The sink's fast paths produce exactly what the straightforward code did: ids, dates, bulk lines."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

from monitoring.opensearch import PreparedDocument, index_name
from monitoring.opensearch._documents import _ID_NAMESPACE, _iso, _uuid5_text, bulk_body


def test_document_ids_are_the_standard_name_based_uuids() -> None:
    names = [
        "",
        "event|-|-|None:None|registered",
        "position|kafka:usdf.XRD5-test[0]@12|rejected",
        "event|f7e1c7d6-7b3b-4d0e-9a28-0f0e4c4a7e11|transfer|scope:näme/ü.fits|parked",
        *(f"event|{uuid.uuid4()}|{n}|s:n{n}|registered" for n in range(500)),
    ]
    for name in names:
        assert _uuid5_text(name) == str(uuid.uuid5(_ID_NAMESPACE, name))


def test_memoised_dates_match_the_formatting() -> None:
    naive = datetime(2026, 11, 22, 23, 59, 59, 987654)
    aware = datetime(2026, 11, 23, 1, 0, 0, 5000, tzinfo=timezone(timedelta(hours=2)))
    assert _iso(naive) == "2026-11-22T23:59:59.987Z"
    assert _iso(aware) == "2026-11-22T23:00:00.005Z"
    assert _iso(naive) == _iso(naive.replace(tzinfo=UTC))
    assert index_name("ingestd-events-frdf", aware) == "ingestd-events-frdf-2026.11.22"


def test_bulk_body_is_action_and_source_lines_ending_with_a_newline() -> None:
    documents = [
        PreparedDocument(index="i-2026.11.22", id="a", source={"outcome": "registered", "size_bytes": 3}),
        PreparedDocument(index="i-2026.11.22", id="b", source={"reason": 'quote " and ü\nnewline'}),
    ]
    body = bulk_body(documents)
    assert body.endswith(b"\n")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines == [
        {"index": {"_index": "i-2026.11.22", "_id": "a"}},
        {"outcome": "registered", "size_bytes": 3},
        {"index": {"_index": "i-2026.11.22", "_id": "b"}},
        {"reason": 'quote " and ü\nnewline'},
    ]
    assert bulk_body([]) == b""


def test_action_lines_are_the_json_of_the_action_whatever_the_id() -> None:
    """Plain ids take a pre-serialised line; any other id is escaped as JSON (and the line still parses)."""
    ids = [
        "019af1c2d3e4a1b2c3d4e5f6a7b8c9d0e1f2",
        str(uuid.uuid4()),
        'quote"back\\slash',
        "ü",
        "a b",
        "x" * 600,
    ]
    documents = [PreparedDocument("ingestd-events-2026.12.07", identifier, {"n": 1}) for identifier in ids]
    actions = [json.loads(line) for line in bulk_body(documents).splitlines()[::2]]
    assert actions == [
        {"index": {"_index": "ingestd-events-2026.12.07", "_id": identifier}} for identifier in ids
    ]
