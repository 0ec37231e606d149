"""The test bed's KRaft cluster ids are ones Kafka's storage tool accepts."""

from __future__ import annotations

import base64
import re

from deploy.local.kafka_node import _kraft_cluster_id

_DASH_FIRST = b"\xf8" + bytes(15)
"""Encodes to ``-A...``: URL-safe base64 maps the first six bits 111110 to ``-``."""


def test_an_id_starting_with_a_dash_is_drawn_again() -> None:
    assert base64.urlsafe_b64encode(_DASH_FIRST).decode().startswith("-")
    drawn = iter([_DASH_FIRST, _DASH_FIRST, bytes(range(16))])

    cluster_id = _kraft_cluster_id(lambda: next(drawn))

    assert cluster_id == base64.urlsafe_b64encode(bytes(range(16))).decode().rstrip("=")


def test_random_ids_are_22_url_safe_characters_never_led_by_a_dash() -> None:
    ids = {_kraft_cluster_id() for _ in range(2000)}

    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id) for cluster_id in ids)
