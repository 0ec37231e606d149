"""The Hermes envelope and the ``transfer-done`` payload, as Rubin's HermesK really sends them.

Envelope (HermesK)::

    {"event_type": "transfer-done", "payload": {...}, "created_at": "2025-03-20 20:15:43.153695"}

Hand-made test files add ``id`` and ``services`` and write ``created_at`` as
``datetime.datetime(2025, 3, 19, 20, 58, 49, 551652)``; both are accepted. The
payload keys are Rucio's (hyphenated: ``dst-url``, ``file-size``, ...), plus
Rubin's ``rubin_butler`` and ``rubin_sidecar``. Keys this model does not name are
kept (``extra="allow"``), so a newer Rucio never makes an event unreadable and a
dead letter or an OpenSearch document can still show them.

Only the keys the pipeline acts on are fields, strictly typed; the rest are kept
as sent (see :class:`TransferPayload`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainValidator,
    StrictStr,
    StringConstraints,
    model_validator,
)
from pydantic_core import from_json

from ._values import (
    NONE_STRINGS,
    OptionalText,
    OptionalUtcDatetime,
    none_if_null_string,
    parse_utc_timestamp,
)

__all__ = ["HermesEnvelope", "TransferPayload", "payload_object"]


RequiredText = Annotated[StrictStr, Field(min_length=1)]


def payload_object(value: Any) -> dict[str, Any]:
    """The payload object itself, not a copy (it is validated again by its own model).

    A payload sent as a JSON string holding an object (double-encoded) is accepted.
    """
    if isinstance(value, str):
        try:
            value = from_json(value, allow_inf_nan=False)
        except ValueError as error:
            raise ValueError(f"payload is a string but not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"payload must be a JSON object, not {type(value).__name__}")
    return value


class HermesEnvelope(BaseModel):
    """One message as Hermes(K) publishes it: an event type, its payload and when it was queued.

    The payload stays a plain mapping here: its shape depends on the event type,
    and other types (``transfer-submitted``, ``deletion-done``, ...) are only
    counted, never validated.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    event_type: RequiredText = Field(
        ...,
        title="Rucio event type",
        description="transfer-done, transfer-failed, transfer-submitted, deletion-done, ...",
        examples=["transfer-done"],
    )
    payload: Annotated[dict[str, Any], PlainValidator(payload_object)] = Field(
        ...,
        title="Event payload",
        description="The Rucio payload; a JSON string holding an object is accepted too (double-encoded).",
    )
    created_at: OptionalUtcDatetime = Field(
        None,
        title="Queued at",
        description="When Rucio queued the message, UTC (str(datetime), ISO 8601 or the datetime repr).",
        examples=["2025-03-20 20:15:43.153695"],
    )
    id: OptionalText = Field(
        None, title="Message id", description="Rucio messages-table id (test files only; HermesK omits it)."
    )
    services: OptionalText = Field(
        None, title="Services", description="Rucio services column (test files only).", examples=["kafka"]
    )


_NULLABLE, _INFO, _TIME, _ADLER, _MD5 = range(5)
_CONVENTIONS: Final[dict[str, int]] = {
    **dict.fromkeys(("scope", "name", "dst-rse", "dst_rse", "dst-url", "dst_url"), _NULLABLE),
    **dict.fromkeys(("file-size", "file_size", "bytes", "transferred_bytes"), _NULLABLE),
    **dict.fromkeys(("rubin_butler", "rubin_sidecar"), _NULLABLE),
    **dict.fromkeys(("transfer-id", "transfer_id"), _INFO),
    **dict.fromkeys(("created_at", "transferred_at"), _TIME),
    **dict.fromkeys(("checksum-adler", "checksum_adler"), _ADLER),
    **dict.fromkeys(("checksum-md5", "checksum_md5"), _MD5),
}
"""Payload keys the model types, and which of Rucio's conventions applies to each."""
_CONVENTION_KEYS: Final = frozenset(_CONVENTIONS)
_CHECKSUMS: Final = frozenset({_ADLER, _MD5})
_NAIVE_TIMESTAMP_LENGTHS: Final = frozenset({19, 26})
"""Lengths of ``str(datetime)`` without zone: ``YYYY-MM-DD HH:MM:SS`` and with microseconds."""


