"""The vocabulary the engine's stages share: positions, planned work, outcomes.

Decoding turns one raw record into exactly one :data:`Planned` item; the engine
executes it and turns it into exactly one :class:`Outcome` (see ARCHITECTURE:
"every event ends in exactly one outcome"). Monitoring observes
:class:`EventReport` objects and never influences the engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Annotations only: importing butler_registry at run time pulls SQLAlchemy and Alembic into
    # every process that imports this vocabulary (the mirror and the publisher through
    # monitoring.metrics), ~0.6 CPU-s at each start for nothing.
    from butler_registry.interface import DatasetRecord, Provenance

__all__ = [
    "ButlerKind",
    "EventReport",
    "EventSummary",
    "ImportDimensions",
    "ImportZip",
    "Outcome",
    "Planned",
    "Position",
    "RegisterDataset",
    "Reject",
    "Skip",
]


class ButlerKind(StrEnum):
    """The ``rubin_butler`` kinds a transfer-done event can carry."""

    data_product = "data_product"
    """A pipeline output with a DatasetRef sidecar."""
    raw_file = "raw_file"
    """A raw exposure file with a DatasetRef sidecar."""
    zip_file = "zip_file"
    """A Butler zip (``retrieve_artifacts_zip``) holding several datasets and their index."""
    dim_file = "dim_file"
    """A Butler export YAML of dimension records."""


class Outcome(StrEnum):
    """What finally became of one event; exactly one per event."""

    registered = "registered"
    """New dataset, dimension records or zip contents committed."""
    already_present = "already_present"
    """Same id and same content were already registered: success."""
    conflict = "conflict"
    """Same id with other content, or same type + data ID + run under another id: dead-lettered."""
    parked = "parked"
    """Waiting for dimension records or a file not yet visible: kept durably and re-driven later."""
    rejected = "rejected"
    """Can never succeed as sent (malformed, unknown kind, path outside its prefix): dead-lettered."""
    skipped = "skipped"
    """An event type or destination this site does not ingest, by configuration: counted only."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a raw record came from, and how its source acknowledges it."""

    source: str
    """``kafka``, ``file``, ``kafka-range``, ``dlq``, ``rucio``."""
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    line: int | None = None
    """1-based line number for a JSONL file source; for a Rucio backfill, the DID's place in the listing."""
    did: str | None = None
    """``scope:name`` of the file, for a source that reads Rucio's catalogue (``rucio``)."""

    def __str__(self) -> str:
        if self.topic is not None:
            return f"{self.topic}[{self.partition}]@{self.offset}"
        if self.did is not None:
            return f"{self.source}:{self.did}"
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class EventSummary:
    """What monitoring and dead letters say about an event, as far as it could be decoded."""

    event_type: str | None = None
    kind: ButlerKind | None = None
    facility: str | None = None
    rse: str | None = None
    scope: str | None = None
    name: str | None = None
    size: int | None = None
    adler32: str | None = None
    md5: str | None = None
    transfer_id: str | None = None
    transferred_at: datetime | None = None
    """When Rucio's transfer finished, UTC; the start of end-to-end latency."""
    dataset_id: uuid.UUID | None = None
    dataset_type: str | None = None
    run: str | None = None


@dataclass(frozen=True, slots=True)
class RegisterDataset:
    """Register one dataset (``data_product``, ``raw_file``)."""

    record: DatasetRecord
    summary: EventSummary


@dataclass(frozen=True, slots=True)
class ImportDimensions:
    """Import the dimension records of a Butler export file (``dim_file``)."""

    path: Path
    provenance: Provenance
    summary: EventSummary


@dataclass(frozen=True, slots=True)
class ImportZip:
    """Register the datasets of a Butler zip (``zip_file``)."""

    path: Path
    provenance: Provenance
    summary: EventSummary


@dataclass(frozen=True, slots=True)
class Skip:
    """Not for this site, by configuration (other event type, destination not ours)."""

    reason: str
    summary: EventSummary


@dataclass(frozen=True, slots=True)
class Reject:
    """Cannot ever succeed as sent; goes to the dead-letter topic with the reason."""

    reason: str
    """Human-readable, names the field or value at fault."""
    error_class: str
    """Bounded identifier of the failure kind (metric label, dead-letter header), e.g. ``invalid_json``."""
    summary: EventSummary


Planned = RegisterDataset | ImportDimensions | ImportZip | Skip | Reject
"""What decoding makes of one raw record."""


@dataclass(frozen=True, slots=True)
class EventReport:
    """The final word on one event, handed to monitoring after the source was acknowledged."""

    position: Position
    outcome: Outcome
    summary: EventSummary
    reason: str | None = None
    error_class: str | None = None
    committed_at: datetime | None = None
    """When the registry transaction (or dead-letter delivery) completed, UTC."""
