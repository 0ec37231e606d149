"""The fast payload decoder gives exactly what the standard library gives (pure logic, no servers)."""

from __future__ import annotations

import json
import math

import pytest

from ingestd.bench.publisher import _payload
from publisher import parse_payload


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(_payload(7, ["IN2P3_BUTLER_DISK"])),
        '{"bytes": 123456789012345678901234567890}',  # beyond 64 bits: orjson would make it a float
        '{"deep": [[{"x": -9223372036854775809}]], "y": 1}',
        '{"size": 1.5e300, "n": 3}',
        '{"a": true, "b": null, "c": "None", "d": ""}',
        '{"k": "\u00e9\u00e8"}',
    ],
)
def test_same_result_as_the_standard_library(text: str) -> None:
    for given in (text, text.encode()):
        decoded = parse_payload(given)
        assert decoded == json.loads(text)
        assert decoded is not None
        assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in json.loads(text).items()}


def test_what_only_the_standard_library_reads_is_still_read() -> None:
    decoded = parse_payload('{"a": NaN, "b": Infinity}')
    assert decoded is not None
    assert math.isnan(decoded["a"])
    assert decoded["b"] == math.inf


@pytest.mark.parametrize("text", ["[1.5]", "3", '"text"', "not json", b"\xff\xfe", "{", ""])
def test_anything_but_a_json_object_is_none(text: str | bytes) -> None:
    assert parse_payload(text) is None
