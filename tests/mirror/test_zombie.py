"""Zombie fencing, made deterministic: an instance that stalls between reading and committing.

Instance A reads a batch and stalls before its transaction (a long GC pause, a
hung disk, a network cut to the group coordinator). Past its poll interval it
is out of the group and B takes its partitions and mirrors the same records.
When A wakes up and tries to commit, the group coordinator on the target
refuses A's offsets (stale member/generation) and the transaction aborts: the
target keeps each record once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from ingestd.kafka import KafkaConnection
from mirror import EXIT_FATAL, MirrorService, Replicator
from monitoring.http_server import HealthState
from monitoring.metrics import MirrorMetrics

from ._support import (
    assert_exactly_once,
    create_topic,
    end_offsets,
    mirrored_up_to,
    produce,
    read_all,
    running_in_thread,
    settings_for,
)

pytestmark = pytest.mark.kafka


def _value(metrics: MirrorMetrics, result: str) -> float:
    return float(metrics.transactions.labels(result=result)._value.get())


def test_a_stalled_instance_cannot_commit_after_its_partitions_moved(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("zombie")
    create_topic(kafka_central, topic, partitions=2)
    alias = "zb" + unique_name("a").rsplit(".", 1)[1]
    produce(kafka_central, topic, 100, partitions=2)

    # A leaves the group by itself when it does not poll for 7 s (librdkafka's max.poll.interval.ms).
    impatient_target = kafka_local.model_copy(update={"librdkafka": {"max.poll.interval.ms": 7000}})
    a_metrics = MirrorMetrics(CollectorRegistry())
    a = Replicator(
        settings_for(
            kafka_central, impatient_target, alias=alias, instance="a", selection={"topics": [topic]}
        ),
        a_metrics,
        HealthState(),
    )
    b_metrics = MirrorMetrics(CollectorRegistry())
    b = Replicator(
        settings_for(kafka_central, kafka_local, alias=alias, instance="b", selection={"topics": [topic]}),
        b_metrics,
        HealthState(),
    )
    try:
        a.start()
        deadline = time.monotonic() + 60
        ends = end_offsets(kafka_central, topic, 2)
        while not mirrored_up_to(kafka_local, f"ingestd-mirror.{alias}", topic, ends):
            assert time.monotonic() < deadline, "A never mirrored the first records"
            for _ in range(5):
                a.step()
        read_all(kafka_local, topic, expected=100)
        deadline = time.monotonic() + 60

        # A reads the next records, then stalls before committing them.
        produce(kafka_central, topic, 100, partitions=2, start=100)
        held: list[Message] = []
        while len(held) < 100:
            assert time.monotonic() < deadline, "A never read the new records"
            held += [m for m in a._gather() if m.error() is None]

        # Meanwhile B joins, gets both partitions once A is out of the group, and mirrors them.
        b.start()
        deadline = time.monotonic() + 90
        while len(b.assigned) < 2 or _value(b_metrics, "committed") == 0:
            assert time.monotonic() < deadline, f"B never took over (B has {b.assigned})"
            b.step()
        for _ in range(10):
            b.step()

        # A wakes up and finishes its transaction: fenced by the group coordinator.
        a._mirror(held)
        assert _value(a_metrics, "aborted") == 1
        assert _value(a_metrics, "committed") >= 1

        target = read_all(kafka_local, topic, expected=200)
    finally:
        a.close()
        b.close()
    assert_exactly_once(
        read_all(kafka_central, topic, expected=200), target, source_alias=alias, target_topic=topic
    )


def test_one_instance_name_twice_the_older_process_stops(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """Two processes with one instance name share a transactional id and a static member: the newer one
    fences the older, which exits with EXIT_FATAL (MirrorFencedError); nothing is copied twice."""
    topic = unique_name("twice")
    create_topic(kafka_central, topic, partitions=2)
    alias = "tw" + unique_name("a").rsplit(".", 1)[1]
    settings = settings_for(
        kafka_central, kafka_local, alias=alias, instance="same", selection={"topics": [topic]}
    )
    produce(kafka_central, topic, 100, partitions=2)
    older = MirrorService(settings)
    stop_older = threading.Event()
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(older.run(stop_older)), daemon=True)
    thread.start()
    try:
        read_all(kafka_local, topic, expected=100)
        with running_in_thread(settings):
            produce(kafka_central, topic, 100, partitions=2, start=100)
            thread.join(60)
            assert exit_codes == [EXIT_FATAL]
            target = read_all(kafka_local, topic, expected=200)
    finally:
        stop_older.set()
        thread.join(60)
    assert_exactly_once(
        read_all(kafka_central, topic, expected=200), target, source_alias=alias, target_topic=topic
    )