def _normalise_payload(data: dict[str, Any]) -> dict[str, Any]:
    """Apply Rucio's value conventions to the keys the model types, in one pass (a copy).

    Doing this in one Python call, rather than one validator per field, is what
    keeps decoding near the speed of the JSON parser; the common cases are
    inlined. A value that cannot be normalised is left as it is, so that the
    field's own validation reports it with its key. A naive ``str(datetime)``
    gets a ``Z`` (Rucio's timestamps are UTC) and is parsed by pydantic-core.
    """
    result = dict(data)
    for key in _CONVENTION_KEYS.intersection(data):
        value = data[key]
        kind = _CONVENTIONS[key]
        if value.__class__ is not str:
            if kind == _INFO and (value.__class__ is int or value.__class__ is float):
                result[key] = str(value)
            continue
        if kind == _TIME:
            if len(value) in _NAIVE_TIMESTAMP_LENGTHS and value[4] == "-" and value[10] in " T":
                result[key] = value + "Z"
            else:
                result[key] = parse_utc_timestamp(value)
        elif kind in _CHECKSUMS:
            lowered = value.strip().lower()
            if not lowered or lowered in NONE_STRINGS:
                result[key] = None
            elif kind == _ADLER and len(lowered) < 8:
                result[key] = lowered.rjust(8, "0")
            else:
                result[key] = lowered
        elif value in NONE_STRINGS:
            result[key] = None
    return result


class TransferPayload(BaseModel):
    """The payload of ``transfer-done`` (and ``transfer-failed``), with Rubin's two extra keys.

    Field names are snake_case; the hyphenated Rucio keys are their aliases (both
    spellings are accepted). ``"None"`` strings are read as missing values,
    timestamps in any of Rucio's forms become aware UTC datetimes, checksums are
    normalised (lower case, adler32 zero-padded to 8 digits).

    Only the keys the pipeline acts on are fields. The others Rucio sends
    (``activity``, ``request-id``, ``previous-request-id``, ``duration``,
    ``protocol``, ``src-rse``, ``src-url``, ``src-type``, ``dst-type``, ``guid``,
    ``dataset``, ``datasetScope``, ``reason``, ``transfer-endpoint``,
    ``transfer-link``/``transfer_link``, ``submitted_at``, ``started_at``,
    ``tool-id``, ``account``, ``datatype``, ``vo``, and anything a later Rucio
    adds) are kept untouched as extras and read with :meth:`info`: validating keys
    nobody acts on would only cost time and dead-letter events for a field of no
    consequence.
    """

    model_config = ConfigDict(extra="allow", frozen=True, validate_by_name=True, validate_by_alias=True)

    scope: RequiredText = Field(..., title="DID scope", examples=["dp2_prep"])
    name: RequiredText = Field(..., title="DID name (the file)", examples=["something/prep.yaml"])
    dst_rse: RequiredText = Field(..., alias="dst-rse", title="Destination RSE", examples=["XRD5"])
    dst_url: RequiredText = Field(
        ...,
        alias="dst-url",
        title="Destination URL",
        description="Where FTS wrote the file; mapped to a local path by the URL prefix tables.",
        examples=["root://xrd5:1098//rucio/prep.yaml"],
    )
    file_size: NonNegativeInt | None = Field(None, alias="file-size", title="DID size (bytes)")
    transferred_bytes: NonNegativeInt | None = Field(None, alias="bytes", title="Bytes transferred")
    checksum_adler: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}$")] | None = Field(
        None, alias="checksum-adler", title="adler32", description="8 lower-case hex digits."
    )
    checksum_md5: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = Field(
        None, alias="checksum-md5", title="md5", description="32 lower-case hex digits."
    )
    transfer_id: StrictStr | None = Field(None, alias="transfer-id", title="FTS transfer (job) id")
    created_at: AwareDatetime | None = Field(None, title="Request created (UTC)")
    transferred_at: AwareDatetime | None = Field(
        None, title="Transfer finished (UTC)", description="Start of the end-to-end latency."
    )
    rubin_butler: Any = Field(
        None,
        title="Butler kind",
        description=(
            "data_product, raw_file, zip_file or dim_file. Kept unvalidated here so that an unknown "
            "value is told apart from a malformed payload."
        ),
    )
    rubin_sidecar: Any = Field(
        None,
        title="DatasetRef sidecar",
        description="JSON text of a serialized DatasetRef for data products and raws; empty otherwise.",
    )

    @model_validator(mode="before")
    @classmethod
    def _conventions(cls, data: Any) -> Any:
        return _normalise_payload(data) if isinstance(data, dict) else data

    @property
    def size(self) -> int | None:
        """The file size: ``file-size``, else the ``bytes`` transferred."""
        return self.file_size if self.file_size is not None else self.transferred_bytes

    @property
    def event_time(self) -> datetime | None:
        """When the file arrived: ``transferred_at``, else when the request was created."""
        return self.transferred_at or self.created_at

    def info(self, key: str) -> Any:
        """An extra key as sent (``"None"`` read as ``None``), e.g. ``payload.info("src-url")``."""
        extra = self.model_extra or {}
        return none_if_null_string(extra.get(key))
