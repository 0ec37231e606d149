"""Reconciliation: every generated event accounted for at every hop, counted exactly, at any size.

After a run (clean, or with services killed and servers restarted), the evidence of
each hop is copied into a scratch PostgreSQL database next to the ledger:

==========================  ============================================================
hop                          evidence
==========================  ============================================================
Rucio                        ``messages`` (rows still waiting) and ``messages_history``
                             (rows published), by DID
central Kafka                every record of the run's topics (``read_committed``): topic,
                             key (``scope:name``), Rucio message id
local Kafka                  the same for the facility's mirrored topics
registry                     dataset ids (``dataset``), exposures (``dimension_record``)
dead letters                 records of the dead-letter and retry topics, with their
                             ``ingestd.error_class`` and ``ingestd.reason``
==========================  ============================================================

and compared with the ledger by SQL set operations, so a million events cost a few
COPY streams, not a million-element Python set. The verdict separates what the
guarantees forbid (an event lost anywhere, a dataset registered twice or never, a
mirrored record duplicated or dropped by the mirror) from what they allow and only
count (the publisher's at-least-once re-sends after a kill, which the registry's
idempotence absorbs).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from ingestd.kafka import KafkaConnection, make_consumer

from ._ledger import Ledger

__all__ = ["KafkaEvidence", "ReconciliationError", "ReconciliationReport", "reconcile", "scratch_database"]

_HEADER_MESSAGE_ID = "rucio-message-id"
_HEADER_ERROR_CLASS = "ingestd.error_class"
_HEADER_REASON = "ingestd.reason"


class ReconciliationError(AssertionError):
    """An event was lost or duplicated somewhere; the message lists every finding."""


def plain_url(url: str) -> str:
    """A libpq URL from a SQLAlchemy one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def database_url(server_url: str, database: str) -> str:
    """The URL of ``database`` on the server of ``server_url``."""
    base = plain_url(server_url).rsplit("/", 1)[0]
    return f"{base}/{database}"


@contextlib.contextmanager
def scratch_database(server_url: str, name: str | None = None, *, keep: bool = False) -> Iterator[str]:
    """A new empty database on the server; dropped afterwards unless ``keep``. Yields its libpq URL."""
    name = name or f"e2e_scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(plain_url(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(server_url, name)
    finally:
        if not keep:
            with psycopg.connect(plain_url(server_url), autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True, slots=True)
class KafkaEvidence:
    """Which topics of one cluster to read, and under which label (``central``, ``local``, ``dlq``)."""

    label: str
    connection: KafkaConnection
    topics: Sequence[str]


@dataclass
class HopCount:
    """Records (or rows) seen at one hop, against what was expected there."""

    expected: int
    seen: int
    distinct: int
    missing: int
    duplicates: int
    unexpected: int


@dataclass
class ReconciliationReport:
    """The findings; :attr:`problems` is empty when nothing was lost or duplicated."""

    events: int
    facility_events: int
    rucio_waiting: int
    rucio: HopCount
    central: HopCount
    local: HopCount
    mirror_mismatched_keys: int
    registry: HopCount
    dimension_files: HopCount
    dead_letters: int
    dead_letter_classes: dict[str, int]
    parked_records: int = 0
    """Records written to the retry topic (events parked and retried later)."""
    first_central_record_ms: int | None = None
    """Timestamp (epoch ms) of the earliest record on the central cluster: when publishing began."""
    latency_breakdown: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per hop, seconds at p50/p99: ``transferred_at`` → central record (Rucio + publisher), central
    record → registry transaction (mirror + daemon). Meaningful when events flow at a steady rate."""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        """Datasets and dimension files the facility's registry should hold and does not."""
        return self.registry.missing + self.dimension_files.missing

    @property
    def duplicated(self) -> int:
        """Registrations beyond one per expected item (extra datasets, extra rows per id)."""
        return self.registry.duplicates + self.registry.unexpected

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        data = asdict(self)
        data["lost"] = self.lost
        data["duplicated"] = self.duplicated
        return data

    def assert_exact(self) -> None:
        """Raise :class:`ReconciliationError` listing every problem, if there is any."""
        if self.problems:
            raise ReconciliationError("reconciliation failed:\n  - " + "\n  - ".join(self.problems))


_SCHEMA = """
CREATE TABLE expected_event (idx int PRIMARY KEY, facility text, kind text, topic text, did text,
                             transfer_id text);
CREATE TABLE expected_dataset (id uuid PRIMARY KEY, idx int);
CREATE TABLE expected_dimension (instrument text, exposure bigint, idx int);
CREATE TABLE rucio_row (state text, id uuid, did text);
CREATE TABLE kafka_record (label text, topic text, part int, off bigint, did text, message_id text,
                           error_class text, reason text, ts bigint);
CREATE TABLE registry_dataset (id uuid, ingest_date timestamptz, event_time timestamptz, did text);
CREATE TABLE registry_exposure (instrument text, exposure bigint);
"""


