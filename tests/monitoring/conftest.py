"""Helpers of the monitoring tests: report factories and throw-away OpenSearch indices."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ingestd.work import ButlerKind, EventReport, EventSummary, Outcome, Position

COMMITTED_AT = datetime(2025, 3, 20, 20, 15, 43, 153000, tzinfo=UTC)
"""A fixed ingest time, so daily index names are known in advance."""


def make_report(
    offset: int,
    *,
    outcome: Outcome = Outcome.registered,
    facility: str | None = "FrDF",
    kind: ButlerKind | None = ButlerKind.raw_file,
    size: int | None = 1_000,
    latency_s: float | None = 12.5,
    error_class: str | None = None,
    reason: str | None = None,
    committed_at: datetime | None = COMMITTED_AT,
    topic: str = "IN2P3_BUTLER_DISK-raw",
    dataset_id: uuid.UUID | None = None,
) -> EventReport:
    """Build a final report shaped like the engine's, with a unique dataset id unless one is given."""
    transferred_at = (
        committed_at - timedelta(seconds=latency_s)
        if committed_at is not None and latency_s is not None
        else None
    )
    return EventReport(
        position=Position(source="kafka", topic=topic, partition=offset % 3, offset=offset),
        outcome=outcome,
        summary=EventSummary(
            event_type="transfer-done",
            kind=kind,
            facility=facility,
            rse="IN2P3_BUTLER_DISK",
            scope="raw",
            name=f"LSSTCam/20250320/MC_O_20250320_{offset:06d}.fits",
            size=size,
            adler32="3210cb3f",
            md5="7018315389da34f8e4d1d2d3c57b014a",
            transfer_id=f"ee01ae98-0504-11f0-9b97-{offset:012d}",
            transferred_at=transferred_at,
            dataset_id=dataset_id or uuid.uuid4(),
            dataset_type="raw",
            run="LSSTCam/raw/all",
        ),
        reason=reason,
        error_class=error_class,
        committed_at=committed_at,
    )


@pytest.fixture
def index_prefix(opensearch_url: str, unique_name: Callable[[str], str]) -> Iterator[str]:
    """A unique index prefix on the shared OpenSearch; its indices and template are deleted afterwards."""
    from opensearchpy import OpenSearch

    prefix = unique_name("t-events").lower()
    yield prefix
    client = OpenSearch(hosts=[opensearch_url])
    client.indices.delete(index=f"{prefix}-*", params={"ignore_unavailable": "true"})
    client.indices.delete_index_template(name=prefix, params={"ignore": "404"})
    client.close()
