"""Value conventions of Rucio's messages, read leniently and normalised once.

Rucio builds message payloads from database rows and Python objects, then
``str()``-s some of them: a missing value often arrives as the *string*
``"None"``, timestamps as ``str(datetime)`` (naive, UTC by Rucio's convention), and
hand-written test files carry the ``repr`` form ``datetime.datetime(2025, 3, 19,
20, 58, 49, 551652)``. The helpers here turn those conventions into plain typed
values once, so nothing downstream has to think about them again.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import AwareDatetime, BeforeValidator

__all__ = [
    "NONE_STRINGS",
    "OptionalText",
    "OptionalUtcDatetime",
    "none_if_null_string",
    "parse_utc_timestamp",
    "to_utc",
]

NONE_STRINGS: Final = frozenset({"None", "none", "null", "NULL"})
"""Strings Rucio (or a hand-made test file) writes where it means "no value"."""

_REPR_PATTERN: Final = re.compile(
    r"datetime\.datetime\(\s*(\d+(?:\s*,\s*\d+){2,6})\s*"
    r"(?:,\s*tzinfo=(?:datetime\.)?(?:timezone\.utc|UTC))?\s*\)"
)
"""``repr(datetime)``: 3 to 7 integers, optionally ``tzinfo`` UTC (any other zone is refused)."""


def none_if_null_string(value: Any) -> Any:
    """``"None"`` (and friends) to ``None``; any other value unchanged."""
    if isinstance(value, str) and value in NONE_STRINGS:
        return None
    return value


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime: naive values are UTC by Rucio's convention."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _from_repr(value: str) -> datetime | None:
    """The datetime of a ``datetime.datetime(2025, 3, 19, 20, 58, 49, 551652)`` repr, if it is one."""
    match = _REPR_PATTERN.fullmatch(value.strip())
    if match is None:
        return None
    parts = [int(part) for part in match.group(1).split(",")]
    try:
        return datetime(*parts)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def parse_utc_timestamp(value: str) -> datetime | str | None:
    """A Rucio timestamp string as an aware UTC datetime; ``None`` for ``"None"`` or empty.

    Reads ``str(datetime)``, ISO 8601 (with or without zone; naive means UTC) and
    the ``datetime.datetime(...)`` repr. Anything else is returned unchanged so
    that validation reports it.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        if value in NONE_STRINGS or not value.strip():
            return None
        repr_form = _from_repr(value)
        if repr_form is None:
            return value
        parsed = repr_form
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _timestamp_or_unchanged(value: Any) -> Any:
    return parse_utc_timestamp(value) if isinstance(value, str) else value


OptionalText = Annotated[str | None, BeforeValidator(none_if_null_string)]
"""A string that may arrive as ``"None"``."""

OptionalUtcDatetime = Annotated[AwareDatetime | None, BeforeValidator(_timestamp_or_unchanged)]
"""A timestamp in any of Rucio's forms (or ``"None"``), as an aware UTC datetime."""
