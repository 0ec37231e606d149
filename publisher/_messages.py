"""Rucio messages as read from the table, and the Kafka records made from them.

The record value is the envelope HermesK sends, so every consumer written for
HermesK reads it unchanged: ``{"event_type": ..., "payload": {...}, "created_at":
"2025-03-20 20:15:43.153695"}`` (``created_at`` is ``str(datetime)``, naive UTC),
plus ``"id"``, the Rucio message id, which lets anyone trace a record back to its
``messages_history`` row. When the payload was not changed by enrichment, its JSON
text is spliced in byte for byte instead of being decoded and encoded again.

Headers carry what a router or an operator needs without decoding the value.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ._routing import Route

__all__ = [
    "HEADER_EVENT_TYPE",
    "HEADER_MESSAGE_ID",
    "HEADER_PUBLISHER",
    "HEADER_UNROUTED",
    "OutgoingRecord",
    "RucioMessage",
    "encode_envelope",
    "parse_payload",
]

HEADER_MESSAGE_ID = "rucio-message-id"
"""Rucio's message id (32 hexadecimal digits), when the record comes from the messages table."""
HEADER_EVENT_TYPE = "rucio-event-type"
"""The Rucio event type, e.g. ``transfer-done``."""
HEADER_PUBLISHER = "ingestd-publisher"
"""The instance id of the publisher that produced the record."""
HEADER_UNROUTED = "ingestd-unrouted-reason"
"""On catch-all records only: why the event could not be routed (:class:`UnroutedReason`)."""


@dataclass(frozen=True, slots=True)
class RucioMessage:
    """One row of Rucio's ``messages`` table."""

    id: uuid.UUID
    event_type: str
    payload_text: str
    """The JSON payload: ``payload``, or ``payload_nolimit`` when Rucio stored ``'nolimit'``."""
    services: str | None
    created_at: datetime
    """Naive UTC, as Rucio writes it."""


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record to produce, with the route that chose its topic."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    route: Route

    @property
    def facility(self) -> str:
        """Metrics label: facility name or ``unrouted``."""
        return self.route.facility


def parse_payload(text: str | bytes) -> dict[str, Any] | None:
    """The payload as a dict, or None when it is not a JSON object (such a row is still published).

    Decoded with orjson (about five times faster than :mod:`json` on a transfer-done
    payload: the largest per-row cost of the publisher). Where the two could differ,
    :func:`json.loads` decides, so the result never depends on the decoder: on text
    orjson refuses (``NaN``, ``Infinity``), and on any payload holding a float, since
    orjson reads an integer beyond 64 bits as one (transfer-done payloads hold none:
    sizes and durations are integers, so this costs only a walk of the result).
    """
    try:
        value = orjson.loads(text)
        if type(value) is dict and _holds_float(value):
            value = json.loads(text)
    except (ValueError, UnicodeDecodeError):  # orjson.JSONDecodeError is a ValueError
        try:
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return None
    return value if isinstance(value, dict) else None


def _holds_float(value: object) -> bool:
    """Whether a decoded JSON value holds a float anywhere (exact type checks: the fast path)."""
    pending = [value]
    while pending:
        item = pending.pop()
        values = item.values() if type(item) is dict else item
        for element in values:  # type: ignore[attr-defined]  # a dict's values or a list
            kind = type(element)
            if kind is float:
                return True
            if kind is dict or kind is list:
                pending.append(element)
    return False


def encode_envelope(
    message: RucioMessage,
    payload: Mapping[str, Any] | None,
    *,
    payload_changed: bool,
) -> bytes:
    """The HermesK envelope of ``message``.

    Parameters
    ----------
    message
        The row.
    payload
        The decoded payload (None when it is not a JSON object: the raw text is then
        sent as a JSON string, so nothing is lost).
    payload_changed
        Whether enrichment added keys; when not, the stored JSON text is reused as is.
    """
    if payload is None:
        payload_json = json.dumps(message.payload_text)
    elif payload_changed:
        payload_json = json.dumps(payload)
    else:
        payload_json = message.payload_text
    return (
        '{"event_type": '
        + json.dumps(message.event_type)
        + ', "payload": '
        + payload_json
        + ', "created_at": '
        + json.dumps(str(message.created_at))
        + ', "id": "'
        + message.id.hex
        + '"}'
    ).encode()
