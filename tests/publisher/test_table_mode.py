"""Table mode against a real Rucio database (schema and rows made by Rucio itself) and real Kafka."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter, defaultdict
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from ingestd.kafka import KafkaConnection, NewTopic, make_admin
from monitoring.http_server import HealthServer
from monitoring.metrics import PublisherMetrics
from publisher import (
    HEADER_EVENT_TYPE,
    HEADER_MESSAGE_ID,
    HEADER_PUBLISHER,
    HEADER_UNROUTED,
    DatabaseMetadata,
    Enricher,
    KafkaDelivery,
    MessageTable,
    PublisherSettings,
    Router,
    TablePublisher,
    TopicSettings,
    rucio_tables,
    run_publisher,
)

from .support import RucioDatabase, TestTopics, events, read_topics, transfer_done

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def settings_for(
    db: RucioDatabase, kafka: KafkaConnection, topics: TestTopics, **extra: Any
) -> PublisherSettings:
    values: dict[str, Any] = {
        "kafka": kafka,
        "database": {"url": db.url, "services": ["activemq"]},
        "site_map": topics.site_map,
        "http_port": 0,
        "http_host": "127.0.0.1",
        "poll_interval_s": 0.2,
        "instance_id": "test-publisher",
    }
    values.update(extra)
    return PublisherSettings.model_validate(values)


def test_every_message_reaches_its_facility_topic_keyed_and_moves_to_history(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    payloads = (
        [transfer_done(f"frdf/file_{i}.fits") for i in range(60)]
        + [transfer_done(f"frdf/other_{i}.fits", scope="dc2", dst_rse="IN2P3_TAPE") for i in range(20)]
        + [transfer_done(f"ukdf/file_{i}.fits", dst_rse="RAL_BUTLER_DISK") for i in range(30)]
        + [transfer_done(f"ukdf/lancs_{i}.fits", dst_rse="LANCS_BUTLER_DISK") for i in range(10)]
        + [transfer_done("big/sidecar.fits", sidecar_size=6000)]  # > 4000 characters: payload_nolimit
        + [transfer_done("lost/file.fits", dst_rse="CERN_DISK")]  # no facility: catch-all
    )
    # The same file transferred again later: both events must arrive, in order, in one partition.
    payloads.append(transfer_done("frdf/file_0.fits", fields={"transfer-id": "second"}))
    total = len(payloads)
    assert db_rows_after_add(rucio_db, payloads) == total
    nolimit = rucio_db.scalar("SELECT count(*) FROM messages WHERE payload = 'nolimit'")
    assert nolimit == 1
    ids_in_order = [row[0].hex for row in rucio_db.rows("SELECT id FROM messages ORDER BY created_at")]
    stored = {
        row[0].hex: (row[1], row[2], row[3])
        for row in rucio_db.rows("SELECT id, payload, payload_nolimit, created_at FROM messages")
    }

    registry = CollectorRegistry()
    servers: list[HealthServer | None] = []
    code = run_publisher(
        settings_for(rucio_db, kafka_central, test_topics, batch_size=50),
        drain=True,
        registry=registry,
        on_ready=servers.append,
    )
    assert code == 0

    records = read_topics(kafka_central, test_topics.prefix, expected=total)
    assert len(records) == total
    by_id = {r.headers[HEADER_MESSAGE_ID].decode(): r for r in records}
    assert set(by_id) == set(ids_in_order)

    topics = Counter(r.topic for r in records)
    assert topics == {
        test_topics.frdf("IN2P3_BUTLER_DISK", "dp2_prep"): 62,
        test_topics.frdf("IN2P3_TAPE", "dc2"): 20,
        test_topics.ukdf(): 40,
        test_topics.catch_all: 1,
    }
    for record in records:
        envelope = record.envelope()
        payload = envelope["payload"]
        assert record.key == f"{payload['scope']}:{payload['name']}".encode()
        assert envelope["event_type"] == "transfer-done"
        assert envelope["id"] == record.headers[HEADER_MESSAGE_ID].decode()
        assert record.headers[HEADER_EVENT_TYPE] == b"transfer-done"
        assert record.headers[HEADER_PUBLISHER] == b"test-publisher"
        payload_text, payload_nolimit, created_at = stored[envelope["id"]]
        assert json.loads(payload_nolimit if payload_text == "nolimit" else payload_text) == payload
        assert envelope["created_at"] == str(created_at)
    lost = next(r for r in records if r.topic == test_topics.catch_all)
    assert lost.headers[HEADER_UNROUTED] == b"unknown_rse"
    assert (
        len(
            by_id[
                ids_in_order[
                    ids_in_order.index(
                        next(
                            i
                            for i in ids_in_order
                            if by_id[i].envelope()["payload"]["name"] == "big/sidecar.fits"
                        )
                    )
                ]
            ].value
        )
        > 6000
    )

    # One file's events share a partition and keep Rucio's order.
    same_file = sorted((r for r in records if r.key == b"dp2_prep:frdf/file_0.fits"), key=lambda r: r.offset)
    assert len({(r.topic, r.partition) for r in same_file}) == 1
    assert [r.envelope()["payload"]["transfer-id"] for r in same_file][-1] == "second"
    # Keys spread the events over the topic's partitions (HermesK put all into one).
    assert len({r.partition for r in records if r.topic == test_topics.ukdf()}) == 3

    assert rucio_db.scalar("SELECT count(*) FROM messages") == 0
    history = rucio_db.rows(
        "SELECT id, event_type, payload, payload_nolimit, services, created_at, updated_at "
        "FROM messages_history"
    )
    assert sorted(row[0].hex for row in history) == sorted(ids_in_order)
    for row in history:
        assert (row[2], row[3], row[5]) == stored[row[0].hex]
        assert row[4] == "activemq"
        assert row[6] >= row[5]

    delivered = {
        (sample.labels["facility"]): sample.value
        for metric in registry.collect()
        if metric.name == "ingestd_publisher_messages"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["outcome"] == "delivered"
    }
    assert delivered == {"FrDF": 82, "UKDF": 40, "unrouted": 1}
    assert registry.get_sample_value("ingestd_publisher_backlog_messages") == 0


def db_rows_after_add(
    db: RucioDatabase, payloads: list[dict[str, Any]], event_type: str = "transfer-done"
) -> int:
    """Write the events with Rucio's own add_messages; return the rows now in messages."""
    return db.rucio.add_messages(events(payloads, event_type))


