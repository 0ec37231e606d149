"""``ingestd bench pending``: what parked events cost the registry database.

Events waiting for dimension records are rows in the registry database (see
:mod:`butler_registry._pending`). Every daemon asks "which parked events wait only
for records that now exist" every ``park_poll_interval_s``, so that question must
stay cheap however many events are parked; and when a ``dim_file`` brings the
records of a whole visit, its events must come out fast. This benchmark, on a fresh
PostgreSQL database:

1. parks ``--events`` events, each waiting for the ``visit`` record of one of
   ``--visits`` visits, in batches of ``--batch`` (one transaction each, as the daemon
   does per batch) — ``park_rows_per_s``;
2. times the queries a daemon runs while nothing has arrived: the poll
   (``claim_ready`` + ``claim_due``), the gauge (``summary``) and ``ingestd pending``
   (``groups``) — median milliseconds of ``--repeat`` runs;
3. inserts the records of one visit (rows in ``dimension_record``, as an import
   writes them) and times the poll that finds its events;
4. inserts every other visit's record and drains the store as the daemon does
   (claim ``--batch`` events, release them) — ``drain_events_per_s``.

The engine's own work on the re-driven events (registering them) is not included:
``ingestd bench ingest`` measures that. Standard output carries one JSON document;
nothing is asserted. Targets: a poll under 50 ms with 100,000 events parked, park and
drain above 10,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

_DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:15432/postgres"


def register(subparsers: Any) -> None:
    """Add ``ingestd bench pending``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pending",
        help="parked events in the registry database: park, poll and drain costs; prints JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=100_000, metavar="N", help="events to park")
    parser.add_argument("--visits", type=int, default=1_000, metavar="V", help="distinct visits awaited")
    parser.add_argument("--batch", type=int, default=2_000, metavar="B", help="events per park/claim call")
    parser.add_argument("--repeat", type=int, default=5, metavar="R", help="runs of each timed query")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("INGESTD_TEST_POSTGRES_URL", _DEFAULT_POSTGRES),
        help="PostgreSQL server URL with the right to create databases (default: the test bed)",
    )
    parser.set_defaults(func=run)


@contextmanager
def _fresh_database(server_url: str) -> Iterator[str]:
    import psycopg

    name = f"bench_pending_{uuid.uuid4().hex[:8]}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield "postgresql+psycopg://" + admin.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _median_ms(action: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings) * 1_000, 2)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its JSON document."""
    import sqlalchemy as sa

    from butler_registry import open_registry
    from butler_registry._pending import PendingEvent, PendingStore, WaitKey
    from butler_registry._records import data_key
    from butler_registry._schema import DIMENSION_RECORD

    if min(args.events, args.visits, args.batch, args.repeat) < 1:
        print(
            "ingestd bench pending: --events, --visits, --batch and --repeat must be positive",
            file=sys.stderr,
        )
        return 2
    report: dict[str, Any] = {
        "bench": "pending",
        "events": args.events,
        "visits": args.visits,
        "batch": args.batch,
    }
    now = datetime.now(UTC)

    def visit(number: int) -> WaitKey:
        return WaitKey("visit", data_key(["BENCH", number]))

    def event(index: int) -> PendingEvent:
        return PendingEvent(
            key=f"dataset:{uuid.UUID(int=index + 1)}",
            value=b'{"bench": %d}' % index,
            source="kafka",
            topic="bench",
            partition=index % 3,
            offset=index,
            error_class="missing_dimensions",
            reason=f"missing dimension records visit:BENCH/{index % args.visits}",
            first_parked_at=now,
            next_attempt_at=now + timedelta(hours=1),
            waits=(visit(index % args.visits),),
        )

    def arrive(connection: sa.Connection, numbers: range) -> None:
        rows = [
            {"element": "visit", "data_key": visit(n).data_key, "record": {"instrument": "BENCH", "id": n}}
            for n in numbers
        ]
        for start in range(0, len(rows), 5_000):
            connection.execute(sa.insert(DIMENSION_RECORD), rows[start : start + 5_000])

    with _fresh_database(args.postgres) as url, open_registry(url, create=True) as registry:
        store = PendingStore(registry.engine)
        started = time.perf_counter()
        for start in range(0, args.events, args.batch):
            store.park([event(i) for i in range(start, min(start + args.batch, args.events))])
        seconds = time.perf_counter() - started
        report["park_s"] = round(seconds, 3)
        report["park_rows_per_s"] = round(args.events / seconds)
        with registry.engine.begin() as connection:
            connection.execute(sa.text("ANALYZE"))

        def poll() -> None:
            assert store.claim_ready(args.batch, lease_s=30) == []
            assert store.claim_due(args.batch, lease_s=30) == []

        report["poll_nothing_ready_ms"] = _median_ms(poll, args.repeat)
        report["summary_ms"] = _median_ms(store.summary, args.repeat)
        report["groups_ms"] = _median_ms(lambda: store.groups(50), args.repeat)

        with registry.engine.begin() as connection:
            arrive(connection, range(1))
        started = time.perf_counter()
        first = store.claim_ready(args.batch, lease_s=30)
        report["poll_one_visit_arrived_ms"] = round((time.perf_counter() - started) * 1_000, 2)
        report["events_of_that_visit"] = len(first)
        store.release((e.key, e.attempts) for e in first)

        with registry.engine.begin() as connection:
            arrive(connection, range(1, args.visits))
        drained = len(first)
        started = time.perf_counter()
        while True:
            taken = store.claim_ready(args.batch, lease_s=30)
            if not taken:
                break
            store.release((e.key, e.attempts) for e in taken)
            drained += len(taken)
        seconds = time.perf_counter() - started
        report["drained"] = drained
        report["drain_s"] = round(seconds, 3)
        report["drain_events_per_s"] = round((drained - len(first)) / seconds) if seconds > 0 else None
        report["left_parked"] = store.summary().events
    print(json.dumps(report))
    return 0
