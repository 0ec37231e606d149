"""One OpenSearch document per event: what campaign managers search, count and chart.

The document is flat where dashboards aggregate (facility, outcome, kind, error
class are keywords at the top level) and omits fields the event did not carry,
so a ``zip_file`` event has no ``dataset_id`` rather than an empty one. Field
names and types are fixed by the index template (:mod:`._template`); a test checks
that every field written here is mapped there.

The document id is derived from what identifies the event, so a retried bulk
request, or a replay of the same transfer, overwrites instead of duplicating. It
starts with the event's transfer time: an explicit id makes OpenSearch look it up in
every segment of the shard before indexing, and a random id (a bare name-based UUID)
makes each lookup read a terms block of every segment, where ids that share a time
prefix with few others are ruled out from the segment's terms index alone
(OpenSearch CPU per document, 200,000 documents into a new index: sent back to back,
as a buffer drains after an outage, 0.16 ms with random ids, 0.06 with time-ordered
ones, 0.053 with auto-generated ones, which cannot make a retry idempotent; at a
steady 4,000 documents/s with Rucio's one-second transfer times, 0.054-0.067 against
0.048-0.057).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import orjson

from ingestd.work import EventReport

__all__ = ["PreparedDocument", "bulk_body", "document_id", "event_document", "index_name", "prepare"]

_ID_NAMESPACE: Final = uuid.UUID("5b0f8a8e-2f4c-4d57-9c4e-6a1d3b7e9f21")
"""Fixed namespace of the document ids' name hash; changing it would duplicate every document."""

REASON_MAX_CHARS: Final = 2000
"""Longest reason kept in a document; operators read the dead-letter topic for the rest."""


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    """A document ready for a bulk request: where it goes, under which id."""

    index: str
    id: str
    source: dict[str, Any]


