"""Why an event cannot be used: a closed set of error classes and one exception that carries one.

The error class is a bounded identifier (a metric label, a dead-letter header, a
field of the OpenSearch document); the reason is for people and names the field
and value at fault. Decoding never raises anything else for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final

from pydantic import ValidationError

__all__ = ["EventDecodeError", "RejectClass", "describe_validation_error"]

_SHOWN_ERRORS: Final = 3
"""How many validation problems a reason lists (the rest are counted)."""

_SHOWN_VALUE_CHARS: Final = 80
"""Longest excerpt of an offending value quoted in a reason."""


class RejectClass(StrEnum):
    """Why an event is rejected (dead-lettered); every value is a stable metric label."""

    too_large = "too_large"
    """The record exceeds the configured size bound; refused before parsing."""
    invalid_utf8 = "invalid_utf8"
    """The record is not UTF-8 text."""
    invalid_json = "invalid_json"
    """The record is not one JSON document (e.g. truncated)."""
    invalid_envelope = "invalid_envelope"
    """Not a Hermes message: no ``event_type`` string, no ``payload`` object, bad ``created_at``."""
    invalid_payload = "invalid_payload"
    """A ``transfer-done`` payload misses a required key or has one of the wrong type."""
    missing_kind = "missing_kind"
    """No ``rubin_butler`` value: Rucio did not say what kind of Butler file this is."""
    unknown_kind = "unknown_kind"
    """``rubin_butler`` is not one of ``data_product``, ``raw_file``, ``zip_file``, ``dim_file``."""
    missing_sidecar = "missing_sidecar"
    """A data product or raw file without its ``rubin_sidecar`` DatasetRef."""
    invalid_sidecar = "invalid_sidecar"
    """The sidecar is not a serialized DatasetRef (bad JSON, missing or mistyped field)."""
    sidecar_mismatch = "sidecar_mismatch"
    """The sidecar contradicts itself (embedded dimension records disagree with its data ID)."""
    no_prefix = "no_prefix"
    """No configured Rucio prefix matches the ``dst-url`` (for its topic or RSE)."""
    path_refused = "path_refused"
    """The mapped path leaves its local prefix (``..``, symbolic links) or is not a file path."""


class EventDecodeError(ValueError):
    """An event cannot be decoded as sent.

    Parameters
    ----------
    error_class
        The bounded kind of failure.
    reason
        What is wrong, naming the field and the value.
    """

    def __init__(self, error_class: RejectClass, reason: str) -> None:
        super().__init__(f"{error_class}: {reason}")
        self.error_class = error_class
        self.reason = reason


def _excerpt(value: Any) -> str:
    text = repr(value)
    if len(text) > _SHOWN_VALUE_CHARS:
        return text[: _SHOWN_VALUE_CHARS - 3] + "..."
    return text


def _location(prefix: str, loc: Sequence[int | str]) -> str:
    parts = [prefix] if prefix else []
    parts.extend(str(part) for part in loc)
    return ".".join(parts) or "<document>"


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """A one-line reason naming each offending field (as a dotted path) and its value.

    Parameters
    ----------
    error
        What pydantic found.
    prefix
        Dotted path of the validated object inside the event, e.g. ``payload``.
    """
    problems = error.errors(include_url=False, include_context=False)
    described: list[str] = []
    for problem in problems[:_SHOWN_ERRORS]:
        where = _location(prefix, problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            described.append(f"{where}: required but missing")
        else:
            described.append(f"{where}: {message} (got {_excerpt(problem.get('input'))})")
    more = len(problems) - _SHOWN_ERRORS
    if more > 0:
        described.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return "; ".join(described)
