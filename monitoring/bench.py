"""Measure the event sink: what ``submit`` costs the engine, and how fast documents reach OpenSearch.

The promise measured is ARCHITECTURE rule 3: monitoring never slows ingest. With
OpenSearch unreachable, handing over a batch of reports must cost microseconds
per report whatever the outage; with OpenSearch up, the background thread must
index faster than the daemon registers (targets below), so the buffer stays
near empty in steady state.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from prometheus_client import CollectorRegistry

from ingestd.work import ButlerKind, EventReport, EventSummary, Outcome, Position

from .metrics import IngestMetrics
from .opensearch import EventSink, OpenSearchSettings

__all__ = ["TARGETS", "bench_sink", "synthetic_reports"]

TARGETS: Final = {
    "submit_us_per_report_max": 5.0,
    "indexed_per_s_min": 5000.0,
}
"""Targets on a 2-core machine: submit well under the ~30 µs/event a registry insert costs; indexing above
the daemon's steady-state registration rate."""


def synthetic_reports(count: int, *, facility: str = "FrDF", topic: str = "bench") -> list[EventReport]:
    """Return ``count`` registered-event reports shaped like real raw-file events."""
    now = datetime.now(UTC)
    reports = []
    for offset in range(count):
        dataset_id = uuid.uuid4()
        reports.append(
            EventReport(
                position=Position(source="kafka", topic=topic, partition=offset % 3, offset=offset),
                outcome=Outcome.registered,
                summary=EventSummary(
                    event_type="transfer-done",
                    kind=ButlerKind.raw_file,
                    facility=facility,
                    rse="IN2P3_BUTLER_DISK",
                    scope="raw",
                    name=f"LSSTCam/20250320/MC_O_20250320_{offset:06d}/MC_O_20250320_{offset:06d}_R22_S11.fits",
                    size=18_000_000 + offset,
                    adler32=f"{offset:08x}",
                    transfer_id=str(uuid.uuid4()),
                    transferred_at=now - timedelta(seconds=5),
                    dataset_id=dataset_id,
                    dataset_type="raw",
                    run="LSSTCam/raw/all",
                ),
                committed_at=now,
            )
        )
    return reports


def bench_sink(
    settings: OpenSearchSettings, *, reports: int, batch: int = 500, wait_s: float = 120.0
) -> dict[str, Any]:
    """Submit ``reports`` in batches of ``batch`` and wait up to ``wait_s`` for them to be indexed.

    Returns a JSON-ready result: submit cost per report, time to drain, indexed
    rate, and the sink's counters (dropped > 0 when OpenSearch was unreachable
    or the buffer too small).
    """
    registry = CollectorRegistry()
    sink = EventSink(settings, IngestMetrics(registry))
    data = synthetic_reports(reports)
    sink.start()
    submit_ns = 0
    started = time.perf_counter()
    for index in range(0, len(data), batch):
        chunk = data[index : index + batch]
        before = time.perf_counter_ns()
        sink.submit(chunk)
        submit_ns += time.perf_counter_ns() - before
    drained = sink.flush(wait_s)
    elapsed = time.perf_counter() - started
    sink.close(timeout_s=1.0)
    stats = sink.stats()
    per_report_us = submit_ns / 1000 / max(reports, 1)
    indexed_per_s = stats.indexed / elapsed if elapsed > 0 else 0.0
    return {
        "benchmark": "opensearch_sink",
        "reports": reports,
        "batch": batch,
        "opensearch_reachable": stats.reachable,
        "submit_total_ms": round(submit_ns / 1e6, 3),
        "submit_us_per_report": round(per_report_us, 3),
        "drained": drained,
        "elapsed_s": round(elapsed, 3),
        "indexed": stats.indexed,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "indexed_per_s": round(indexed_per_s, 1),
        "targets": TARGETS,
        "meets_submit_target": per_report_us <= TARGETS["submit_us_per_report_max"],
        "meets_index_target": (not stats.reachable) or indexed_per_s >= TARGETS["indexed_per_s_min"],
    }
