"""The event model: Rucio/HermesK messages and the Butler DatasetRef sidecar they carry.

:func:`decode_envelope` turns a raw record into a :class:`HermesEnvelope`,
:func:`decode_transfer` validates a ``transfer-done`` payload into a
:class:`TransferPayload`, :func:`decode_sidecar` reads ``rubin_sidecar`` into a
:class:`Sidecar`. Every failure is an :class:`EventDecodeError` carrying a bounded
:class:`RejectClass` and a reason naming the field at fault.
:func:`ingestd.planning.plan` strings these together for the engine, through the
cheaper :func:`parse_json` and :func:`envelope_parts` (it acts on the envelope's
``event_type`` and ``payload`` only).
"""

from ._decode import (
    DEFAULT_MAX_EVENT_BYTES,
    decode_envelope,
    decode_sidecar,
    decode_transfer,
    envelope_parts,
    parse_json,
)
from ._envelope import HermesEnvelope, TransferPayload
from ._errors import EventDecodeError, RejectClass, describe_validation_error
from ._sidecar import Sidecar, SidecarDataCoordinate, SidecarDatasetType, SidecarDimensionRecord
from ._values import parse_utc_timestamp, to_utc

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "EventDecodeError",
    "HermesEnvelope",
    "RejectClass",
    "Sidecar",
    "SidecarDataCoordinate",
    "SidecarDatasetType",
    "SidecarDimensionRecord",
    "TransferPayload",
    "decode_envelope",
    "decode_sidecar",
    "decode_transfer",
    "describe_validation_error",
    "envelope_parts",
    "parse_json",
    "parse_utc_timestamp",
    "to_utc",
]
