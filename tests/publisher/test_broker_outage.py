"""Kafka away for 30 s: rows stay in Rucio's table, publishing resumes by itself.

The broker is a PRIVATE Kafka node started for this test (the shared test-bed
clusters are never stopped). Outage length: ``INGESTD_TEST_BROKER_OUTAGE_S``
(default 30, the acceptance figure).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.local import private_kafka as start_private_kafka
from deploy.local.kafka_node import KafkaNode
from ingestd.kafka import KafkaConnection
from monitoring.http_server import HealthServer
from publisher import HEADER_MESSAGE_ID, PublisherSettings, run_publisher

from .support import RucioDatabase, events, make_site_map, read_topics, transfer_done

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def private_kafka() -> Iterator[KafkaNode]:
    """A one-node Kafka cluster of this test alone, which it stops and starts (never a shared one)."""
    with start_private_kafka(f"outage-{uuid.uuid4().hex[:6]}") as node:
        yield node


def _readiness(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            body: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
    return body


def test_rows_stay_while_the_broker_is_away_and_publishing_resumes_by_itself(
    rucio_db: RucioDatabase, private_kafka: KafkaNode
) -> None:
    outage_s = float(os.environ.get("INGESTD_TEST_BROKER_OUTAGE_S", "30"))
    kafka = KafkaConnection(bootstrap_servers=f"127.0.0.1:{private_kafka.port}")
    prefix = f"outage.{uuid.uuid4().hex[:8]}"
    site_map = make_site_map(prefix)
    settings = PublisherSettings.model_validate(
        {
            "kafka": kafka,
            "database": {"url": rucio_db.url, "services": ["activemq"]},
            "site_map": site_map,
            "http_port": 0,
            "http_host": "127.0.0.1",
            "poll_interval_s": 0.2,
            "delivery_timeout_s": 5,
            "max_backoff_s": 4,
            "topics": {"partitions": 3, "replication_factor": 1},
        }
    )
    ports: list[int] = []

    def on_ready(server: HealthServer | None) -> None:
        assert server is not None
        ports.append(server.port)

    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(run_publisher(settings, stop=stop, on_ready=on_ready)), daemon=True
    )
    rses = ["IN2P3_BUTLER_DISK", "RAL_BUTLER_DISK"]  # both topics exist before the outage: records time out
    rucio_db.rucio.add_messages(
        events([transfer_done(f"before/{i}.fits", dst_rse=rses[i % 2]) for i in range(300)])
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while rucio_db.scalar("SELECT count(*) FROM messages") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rucio_db.scalar("SELECT count(*) FROM messages") == 0
        assert _readiness(ports[0])["ok"] is True

        private_kafka.stop()
        rucio_db.rucio.add_messages(
            events([transfer_done(f"during/{i}.fits", dst_rse=rses[i % 2]) for i in range(300)])
        )
        started = time.monotonic()
        reasons: set[str] = set()
        while time.monotonic() - started < outage_s:
            # Nothing may leave the table while no broker can confirm it.
            assert rucio_db.scalar("SELECT count(*) FROM messages") == 300
            assert rucio_db.scalar("SELECT count(*) FROM messages_history") == 300
            readiness = _readiness(ports[0])
            if not readiness["ok"]:
                reasons.update(readiness["not_ready"])
            time.sleep(1.0)
        assert "kafka" in reasons  # /readyz told operators why

        private_kafka.start()
        private_kafka.wait_ready()
        back = time.monotonic()
        while rucio_db.scalar("SELECT count(*) FROM messages") and time.monotonic() - back < 120:
            time.sleep(0.2)
        resumed_after_s = time.monotonic() - back
        assert rucio_db.scalar("SELECT count(*) FROM messages") == 0, "publishing did not resume"
        assert rucio_db.scalar("SELECT count(*) FROM messages_history") == 600
    finally:
        stop.set()
        thread.join(timeout=60)
    assert codes == [0]
    records = read_topics(kafka, prefix, expected=600, timeout_s=60)
    delivered = {r.headers[HEADER_MESSAGE_ID].decode() for r in records}
    assert delivered == set(rucio_db.history_ids())
    print(
        f"broker outage {outage_s:.0f} s: backlog published {resumed_after_s:.1f} s after the broker answered"
    )