def _load_ledger(connection: psycopg.Connection[Any], ledger: Ledger) -> None:
    with connection.cursor() as cursor:
        with cursor.copy("COPY expected_event FROM STDIN") as copy:
            for row in ledger.rows():
                copy.write_row((row.index, row.facility, row.kind, row.topic, row.did, row.transfer_id))
        with cursor.copy("COPY expected_dataset FROM STDIN") as copy:
            for row in ledger.rows():
                for dataset_id in row.dataset_ids:
                    copy.write_row((dataset_id, row.index))
        with cursor.copy("COPY expected_dimension FROM STDIN") as copy:
            for row in ledger.rows():
                if row.dimension_key:
                    instrument, exposure = row.dimension_key.split(":", 1)[1].split("/")
                    copy.write_row((instrument, int(exposure), row.index))


def _load_rucio(connection: psycopg.Connection[Any], rucio_url: str) -> None:
    query = """
        COPY (SELECT '{state}', id,
                     (coalesce(payload_nolimit, payload)::jsonb ->> 'scope') || ':' ||
                     (coalesce(payload_nolimit, payload)::jsonb ->> 'name')
              FROM {table}) TO STDOUT
    """
    with psycopg.connect(plain_url(rucio_url)) as rucio, connection.cursor() as cursor:
        for state, table in (("waiting", "messages"), ("published", "messages_history")):
            with (
                rucio.cursor().copy(query.format(state=state, table=table)) as source,
                cursor.copy("COPY rucio_row FROM STDIN") as target,
            ):
                for block in source:
                    target.write(block)


def _load_registry(connection: psycopg.Connection[Any], registry_url: str) -> None:
    with psycopg.connect(plain_url(registry_url)) as registry, connection.cursor() as cursor:
        with (
            registry.cursor().copy(
                "COPY (SELECT id, ingest_date, event_time, rucio_scope || ':' || rucio_name "
                "FROM dataset) TO STDOUT"
            ) as source,
            cursor.copy("COPY registry_dataset FROM STDIN") as target,
        ):
            for block in source:
                target.write(block)
        rows = registry.execute("SELECT data_key FROM dimension_record WHERE element = 'exposure'").fetchall()
        with cursor.copy("COPY registry_exposure FROM STDIN") as copy:
            for (data_key,) in rows:
                instrument, exposure = json.loads(data_key)
                copy.write_row((instrument, int(exposure)))


def _load_kafka(connection: psycopg.Connection[Any], evidence: KafkaEvidence, timeout_s: float) -> None:
    from confluent_kafka import TopicPartition

    consumer = make_consumer(
        evidence.connection, None, read_committed=True, overrides={"fetch.wait.max.ms": 50}
    )
    try:
        existing = consumer.list_topics(timeout=15).topics
        ends: dict[tuple[str, int], int] = {}
        for topic in evidence.topics:
            if topic not in existing:
                continue
            for partition in existing[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
                if high > low:
                    ends[(topic, partition)] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, partition, 0) for topic, partition in ends])
        done: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout_s
        with connection.cursor() as cursor, cursor.copy("COPY kafka_record FROM STDIN") as copy:
            while len(done) < len(ends):
                if time.monotonic() > deadline:
                    raise ReconciliationError(
                        f"{evidence.label}: could not read to the end of {sorted(set(ends) - done)} "
                        f"within {timeout_s:.0f} s (an open transaction?)"
                    )
                for message in consumer.consume(5000, 0.3):
                    if message.error() is not None:
                        continue
                    headers = _headers(message.headers())
                    copy.write_row(
                        (
                            evidence.label,
                            message.topic(),
                            message.partition(),
                            message.offset(),
                            _text(message.key()),
                            headers.get(_HEADER_MESSAGE_ID) or None,
                            headers.get(_HEADER_ERROR_CLASS) or None,
                            headers.get(_HEADER_REASON, "")[:500] or None,
                            message.timestamp()[1],
                        )
                    )
                pending = [TopicPartition(t, p) for t, p in ends if (t, p) not in done]
                for position in consumer.position(pending):
                    if position.offset >= ends[(position.topic, position.partition)]:
                        done.add((position.topic, position.partition))
    finally:
        consumer.close()


