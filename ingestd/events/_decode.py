"""Bytes to models, each failure sorted into a :class:`RejectClass` with a reason.

The record is size-checked before anything else, parsed once (pydantic-core's
JSON parser, in Rust) and validated from Python objects, so a bad sidecar or a
skipped event type never costs a second parse of the envelope. The sidecar, a JSON
string inside the JSON, is parsed only for the kinds that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import from_json

from ._envelope import HermesEnvelope, TransferPayload, payload_object
from ._errors import EventDecodeError, RejectClass, describe_validation_error
from ._sidecar import Sidecar

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "decode_envelope",
    "decode_sidecar",
    "decode_transfer",
    "envelope_parts",
    "parse_json",
]

_MISSING: Final = object()

DEFAULT_MAX_EVENT_BYTES: Final = 1_048_576
"""Largest record decoded by default (1 MiB); real events are about 2 kB."""


def parse_json(raw: bytes | bytearray | memoryview | str, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Any:
    """Parse one JSON document, refusing oversized and non-UTF-8 input with distinct classes.

    Raises
    ------
    EventDecodeError
        ``too_large``, ``invalid_utf8`` or ``invalid_json``.
    """
    size = _byte_length(raw)
    if size > max_bytes:
        raise EventDecodeError(
            RejectClass.too_large, f"record of {size} bytes exceeds the limit of {max_bytes} bytes"
        )
    if isinstance(raw, memoryview | bytearray):
        raw = bytes(raw)
    try:
        return from_json(raw, allow_inf_nan=False)
    except ValueError as error:
        if isinstance(raw, bytes):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise EventDecodeError(
                    RejectClass.invalid_utf8,
                    f"byte {bad.start} (0x{raw[bad.start]:02x}) is not valid UTF-8: {bad.reason}",
                ) from None
        raise EventDecodeError(RejectClass.invalid_json, f"not a JSON document: {error}") from None


def decode_envelope(
    raw: bytes | bytearray | memoryview | str, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> HermesEnvelope:
    """Decode a record into its :class:`HermesEnvelope`.

    Parameters
    ----------
    raw
        The record as read from Kafka or a file line.
    max_bytes
        Size bound checked before parsing.

    Raises
    ------
    EventDecodeError
        ``too_large``, ``invalid_utf8``, ``invalid_json`` or ``invalid_envelope``.
    """
    document = parse_json(raw, max_bytes=max_bytes)
    if not isinstance(document, dict):
        raise EventDecodeError(
            RejectClass.invalid_envelope, f"the record is a JSON {_json_type(document)}, not an object"
        )
    try:
        return HermesEnvelope.model_validate(document)
    except ValidationError as error:
        raise EventDecodeError(RejectClass.invalid_envelope, describe_validation_error(error)) from None


def envelope_parts(document: Any) -> tuple[str, dict[str, Any]]:
    """The event type and payload of a parsed record, checked as :class:`HermesEnvelope` checks them.

    The planner's fast path: it acts on these two keys only, so it checks them
    without building the envelope model (its other keys, ``created_at`` included,
    are informational and never make an event unusable).

    Raises
    ------
    EventDecodeError
        ``invalid_envelope``, naming the key at fault.
    """
    if not isinstance(document, dict):
        raise EventDecodeError(
            RejectClass.invalid_envelope, f"the record is a JSON {_json_type(document)}, not an object"
        )
    event_type = document.get("event_type", _MISSING)
    if event_type is _MISSING:
        raise EventDecodeError(RejectClass.invalid_envelope, "event_type: required but missing")
    if not isinstance(event_type, str) or not event_type:
        raise EventDecodeError(
            RejectClass.invalid_envelope, f"event_type: must be a non-empty string (got {event_type!r:.80})"
        )
    if "payload" not in document:
        raise EventDecodeError(RejectClass.invalid_envelope, "payload: required but missing")
    try:
        payload = payload_object(document["payload"])
    except ValueError as error:
        raise EventDecodeError(RejectClass.invalid_envelope, f"payload: {error}") from None
    return event_type, payload


def decode_transfer(envelope: HermesEnvelope | dict[str, Any]) -> TransferPayload:
    """Validate the payload of a transfer event (given its envelope or the payload object itself).

    Raises
    ------
    EventDecodeError
        ``invalid_payload``, naming the keys at fault.
    """
    payload = envelope.payload if isinstance(envelope, HermesEnvelope) else envelope
    try:
        return TransferPayload.model_validate(payload)
    except ValidationError as error:
        raise EventDecodeError(
            RejectClass.invalid_payload, describe_validation_error(error, "payload")
        ) from None


def decode_sidecar(value: Any) -> Sidecar:
    """Decode ``rubin_sidecar``: JSON text (as HermesK sends it) or an already-parsed object.

    Raises
    ------
    EventDecodeError
        ``missing_sidecar`` when absent or empty, ``invalid_sidecar`` when it is not a
        serialized DatasetRef, ``sidecar_mismatch`` when its records contradict its
        data ID.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise EventDecodeError(
            RejectClass.missing_sidecar,
            "payload.rubin_sidecar is empty: a data product or raw file needs its DatasetRef",
        )
    try:
        if isinstance(value, str):
            sidecar = Sidecar.model_validate_json(value)
        elif isinstance(value, Mapping):
            sidecar = Sidecar.model_validate(value)
        else:
            raise EventDecodeError(
                RejectClass.invalid_sidecar,
                f"payload.rubin_sidecar must be JSON text of a DatasetRef, not a JSON {_json_type(value)}",
            )
    except ValidationError as error:
        if any(problem["type"] == "json_invalid" for problem in error.errors()):
            reason = f"payload.rubin_sidecar is not JSON: {error.errors()[0]['msg']}"
        else:
            reason = describe_validation_error(error, "rubin_sidecar")
        raise EventDecodeError(RejectClass.invalid_sidecar, reason) from None
    if sidecar.data_id.records:  # only expanded refs carry records that could contradict the data ID
        problems = sidecar.inconsistencies()
        if problems:
            raise EventDecodeError(RejectClass.sidecar_mismatch, "; ".join(problems))
    return sidecar


def _byte_length(raw: bytes | bytearray | memoryview | str) -> int:
    """Size in bytes; text is only encoded to count when it is not ASCII."""
    if isinstance(raw, str):
        return len(raw) if raw.isascii() else len(raw.encode())
    return len(raw)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