def _utc(moment: datetime) -> datetime:
    """Return ``moment`` in UTC; naive datetimes are UTC by the project's convention."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@lru_cache(maxsize=4096)
def _iso(moment: datetime) -> str:
    # Memoised: every report of a batch shares its commit time, and a campaign's
    # transfers often share their second; formatting dominated building a document.
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)
_TIME_ID_HASH_DIGITS: Final = 20
"""Hex digits of the name hash after the time prefix (80 bits: events of one millisecond stay apart)."""


def _digest(name: str) -> str:
    return hashlib.sha1(_ID_NAMESPACE.bytes + name.encode(), usedforsecurity=False).hexdigest()


def _uuid5_text(name: str) -> str:
    """``str(uuid.uuid5(_ID_NAMESPACE, name))`` without building the ``UUID`` object (same text)."""
    digest = _digest(name)
    variant = "89ab"[int(digest[16], 16) & 0x3]
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"


def _time_ordered_id(moment: datetime, name: str) -> str:
    """12 hex digits of ``moment`` in milliseconds since 1970 (sorts as time does), then the name's hash."""
    milliseconds = max((_utc(moment) - _EPOCH) // _MILLISECOND, 0)
    return f"{milliseconds:012x}{_digest(name)[:_TIME_ID_HASH_DIGITS]}"


def document_id(report: EventReport) -> str:
    """Return the stable document id of ``report``.

    The event is identified by its dataset id and Rucio transfer id when it has
    either (the same transfer replayed gives the same id), else by its source
    position; the outcome is part of the id, so a parked event that is later
    registered keeps both documents. An event with a transfer time gets a
    time-ordered id (its transfer time, which a replay carries unchanged, then the
    hash); one without (a record that could not be decoded) a name-based UUID.
    """
    summary = report.summary
    if summary.dataset_id is not None or summary.transfer_id is not None:
        key = f"event|{summary.dataset_id or '-'}|{summary.transfer_id or '-'}|{summary.scope}:{summary.name}"
    else:
        key = f"position|{report.position}"
    name = f"{key}|{report.outcome}"
    if summary.transferred_at is None:
        return _uuid5_text(name)
    return _time_ordered_id(summary.transferred_at, name)


@lru_cache(maxsize=1024)
def index_name(prefix: str, ingested_at: datetime) -> str:
    """Return the daily index of a document ingested at ``ingested_at`` (UTC date)."""
    return f"{prefix}-{_utc(ingested_at):%Y.%m.%d}"


_PLAIN_ID: Final = re.compile(r"[0-9A-Za-z_-]{1,512}")
"""Ids written into the action line as they are (ids are at most 512 bytes in OpenSearch)."""


@lru_cache(maxsize=64)
def _action_head(index: str) -> bytes:
    """The action line of a document of ``index`` up to its id: ``{"index":{"_index":"...","_id":"``."""
    line = orjson.dumps({"index": {"_index": index, "_id": ""}})
    return line[: -len(b'"}}')]


def bulk_body(documents: Iterable[PreparedDocument]) -> bytes:
    """The NDJSON body of a bulk request indexing ``documents`` (an action line, then the source).

    Serialised here with orjson, several times faster than the client's own
    serialiser, which was a large part of the sink's time per event.
    """
    lines: list[bytes] = []
    for document in documents:
        identifier = document.id
        if _PLAIN_ID.fullmatch(identifier):  # every id document_id makes: no JSON escaping to do
            lines.append(_action_head(document.index) + identifier.encode() + b'"}}')
        else:
            lines.append(orjson.dumps({"index": {"_index": document.index, "_id": identifier}}))
        lines.append(orjson.dumps(document.source))
    lines.append(b"")
    return b"\n".join(lines)


def event_document(
    report: EventReport, *, ingested_at: datetime, host: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """Return the document body for ``report``.

    Parameters
    ----------
    report
        The event's final report.
    ingested_at
        When it was ingested: the registry commit when known, else when the sink
        received it.
    host, version
        Which daemon reported it, for operators comparing facilities.
    """
    summary = report.summary
    position = report.position
    document: dict[str, Any] = {
        "@timestamp": _iso(ingested_at),
        "ingested_at": _iso(ingested_at),
        "outcome": str(report.outcome),
        "position": str(position),
        "source": {
            key: value
            for key, value in (
                ("type", position.source),
                ("topic", position.topic),
                ("partition", position.partition),
                ("offset", position.offset),
                ("line", position.line),
            )
            if value is not None
        },
    }
    optional: dict[str, Any] = {
        "event_type": summary.event_type,
        "kind": str(summary.kind) if summary.kind is not None else None,
        "facility": summary.facility,
        "rse": summary.rse,
        "scope": summary.scope,
        "name": summary.name,
        "did": f"{summary.scope}:{summary.name}" if summary.scope and summary.name else None,
        "size_bytes": summary.size,
        "adler32": summary.adler32,
        "md5": summary.md5,
        "transfer_id": summary.transfer_id,
        "dataset_id": str(summary.dataset_id) if summary.dataset_id is not None else None,
        "dataset_type": summary.dataset_type,
        "run": summary.run,
        "error_class": report.error_class,
        "reason": report.reason[:REASON_MAX_CHARS] if report.reason else None,
        "host": host,
        "ingestd_version": version,
    }
    if summary.transferred_at is not None:
        optional["transferred_at"] = _iso(summary.transferred_at)
        latency = (_utc(ingested_at) - _utc(summary.transferred_at)).total_seconds()
        optional["latency_seconds"] = round(max(latency, 0.0), 3)
    document.update({key: value for key, value in optional.items() if value is not None})
    return document


def prepare(
    report: EventReport,
    *,
    prefix: str,
    received_at: datetime,
    host: str | None = None,
    version: str | None = None,
) -> PreparedDocument:
    """Turn a report into a document with its index and id.

    ``received_at`` stands in for the ingest time when the report has no commit
    time (a skipped event commits nothing).
    """
    ingested_at = report.committed_at or received_at
    return PreparedDocument(
        index=index_name(prefix, ingested_at),
        id=document_id(report),
        source=event_document(report, ingested_at=ingested_at, host=host, version=version),
    )
