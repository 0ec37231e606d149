"""Replicas of a service in one consumer group share the partitions evenly (real brokers).

A facility subscribes to several topics of 3 partitions each (one per RSE and scope). With
librdkafka's default ``range`` assignor two replicas would split every topic 2:1, so one
replica carried two thirds of the work; the consumers the project builds deal partitions out
round-robin across all topics instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Consumer

from ingestd.kafka import KafkaConnection, make_consumer

from .kafka_helpers import create_topic


def _assignment_sizes(members: list[Consumer], *, timeout_s: float = 60.0) -> list[int]:
    """Poll every member until each holds partitions and the group is settled; return their counts."""
    deadline = time.monotonic() + timeout_s
    sizes: list[int] = []
    stable_since: float | None = None
    while time.monotonic() < deadline:
        for member in members:
            member.poll(0.1)
        current = [len(member.assignment()) for member in members]
        if current != sizes:
            sizes, stable_since = current, time.monotonic()
        elif all(sizes) and stable_since is not None and time.monotonic() - stable_since > 2.0:
            return sizes
    raise AssertionError(f"the group did not settle within {timeout_s:.0f} s (assignments {sizes})")


def test_two_replicas_share_the_partitions_of_every_topic_evenly(
    kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    topics = [create_topic(kafka_local, unique_name(f"balance-{index}"), partitions=3) for index in range(3)]
    group = unique_name("balance-group")
    members = [make_consumer(kafka_local, group) for _ in range(2)]
    try:
        for member in members:
            member.subscribe(topics)
        sizes = _assignment_sizes(members)
        assert sum(sizes) == 9
        assert sorted(sizes) == [4, 5], f"9 partitions split {sizes} (range would give 6 and 3)"
    finally:
        for member in members:
            member.close()


def test_an_operator_may_still_choose_the_assignor(
    kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """``kafka.librdkafka`` wins over the project's default (here: back to ``range``)."""
    topics = [create_topic(kafka_local, unique_name(f"range-{index}"), partitions=3) for index in range(3)]
    group = unique_name("range-group")
    connection = KafkaConnection(
        bootstrap_servers=kafka_local.bootstrap_servers,
        librdkafka={"partition.assignment.strategy": "range"},
    )
    members = [make_consumer(connection, group) for _ in range(2)]
    try:
        for member in members:
            member.subscribe(topics)
        assert sorted(_assignment_sizes(members)) == [3, 6]
    finally:
        for member in members:
            member.close()