def test_rows_of_other_event_types_and_services_stay(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    db_rows_after_add(rucio_db, [transfer_done(f"f{i}") for i in range(5)])
    db_rows_after_add(rucio_db, [transfer_done(f"q{i}") for i in range(3)], event_type="transfer-queued")
    with rucio_db.engine.begin() as connection:  # a row another Hermes service owns
        connection.execute(sa.text("UPDATE messages SET services = 'elastic' WHERE payload LIKE '%\"q0\"%'"))
    db_rows_after_add(rucio_db, [transfer_done("e0")])
    with rucio_db.engine.begin() as connection:
        connection.execute(sa.text("UPDATE messages SET services = 'elastic' WHERE payload LIKE '%\"e0\"%'"))

    assert run_publisher(settings_for(rucio_db, kafka_central, test_topics), drain=True) == 0

    left = rucio_db.rows("SELECT event_type, services FROM messages ORDER BY event_type")
    assert Counter((r[0], r[1]) for r in left) == {
        ("transfer-done", "elastic"): 1,
        ("transfer-queued", "activemq"): 2,
        ("transfer-queued", "elastic"): 1,
    }
    assert rucio_db.scalar("SELECT count(*) FROM messages_history") == 5
    assert len(read_topics(kafka_central, test_topics.prefix, expected=5)) == 5


def test_payloads_are_completed_from_did_metadata_in_one_query_per_batch(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    rucio_db.rucio.add_rses_and_scopes(["IN2P3_BUTLER_DISK"], ["dp2_prep"])
    files = [
        {
            "scope": "dp2_prep",
            "name": f"meta/file_{i}.fits",
            "bytes": 1000 + i,
            "adler32": "0cc0ffee",
            "meta": {"rubin_butler": "raw_file", "rubin_sidecar": json.dumps({"id": f"uuid-{i}"})},
        }
        for i in range(30)
    ]
    rucio_db.rucio.add_files_with_metadata("IN2P3_BUTLER_DISK", files)
    payloads = [transfer_done(f"meta/file_{i}.fits", with_rubin=False) for i in range(30)]
    payloads[0]["rubin_butler"] = "data_product"  # the payload wins over the metadata
    payloads.append(transfer_done("meta/unknown.fits", with_rubin=False))  # no DID: published as it is
    payloads.append(transfer_done("meta/complete.fits"))  # nothing to look up
    db_rows_after_add(rucio_db, payloads)

    tables = rucio_tables()
    engine = sa.create_engine(rucio_db.url, poolclass=sa.NullPool)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    metrics = PublisherMetrics(CollectorRegistry())
    lookup = DatabaseMetadata(tables)
    delivery = KafkaDelivery(kafka_central, TopicSettings(), delivery_timeout_s=30, instance_id="meta-test")
    worker = TablePublisher(
        MessageTable(engine, tables, ["transfer-done"], ["activemq"]),
        Enricher(lookup, ["rubin_butler", "rubin_sidecar"]),
        Router(test_topics.site_map),
        delivery,
        metrics,
        batch_size=10,
        instance_id="meta-test",
    )
    enriched = 0
    batches = 0
    while (result := worker.publish_batch()).taken:
        batches += 1
        enriched += result.enriched
    delivery.close()
    engine.dispose()

    assert batches == 4
    assert lookup.queries == 4  # at most one did_meta query per batch, whatever its size
    assert sum("did_meta" in s for s in statements) == 4
    assert enriched == 30
    records = {
        r.envelope()["payload"]["name"]: r.envelope()["payload"]
        for r in read_topics(kafka_central, test_topics.prefix, expected=32)
    }
    assert len(records) == 32
    assert records["meta/file_1.fits"]["rubin_butler"] == "raw_file"
    assert records["meta/file_1.fits"]["rubin_sidecar"] == json.dumps({"id": "uuid-1"})
    assert records["meta/file_0.fits"]["rubin_butler"] == "data_product"
    assert records["meta/file_0.fits"]["rubin_sidecar"] == json.dumps({"id": "uuid-0"})
    assert "rubin_butler" not in records["meta/unknown.fits"]
    assert records["meta/complete.fits"]["rubin_butler"] == "data_product"


def test_a_record_kafka_refuses_keeps_its_row_and_the_others_flow(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    # A topic that refuses records over 2 kB: the big event fails, the others must not wait for it.
    topic = test_topics.frdf("IN2P3_TAPE", "dp2_prep")
    admin = make_admin(kafka_central)
    future = admin.create_topics([NewTopic(topic, 3, 1, config={"max.message.bytes": "2000"})])[topic]
    future.result(timeout=30)
    payloads = [transfer_done("too/big.fits", dst_rse="IN2P3_TAPE", sidecar_size=8000)]
    payloads += [transfer_done(f"ok/{i}.fits") for i in range(8)]
    db_rows_after_add(rucio_db, payloads)
    big_id = next(row[0] for row in rucio_db.rows("SELECT id FROM messages WHERE payload = 'nolimit'"))

    results: list[Any] = []
    stop = threading.Event()

    def on_batch(result: Any) -> None:
        results.append(result)
        if sum(r.delivered for r in results) >= 8:
            stop.set()

    registry = CollectorRegistry()
    code = run_publisher(
        settings_for(rucio_db, kafka_central, test_topics, batch_size=5),
        stop=stop,
        registry=registry,
        on_batch=on_batch,
    )
    assert code == 0
    assert results[0].failed == 1  # the big record heads the first batch and is refused
    assert sum(r.delivered for r in results) == 8
    left = rucio_db.rows("SELECT id FROM messages")
    assert [row[0] for row in left] == [big_id]  # never deleted without delivery
    assert rucio_db.scalar("SELECT count(*) FROM messages_history") == 8
    failed = registry.get_sample_value(
        "ingestd_publisher_messages_total", {"facility": "FrDF", "outcome": "failed"}
    )
    assert (failed or 0) >= 1
    too_large = registry.get_sample_value("ingestd_publisher_errors_total", {"error": "MSG_SIZE_TOO_LARGE"})
    assert (too_large or 0) >= 1


def test_health_and_metrics_are_served_while_publishing(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    db_rows_after_add(rucio_db, [transfer_done(f"h{i}") for i in range(3)])
    seen: dict[str, Any] = {}
    stop = threading.Event()
    ports: list[int] = []

    def on_ready(server: HealthServer | None) -> None:
        assert server is not None
        ports.append(server.port)

    def on_batch(result: Any) -> None:
        if result.taken:
            return
        base = f"http://127.0.0.1:{ports[0]}"
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            seen["ready"] = json.load(response)
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            seen["metrics"] = response.read().decode()
        stop.set()

    assert (
        run_publisher(
            settings_for(rucio_db, kafka_central, test_topics),
            stop=stop,
            on_ready=on_ready,
            on_batch=on_batch,
        )
        == 0
    )
    assert seen["ready"]["ok"] is True
    assert 'ingestd_publisher_messages_total{facility="FrDF",outcome="delivered"} 3.0' in seen["metrics"]
    assert "ingestd_publisher_batch_duration_seconds_bucket" in seen["metrics"]


def test_missing_rucio_tables_stop_the_publisher_with_a_configuration_error(
    postgres_database: str, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    settings = PublisherSettings.model_validate(
        {
            "kafka": kafka_central,
            "database": {"url": postgres_database},
            "site_map": test_topics.site_map,
            "http_port": None,
        }
    )
    assert run_publisher(settings, drain=True) == 2


def test_per_key_order_is_kept_across_batches(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    # Five events for each of 20 files, interleaved, published in batches of 7.
    payloads = [
        transfer_done(f"order/f{f}.fits", fields={"transfer-id": str(n)}) for n in range(5) for f in range(20)
    ]
    db_rows_after_add(rucio_db, payloads)
    assert run_publisher(settings_for(rucio_db, kafka_central, test_topics, batch_size=7), drain=True) == 0
    records = read_topics(kafka_central, test_topics.prefix, expected=100)
    sequences: dict[bytes | None, list[tuple[int, str]]] = defaultdict(list)
    for record in records:
        sequences[record.key].append((record.offset, record.envelope()["payload"]["transfer-id"]))
    assert len(sequences) == 20
    for seq in sequences.values():
        assert [tid for _, tid in sorted(seq)] == ["0", "1", "2", "3", "4"]
