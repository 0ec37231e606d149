"""Smoke tests: each real server of the test bed answers and does what the pipeline needs of it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest
from confluent_kafka import TopicPartition

from ingestd.kafka import KafkaConnection, ensure_topics, make_admin, make_consumer, make_producer
from tests.conftest import PrometheusServer


def _transactional_round_trip(connection: KafkaConnection, topic: str) -> None:
    assert ensure_topics(make_admin(connection), [topic], partitions=3) == [topic]

    producer = make_producer(connection, transactional_id=f"smoke-{uuid.uuid4().hex}")
    producer.init_transactions(30)
    # One aborted transaction (must stay invisible) then one committed transaction.
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=f"k{i}".encode(), value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    consumer = make_consumer(connection, group_id=None, read_committed=True)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < 10 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        seen.append(message.value() or b"")
    consumer.close()
    assert sorted(seen) == sorted(f"committed-{i}".encode() for i in range(10))
    assert b"aborted" not in seen


@pytest.mark.kafka
def test_kafka_central_transactions(
    kafka_central: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """Central (USDF) cluster: a committed transaction is read, an aborted one is not."""
    _transactional_round_trip(kafka_central, unique_name("smoke"))


@pytest.mark.kafka
def test_kafka_local_transactions(kafka_local: KafkaConnection, unique_name: Callable[[str], str]) -> None:
    """Local (DF) cluster: same check, so mirror and daemon both have transactional Kafka."""
    _transactional_round_trip(kafka_local, unique_name("smoke"))


@pytest.mark.postgres
def test_postgres_round_trip(postgres_database: str) -> None:
    """A table can be created, written and read in the per-test database."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id uuid PRIMARY KEY, n int)"))
        conn.execute(sa.text("INSERT INTO t VALUES (gen_random_uuid(), 1), (gen_random_uuid(), 2)"))
        total = conn.execute(sa.text("SELECT sum(n), version() FROM t")).one()
    engine.dispose()
    assert total[0] == 3
    assert "PostgreSQL" in total[1]


@pytest.mark.opensearch
def test_opensearch_index_search_aggregate(opensearch_url: str, unique_name: Callable[[str], str]) -> None:
    """Documents are indexed in bulk, found by search and counted by a terms aggregation."""
    from opensearchpy import OpenSearch, helpers

    client = OpenSearch(hosts=[opensearch_url], timeout=30)
    index = unique_name("smoke").replace(".", "-")
    docs = [{"facility": facility, "n": i} for i, facility in enumerate(["FrDF"] * 3 + ["UKDF"] * 2)]
    ok, errors = helpers.bulk(client, ({"_index": index, "_source": d} for d in docs), refresh="wait_for")
    assert ok == 5
    assert not errors
    hits = client.search(index=index, body={"query": {"term": {"facility.keyword": "FrDF"}}})
    assert hits["hits"]["total"]["value"] == 3
    aggs = client.search(
        index=index, body={"size": 0, "aggs": {"by": {"terms": {"field": "facility.keyword"}}}}
    )
    counts = {b["key"]: b["doc_count"] for b in aggs["aggregations"]["by"]["buckets"]}
    assert counts == {"FrDF": 3, "UKDF": 2}
    client.indices.delete(index=index)


@pytest.mark.prometheus
def test_prometheus_scrapes_exporter(prometheus: PrometheusServer, unique_name: Callable[[str], str]) -> None:
    """Prometheus scrapes a tiny exporter started here, and the query API returns its value."""
    metric = unique_name("smoke").replace(".", "_").replace("-", "_") + "_value"

    class Exporter(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"# TYPE {metric} gauge\n{metric} 42\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        prometheus.scrape(server.server_address[1])
        deadline = time.monotonic() + 30
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            result = prometheus.query(metric)
            if result:
                break
            time.sleep(0.5)
        assert result, f"Prometheus never scraped {metric}: {json.dumps(result)}"
        assert result[0]["value"][1] == "42"  # type: ignore[index]
    finally:
        server.shutdown()
