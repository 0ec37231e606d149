"""Route mode: one raw Hermes topic fanned out to facility topics, offsets committed only after delivery."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition

from deploy.local.rucio_env import write_rucio_client_config
from ingestd.kafka import KafkaConnection, NewTopic, make_admin, make_consumer, make_producer
from publisher import (
    HEADER_EVENT_TYPE,
    HEADER_UNROUTED,
    BatchResult,
    PublisherMode,
    PublisherSettings,
    RestMetadata,
    run_publisher,
)

from .support import RucioDatabase, TestTopics, read_topics, transfer_done

pytestmark = [pytest.mark.kafka]


def _hermesk_envelope(payload: dict[str, Any], event_type: str = "transfer-done") -> bytes:
    return json.dumps(
        {"event_type": event_type, "payload": payload, "created_at": "2025-03-20 20:15:43.153695"}
    ).encode()


def _produce(producer: Producer, topic: str, values: list[bytes], partition: int | None = None) -> None:
    for value in values:
        if partition is None:
            producer.produce(topic, value=value, key=b"message")  # HermesK's one key for everything
        else:
            producer.produce(topic, value=value, key=b"message", partition=partition)
    assert producer.flush(30) == 0


def _route_settings(
    kafka: KafkaConnection, topics: TestTopics, source: str, group: str, **extra: Any
) -> PublisherSettings:
    values: dict[str, Any] = {
        "kafka": kafka,
        "route": {"source_topic": source, "group_id": group},
        "site_map": topics.site_map,
        "metadata": {"source": "none"},
        "event_types": ["transfer-done"],
        "http_port": None,
        "poll_interval_s": 0.3,
        "batch_size": 100,
        "instance_id": "router",
    }
    values.update(extra)
    return PublisherSettings.model_validate(values)


def _run_until(
    settings: PublisherSettings,
    consumed: int,
    timeout_s: float = 90.0,
    done: Callable[[list[BatchResult]], bool] | None = None,
) -> list[BatchResult]:
    """Run route mode in a thread until ``consumed`` records were taken and an idle poll followed
    (or until ``done`` says so)."""
    results: list[BatchResult] = []
    stop = threading.Event()

    def on_batch(result: BatchResult) -> None:
        results.append(result)
        if done is not None:
            if done(results):
                stop.set()
        elif sum(r.taken for r in results) >= consumed and result.taken == 0:
            stop.set()

    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(
            run_publisher(settings, mode=PublisherMode.route, stop=stop, on_batch=on_batch)
        ),
        daemon=True,
    )
    thread.start()
    thread.join(timeout_s)
    stop.set()
    thread.join(30)
    assert codes == [0]
    return results


def _committed(kafka: KafkaConnection, group: str, topic: str, partitions: int) -> list[int]:
    consumer = make_consumer(kafka, group)
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return [tp.offset for tp in offsets]


def test_raw_topic_is_fanned_out_by_facility_and_committed_after_delivery(
    kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    source = f"{test_topics.prefix}-raw"  # outside the prefix.* pattern the reader uses
    admin = make_admin(kafka_central)
    admin.create_topics([NewTopic(source, 3, 1)])[source].result(timeout=30)
    producer = make_producer(kafka_central)
    values = (
        [_hermesk_envelope(transfer_done(f"r/frdf_{i}.fits")) for i in range(60)]
        + [_hermesk_envelope(transfer_done(f"r/ukdf_{i}.fits", dst_rse="RAL_BUTLER_DISK")) for i in range(30)]
        + [_hermesk_envelope(transfer_done("r/lost.fits", dst_rse="CERN_DISK"))]
        + [_hermesk_envelope(transfer_done(f"r/q{i}.fits"), event_type="transfer-queued") for i in range(9)]
        + [b"this is not json", json.dumps({"event_type": "transfer-done", "payload": "None"}).encode()]
    )
    _produce(producer, source, values)
    group = f"router-{uuid.uuid4().hex[:8]}"

    results = _run_until(_route_settings(kafka_central, test_topics, source, group), consumed=len(values))
    assert sum(r.taken for r in results) == len(values)
    assert sum(r.skipped for r in results) == 9  # other event types: committed, not forwarded
    assert sum(r.failed for r in results) == 0

    records = read_topics(kafka_central, test_topics.prefix + ".", expected=93)
    assert Counter(r.topic for r in records) == {
        test_topics.frdf("IN2P3_BUTLER_DISK", "dp2_prep"): 60,
        test_topics.ukdf(): 30,
        test_topics.catch_all: 3,
    }
    sent = set(values)
    for record in records:
        assert record.value in sent  # forwarded byte for byte
        if record.topic != test_topics.catch_all:
            payload = record.envelope()["payload"]
            assert record.key == f"{payload['scope']}:{payload['name']}".encode()
            assert record.headers[HEADER_EVENT_TYPE] == b"transfer-done"
    reasons = Counter(r.headers[HEADER_UNROUTED] for r in records if r.topic == test_topics.catch_all)
    assert reasons == {b"unknown_rse": 1, b"invalid_payload": 2}

    # Every source record is committed: a restarted router has nothing left to route.
    # (HermesK's single key put everything in one partition; the empty ones have nothing to commit.)
    ends = _end_offsets(kafka_central, source, 3)
    assert [max(offset, 0) for offset in _committed(kafka_central, group, source, 3)] == ends
    again = _run_until(_route_settings(kafka_central, test_topics, source, group), consumed=0, timeout_s=15)
    assert sum(r.taken for r in again) == 0


def _end_offsets(kafka: KafkaConnection, topic: str, partitions: int) -> list[int]:
    consumer = make_consumer(kafka, None)
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)
        ]
    finally:
        consumer.close()


def test_offsets_stop_at_the_first_record_not_delivered(
    kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    source = f"{test_topics.prefix}-raw"
    refusing = test_topics.frdf("IN2P3_TAPE", "dp2_prep")
    admin = make_admin(kafka_central)
    for future in admin.create_topics(
        [NewTopic(source, 2, 1), NewTopic(refusing, 1, 1, config={"max.message.bytes": "2000"})]
    ).values():
        future.result(timeout=30)
    producer = make_producer(kafka_central)
    # Partition 0: three good records, one the destination refuses, two more good ones.
    good = [_hermesk_envelope(transfer_done(f"p0/{i}.fits")) for i in range(5)]
    big = _hermesk_envelope(transfer_done("p0/big.fits", dst_rse="IN2P3_TAPE", sidecar_size=8000))
    _produce(producer, source, [*good[:3], big, *good[3:]], partition=0)
    # Partition 1: all good.
    _produce(
        producer, source, [_hermesk_envelope(transfer_done(f"p1/{i}.fits")) for i in range(4)], partition=1
    )
    group = f"router-{uuid.uuid4().hex[:8]}"

    settings = _route_settings(kafka_central, test_topics, source, group, max_backoff_s=1)
    # Run until the refused record has been retried (rewound and failed again) at least twice.
    results = _run_until(settings, consumed=0, done=lambda rs: sum(1 for r in rs if r.failed) >= 3)
    assert sum(1 for r in results if r.failed) >= 3
    # Partition 0 is committed up to the refused record (offset 3), never past it; partition 1 entirely.
    assert _committed(kafka_central, group, source, 2) == [3, 4]
    delivered = read_topics(kafka_central, test_topics.prefix + ".", expected=7, settle_s=2.0)
    names = Counter(r.envelope()["payload"]["name"] for r in delivered)
    assert names["p0/0.fits"] >= 1
    assert names["p0/big.fits"] == 0
    assert sum(1 for n in names if n.startswith("p1/")) == 4


@pytest.mark.postgres
def test_route_mode_completes_payloads_from_the_rucio_database(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics
) -> None:
    rucio_db.rucio.add_rses_and_scopes(["IN2P3_BUTLER_DISK"], ["dp2_prep"])
    rucio_db.rucio.add_files_with_metadata(
        "IN2P3_BUTLER_DISK",
        [
            {"scope": "dp2_prep", "name": f"m/{i}.fits", "bytes": 10, "adler32": "0cc0ffee",
             "meta": {"rubin_butler": "raw_file", "rubin_sidecar": f"sidecar-{i}"}}
            for i in range(5)
        ],
    )  # fmt: skip
    source = f"{test_topics.prefix}-raw"
    admin = make_admin(kafka_central)
    admin.create_topics([NewTopic(source, 1, 1)])[source].result(timeout=30)
    values = [_hermesk_envelope(transfer_done(f"m/{i}.fits", with_rubin=False)) for i in range(5)]
    _produce(make_producer(kafka_central), source, values)
    settings = _route_settings(
        kafka_central,
        test_topics,
        source,
        f"router-{uuid.uuid4().hex[:8]}",
        metadata={"source": "database"},
        database={"url": rucio_db.url},
    )
    results = _run_until(settings, consumed=5)
    assert sum(r.enriched for r in results) == 5
    records = read_topics(kafka_central, test_topics.prefix + ".", expected=5)
    payloads = {r.envelope()["payload"]["name"]: r.envelope()["payload"] for r in records}
    assert payloads["m/3.fits"]["rubin_sidecar"] == "sidecar-3"
    assert payloads["m/3.fits"]["rubin_butler"] == "raw_file"


@pytest.mark.postgres
def test_route_mode_completes_payloads_through_the_rucio_rest_api_in_bulk(
    rucio_db: RucioDatabase,
    kafka_central: KafkaConnection,
    test_topics: TestTopics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For sites that reach Rucio only over HTTP: the real server, the real rucio-clients."""
    rucio_db.rucio.add_rses_and_scopes(["IN2P3_BUTLER_DISK"], ["dp2_prep"])
    rucio_db.rucio.add_files_with_metadata(
        "IN2P3_BUTLER_DISK",
        [
            {"scope": "dp2_prep", "name": f"rest/{i}.fits", "bytes": 10, "adler32": "0cc0ffee",
             "meta": {"rubin_butler": "raw_file", "rubin_sidecar": f"sidecar-{i}"}}
            for i in range(12)
        ],
    )  # fmt: skip
    source = f"{test_topics.prefix}-raw"
    admin = make_admin(kafka_central)  # kept referenced until the future resolves
    admin.create_topics([NewTopic(source, 1, 1)])[source].result(timeout=30)
    values = [_hermesk_envelope(transfer_done(f"rest/{i}.fits", with_rubin=False)) for i in range(12)]
    _produce(make_producer(kafka_central), source, values)

    calls: list[int] = []
    original = RestMetadata.lookup

    def counting_lookup(self: RestMetadata, *args: Any, **kwargs: Any) -> Any:
        before = self.calls
        found = original(self, *args, **kwargs)
        calls.append(self.calls - before)
        return found

    monkeypatch.setattr(RestMetadata, "lookup", counting_lookup)
    with rucio_db.rucio.rest_server(_free_port()) as server:
        monkeypatch.setenv("RUCIO_CONFIG", str(write_rucio_client_config(tmp_path / "client", server)))
        settings = _route_settings(
            kafka_central,
            test_topics,
            source,
            f"router-{uuid.uuid4().hex[:8]}",
            metadata={"source": "rest", "rest_chunk_size": 5},
        )
        results = _run_until(settings, consumed=12)
    assert sum(r.enriched for r in results) == 12
    assert [c for c in calls if c] == [3]  # 12 DIDs of one batch, chunks of 5: three REST calls, not twelve
    records = read_topics(kafka_central, test_topics.prefix + ".", expected=12)
    payloads = {r.envelope()["payload"]["name"]: r.envelope()["payload"] for r in records}
    assert payloads["rest/7.fits"]["rubin_sidecar"] == "sidecar-7"
    assert payloads["rest/7.fits"]["rubin_butler"] == "raw_file"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
