"""What every source hands the engine, and what the engine asks of a source.

The engine never knows which source it serves (ARCHITECTURE: one engine, several
sources). A source yields :class:`RawRecord` objects and acknowledges them only
when told to, after the registry transaction has committed and every dead letter
of the batch was confirmed; what acknowledging means is the source's business
(commit group offsets, write a resume marker, nothing at all for a range read).

Exception tree::

    SourceError
    ├── TransientSourceError   (broker away, commit timed out: back off, retry the same work)
    └── FatalSourceError       (authentication, fenced, unknown topic config: exit non-zero)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ingestd.work import Position

__all__ = [
    "FatalSourceError",
    "Progress",
    "RawRecord",
    "Source",
    "SourceError",
    "TransientSourceError",
]

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as read, before any decoding.

    ``position`` is where the record sits in its source, and what acknowledging
    it refers to. ``origin`` is where the *event* was first seen: the same for a
    live topic, the original topic/partition/offset for a record re-driven from
    the retry or dead-letter topic (taken from its headers); provenance and
    reports use it.
    """

    value: bytes
    position: Position
    origin: Position
    key: bytes | None = None
    headers: Headers = ()
    timestamp_ms: int | None = None
    """Broker timestamp (create time), milliseconds since the epoch, when the source has one."""
    generation: int = 0
    """The source's assignment generation when the record was read (a commit for a partition
    that was revoked since is skipped)."""

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a finite source has got; ``total`` is None when unknown (live topics)."""

    done: int
    total: int | None
    unit: str = "events"


class SourceError(Exception):
    """Base of the errors a source raises."""


class TransientSourceError(SourceError, ConnectionError):
    """The source cannot be read or acknowledged right now; nothing was lost. Retry later."""


class FatalSourceError(SourceError, RuntimeError):
    """The source cannot continue (credentials, authorization, fenced client): exit for a restart."""


@runtime_checkable
class Source(Protocol):
    """A stream of raw records that can be acknowledged."""

    name: str
    """Short description for logs (``kafka group ingestd``, ``file events.jsonl``)."""

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Return up to ``max_records`` records, waiting at most ``timeout_s`` for the first ones.

        Raises
        ------
        TransientSourceError, FatalSourceError
        """

    @property
    def exhausted(self) -> bool:
        """True once a finite source has nothing more to give (always False for a live topic)."""

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        """Record durably that ``records`` are done (they will not be read again by this source).

        Raises
        ------
        TransientSourceError
            Nothing was acknowledged; retry.
        FatalSourceError
        """

    def pause(self) -> None:
        """Stop fetching (while the engine backs off); :meth:`keepalive` keeps group membership."""

    def resume(self) -> None:
        """Undo :meth:`pause`."""

    def keepalive(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` while paused, serving the group protocol; never returns records."""

    def readiness(self) -> tuple[bool, str]:
        """Whether the source can deliver work now, and why not."""

    def progress(self) -> Progress:
        """How far the source has got."""

    def close(self) -> None:
        """Release clients; does not acknowledge anything."""
