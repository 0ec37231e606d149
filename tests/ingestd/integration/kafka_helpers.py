"""Small Kafka helpers for the engine's integration tests (real brokers of the test bed)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ingestd.kafka import KafkaConnection, ensure_topics, make_admin, make_consumer, make_producer
from ingestd.sources._message import unpack


def create_topic(
    kafka: KafkaConnection, name: str, *, partitions: int = 3, config: dict[str, str] | None = None
) -> str:
    """Create ``name`` (if missing) and return it."""
    ensure_topics(make_admin(kafka), [name], partitions=partitions, config=config)
    return name


def produce(
    kafka: KafkaConnection,
    topic: str,
    values: Iterable[bytes],
    *,
    keys: Sequence[bytes | None] | None = None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    partition: int | None = None,
    producer: Producer | None = None,
) -> int:
    """Produce ``values`` and wait for every delivery; returns how many were delivered."""
    producer = producer or make_producer(kafka, overrides={"message.max.bytes": 20_000_000, "linger.ms": 20})
    failures: list[str] = []
    count = 0

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    for index, value in enumerate(values):
        key = keys[index] if keys is not None else str(index).encode()
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                else:
                    producer.produce(
                        topic,
                        value=value,
                        key=key,
                        headers=headers,
                        on_delivery=on_delivery,
                        partition=partition,
                    )
                break
            except BufferError:
                producer.poll(0.2)
        count += 1
        if count % 5000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, remaining
    assert not failures, failures[:3]
    return count


def committed_offsets(kafka: KafkaConnection, group: str, topic: str) -> dict[int, int]:
    """Committed offset of ``group`` for each partition of ``topic`` (-1001 when none)."""
    consumer: Consumer = make_consumer(kafka, group)
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        for attempt in range(20):
            try:
                return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
            except KafkaException:  # a fresh cluster's coordinator may not be elected yet
                if attempt == 19:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


_ELECTION_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
    }
)


def _watermarks(consumer: Consumer, partition: TopicPartition) -> tuple[int, int]:
    """Low and high watermarks, waiting out a topic's leader election (a topic just created answers
    NOT_LEADER_FOR_PARTITION for a moment)."""
    for _ in range(40):
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=10)
            return int(low), int(high)
        except KafkaException as error:
            if not (error.args[0].retriable() or error.args[0].code() in _ELECTION_ERRORS):
                raise
            time.sleep(0.25)
    low, high = consumer.get_watermark_offsets(partition, timeout=10)
    return int(low), int(high)


def read_all(
    kafka: KafkaConnection, topic: str, *, timeout_s: float = 10.0
) -> list[tuple[bytes, dict[str, bytes]]]:
    """Every record of ``topic`` (value and headers), read without a group."""
    consumer = make_consumer(kafka, None)
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        ends = {}
        for partition in metadata.topics[topic].partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition))
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records: list[tuple[bytes, dict[str, bytes]]] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    continue
                consumed = unpack(message)
                records.append((consumed.value, dict(consumed.headers)))
                if consumed.offset + 1 >= ends[consumed.partition]:
                    done.add(consumed.partition)
            for tp in consumer.position([TopicPartition(topic, p) for p in ends if p not in done]):
                if tp.offset >= ends[tp.partition]:
                    done.add(tp.partition)
        return records
    finally:
        consumer.close()