def _text(value: str | bytes | None) -> str:
    """A key or header value as text (absent: empty)."""
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _headers(
    raw: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> dict[str, str]:
    """Record headers as text, whichever form the client returns them in."""
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {name: _text(value) for name, value in items}


def _one(connection: psycopg.Connection[Any], sql: str) -> int:
    row = connection.execute(sql).fetchone()
    return int(row[0] or 0) if row else 0


def _hop(connection: psycopg.Connection[Any], expected_sql: str, seen_sql: str) -> HopCount:
    """Compare a multiset of seen keys with the set of expected keys (both given as ``SELECT key``)."""
    connection.execute(f"CREATE TEMP TABLE hop_expected AS {expected_sql}")
    connection.execute(f"CREATE TEMP TABLE hop_seen AS {seen_sql}")
    try:
        return HopCount(
            expected=_one(connection, "SELECT count(*) FROM hop_expected"),
            seen=_one(connection, "SELECT count(*) FROM hop_seen"),
            distinct=_one(connection, "SELECT count(DISTINCT key) FROM hop_seen"),
            missing=_one(
                connection,
                "SELECT count(*) FROM hop_expected e WHERE NOT EXISTS "
                "(SELECT 1 FROM hop_seen s WHERE s.key = e.key)",
            ),
            duplicates=_one(connection, "SELECT count(*) - count(DISTINCT key) FROM hop_seen"),
            unexpected=_one(
                connection,
                "SELECT count(DISTINCT key) FROM hop_seen s WHERE NOT EXISTS "
                "(SELECT 1 FROM hop_expected e WHERE e.key = s.key)",
            ),
        )
    finally:
        connection.execute("DROP TABLE hop_expected")
        connection.execute("DROP TABLE hop_seen")


def reconcile(
    ledger: Ledger,
    *,
    scratch_url: str,
    rucio_url: str,
    registry_url: str,
    central: KafkaEvidence,
    local: KafkaEvidence,
    dead_letters: KafkaEvidence | None = None,
    retries: KafkaEvidence | None = None,
    facility: str = "FrDF",
    expected_dead_letters: int = 0,
    kafka_timeout_s: float = 120.0,
) -> ReconciliationReport:
    """Gather the evidence of every hop into ``scratch_url`` and compare it with the ledger.

    Parameters
    ----------
    ledger
        What was generated.
    scratch_url
        An empty database to work in (see :func:`scratch_database`).
    rucio_url, registry_url
        The run's Rucio database and the facility's registry.
    central, local
        The topics to read on each cluster (``local`` holds the facility's mirrored topics,
        under the same names).
    dead_letters
        The daemon's dead-letter topic (label it ``dlq``).
    retries
        The daemon's retry (parking) topic (label it ``retry``): counted, not judged, since an
        event parked for a while and registered later is correct.
    facility
        The facility whose mirror and daemon ran.
    expected_dead_letters
        How many events were generated to be dead-lettered (hostile runs); 0 for clean data.

    Returns
    -------
    report
        With :attr:`~ReconciliationReport.problems` listing every violated guarantee.
    """
    began = time.monotonic()
    with psycopg.connect(plain_url(scratch_url), autocommit=True) as connection:
        connection.execute(_SCHEMA)
        _load_ledger(connection, ledger)
        _load_rucio(connection, rucio_url)
        _load_registry(connection, registry_url)
        for evidence in (central, local, dead_letters, retries):
            if evidence is not None:
                _load_kafka(connection, evidence, kafka_timeout_s)
        connection.execute("CREATE INDEX ON kafka_record (label, did)")
        connection.execute("ANALYZE")

        facility_literal = facility.replace("'", "''")
        rucio = _hop(
            connection,
            "SELECT did AS key FROM expected_event",
            "SELECT did AS key FROM rucio_row WHERE state = 'published'",
        )
        waiting = _one(connection, "SELECT count(*) FROM rucio_row WHERE state = 'waiting'")
        central_hop = _hop(
            connection,
            "SELECT topic || '|' || did AS key FROM expected_event",
            "SELECT topic || '|' || did AS key FROM kafka_record WHERE label = 'central'",
        )
        local_hop = _hop(
            connection,
            f"SELECT topic || '|' || did AS key FROM expected_event WHERE facility = '{facility_literal}'",
            "SELECT topic || '|' || did AS key FROM kafka_record WHERE label = 'local'",
        )
        mirror_mismatch = _one(
            connection,
            """
            SELECT count(*) FROM (
                SELECT topic, did, count(*) AS n FROM kafka_record WHERE label = 'central'
                  AND topic IN (SELECT DISTINCT topic FROM expected_event WHERE facility = '"""
            + facility_literal
            + """')
                GROUP BY topic, did
            ) c FULL JOIN (
                SELECT topic, did, count(*) AS n FROM kafka_record WHERE label = 'local' GROUP BY topic, did
            ) l USING (topic, did)
            WHERE coalesce(c.n, 0) <> coalesce(l.n, 0)
            """,
        )
        registry = _hop(
            connection,
            "SELECT id::text AS key FROM expected_dataset",
            "SELECT id::text AS key FROM registry_dataset",
        )
        dimensions = _hop(
            connection,
            "SELECT instrument || '/' || exposure AS key FROM expected_dimension",
            "SELECT instrument || '/' || exposure AS key FROM registry_exposure r WHERE EXISTS "
            "(SELECT 1 FROM expected_dimension e "
            "WHERE e.instrument = r.instrument AND e.exposure = r.exposure)",
        )
        dead = _one(connection, "SELECT count(*) FROM kafka_record WHERE label = 'dlq'")
        parked = _one(connection, "SELECT count(*) FROM kafka_record WHERE label = 'retry'")
        classes = {
            str(name): int(count)
            for name, count in connection.execute(
                "SELECT coalesce(error_class, '?'), count(*) FROM kafka_record WHERE label = 'dlq' "
                "GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        }

        breakdown = _latency_breakdown(connection)
        first_central = connection.execute(
            "SELECT min(ts) FROM kafka_record WHERE label = 'central' AND ts > 0"
        ).fetchone()

    report = ReconciliationReport(
        events=ledger.events,
        facility_events=ledger.facility_events,
        rucio_waiting=waiting,
        rucio=rucio,
        central=central_hop,
        local=local_hop,
        mirror_mismatched_keys=mirror_mismatch,
        registry=registry,
        dimension_files=dimensions,
        dead_letters=dead,
        dead_letter_classes=classes,
        parked_records=parked,
        latency_breakdown=breakdown,
        first_central_record_ms=int(first_central[0]) if first_central and first_central[0] else None,
        seconds=round(time.monotonic() - began, 2),
    )
    report.problems.extend(_problems(report, expected_dead_letters))
    return report


def _latency_breakdown(connection: psycopg.Connection[Any]) -> dict[str, dict[str, float | None]]:
    """Percentiles of the time spent before and after the central cluster, per registered dataset."""
    rows = connection.execute(
        """
        WITH central AS (
            SELECT did, to_timestamp(min(ts) / 1000.0) AS at FROM kafka_record
            WHERE label = 'central' AND ts > 0 GROUP BY did
        ), hops AS (
            SELECT extract(epoch FROM central.at - r.event_time) AS to_central,
                   extract(epoch FROM r.ingest_date - central.at) AS to_registry
            FROM registry_dataset r JOIN central USING (did) WHERE r.event_time IS NOT NULL
        )
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY to_central),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY to_central),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY to_registry),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY to_registry)
        FROM hops
        """
    ).fetchone()

    def rounded(value: Any) -> float | None:
        return None if value is None else round(float(value), 4)

    if rows is None:
        return {}
    return {
        "rucio_to_central": {"p50_s": rounded(rows[0]), "p99_s": rounded(rows[1])},
        "central_to_registry": {"p50_s": rounded(rows[2]), "p99_s": rounded(rows[3])},
    }


def _problems(report: ReconciliationReport, expected_dead_letters: int) -> Iterator[str]:
    if report.rucio_waiting:
        yield f"Rucio: {report.rucio_waiting} rows still in messages (never published)"
    if report.rucio.missing or report.rucio.unexpected or report.rucio.duplicates:
        yield (
            f"Rucio: messages_history holds {report.rucio.distinct} of {report.rucio.expected} events "
            f"({report.rucio.missing} missing, {report.rucio.duplicates} repeated, "
            f"{report.rucio.unexpected} unknown)"
        )
    if report.central.missing or report.central.unexpected:
        yield (
            f"central Kafka: {report.central.missing} events never published to their topic, "
            f"{report.central.unexpected} records nobody generated"
        )
    if report.local.missing or report.local.unexpected:
        yield (
            f"local Kafka: {report.local.missing} of the facility's events never mirrored, "
            f"{report.local.unexpected} unexpected records"
        )
    if report.mirror_mismatched_keys:
        yield (
            f"mirror: {report.mirror_mismatched_keys} events have a different number of copies on the local "
            "cluster than on the central one (exactly-once broken)"
        )
    if report.registry.missing:
        yield f"registry: {report.registry.missing} of {report.registry.expected} datasets lost"
    if report.registry.unexpected or report.registry.duplicates:
        yield (
            f"registry: {report.registry.unexpected} datasets nobody generated, "
            f"{report.registry.duplicates} registered twice"
        )
    if report.dimension_files.missing:
        yield (
            f"registry: {report.dimension_files.missing} of {report.dimension_files.expected} "
            "dimension files "
            "never imported"
        )
    if report.dead_letters != expected_dead_letters:
        yield (
            f"dead letters: {report.dead_letters} found, {expected_dead_letters} expected "
            f"(classes: {report.dead_letter_classes})"
        )
