"""The mirror on the two real clusters of the test bed (central → local), run in this process."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest

from ingestd.kafka import KafkaConnection, make_admin
from mirror import ReplicationPolicy

from ._support import (
    assert_exactly_once,
    create_topic,
    produce,
    produce_transactions,
    read_all,
    running_in_thread,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.kafka


def _alias(unique_name: Callable[[str], str]) -> str:
    return unique_name("a").rsplit(".", 1)[1]


def test_identity_copy_keeps_everything_and_skips_aborted_source_transactions(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """Key, value, headers (repeated, empty), timestamp, partition survive; aborted source data does not."""
    topic = unique_name("mirror")
    create_topic(kafka_central, topic, partitions=3)
    produce(kafka_central, topic, 300)
    committed_in_transactions = produce_transactions(kafka_central, topic)
    expected = 300 + committed_in_transactions
    source = read_all(kafka_central, topic, expected=expected)
    assert len(source) == expected

    alias = "c" + _alias(unique_name)
    settings = settings_for(kafka_central, kafka_local, alias=alias, selection={"topics": [topic]})
    with running_in_thread(settings) as service:
        target = read_all(kafka_local, topic, expected=expected)
        base = f"http://127.0.0.1:{service.http_port}"
        label = service.metrics.topic_label(topic)  # bounded: long test names are shortened
        caught_up = [f'ingestd_mirror_lag_records{{partition="{p}",topic="{label}"}} 0.0' for p in range(3)]

        def metrics() -> str:
            return str(urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode())

        # Lag is refreshed every few seconds; a transactional source ends with a marker, not a record.
        wait_until(lambda: all(line in metrics() for line in caught_up), 20, "lag never reached 0")
        body = metrics()
        ready = json.load(urllib.request.urlopen(f"{base}/readyz", timeout=5))
    assert_exactly_once(source, target, source_alias=alias, target_topic=topic)
    assert ready == {"ok": True, "not_ready": {}}
    assert f'ingestd_mirror_records_total{{topic="{label}"}} {float(expected)}' in body
    assert 'ingestd_mirror_transactions_total{result="committed"}' in body
    assert "ingestd_mirror_replication_latency_seconds_count" in body

    # Target created like the source, with the configured retention.
    admin = make_admin(kafka_local)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    assert future.result(timeout=10)["retention.ms"].value == str(settings.target_retention_ms)


def test_restart_resumes_from_stored_positions(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """A clean stop and start copies only what is new: positions live on the target."""
    topic = unique_name("mirror")
    create_topic(kafka_central, topic, partitions=2)
    alias = "r" + _alias(unique_name)
    settings = settings_for(kafka_central, kafka_local, alias=alias, selection={"topics": [topic]})
    produce(kafka_central, topic, 100, partitions=2)
    with running_in_thread(settings):
        read_all(kafka_local, topic, expected=100)
    produce(kafka_central, topic, 50, partitions=2, start=100)
    with running_in_thread(settings):
        target = read_all(kafka_local, topic, expected=150)
    assert_exactly_once(
        read_all(kafka_central, topic, expected=150), target, source_alias=alias, target_topic=topic
    )


def test_prefix_policy_and_new_topic_without_restart(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """Prefix policy yields <alias>.X (MirrorMaker 2's default naming); a topic created later is mirrored."""
    base = unique_name("late")
    first, second = f"{base}.one", f"{base}.two"
    create_topic(kafka_central, first, partitions=2)
    produce(kafka_central, first, 40, partitions=2)
    alias = "usdf" + _alias(unique_name)
    settings = settings_for(
        kafka_central,
        kafka_local,
        alias=alias,
        policy=ReplicationPolicy.prefix,
        selection={"patterns": [f"{base.replace('.', '[.]')}[.].*"]},
    )
    with running_in_thread(settings):
        first_target = read_all(kafka_local, f"{alias}.{first}", expected=40)
        # Created on the central cluster while the mirror runs: picked up by discovery.
        create_topic(kafka_central, second, partitions=4)
        produce(kafka_central, second, 60, partitions=4)
        admin = make_admin(kafka_local)
        wait_until(
            lambda: f"{alias}.{second}" in admin.list_topics(timeout=5).topics,
            30,
            "the new topic's target was not created",
        )
        second_target = read_all(kafka_local, f"{alias}.{second}", expected=60, timeout_s=60)
    assert first not in admin.list_topics(timeout=5).topics  # no identity-named copy
    assert len(admin.list_topics(timeout=5).topics[f"{alias}.{second}"].partitions) == 4
    assert_exactly_once(
        read_all(kafka_central, first, expected=40),
        first_target,
        source_alias=alias,
        target_topic=f"{alias}.{first}",
    )
    assert_exactly_once(
        read_all(kafka_central, second, expected=60),
        second_target,
        source_alias=alias,
        target_topic=f"{alias}.{second}",
    )


def test_facility_selection_from_the_site_map(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """Only the facility's topics (its RSEs in the topic template) are mirrored."""
    # A template of this test's own, so that other tests' IN2P3 topics stay out of it.
    template = unique_name("sm") + ".{dst_rse}-{scope}"
    ours = template.format(dst_rse="IN2P3_BUTLER_DISK", scope="dp2_prep")
    theirs = template.format(dst_rse="RAL_BUTLER_DISK", scope="dp2_prep")
    for topic in (ours, theirs):
        create_topic(kafka_central, topic, partitions=1)
        produce(kafka_central, topic, 10, partitions=1)
    site_map = {
        "topic_template": template,
        "facilities": [
            {"name": "FrDF", "rses": ["IN2P3_.*"]},
            {"name": "UKDF", "rses": ["RAL_.*"]},
        ],
    }
    alias = "f" + _alias(unique_name)
    settings = settings_for(
        kafka_central,
        kafka_local,
        alias=alias,
        policy=ReplicationPolicy.prefix,
        selection={"facility": "FrDF", "site_map": site_map, "patterns": []},
    )
    with running_in_thread(settings) as service:
        read_all(kafka_local, f"{alias}.{ours}", expected=10)
        mirrored = {topic for topic, _ in service.replicator.assigned}
    assert ours in mirrored
    assert theirs not in mirrored
    assert f"{alias}.{theirs}" not in make_admin(kafka_local).list_topics(timeout=5).topics


def test_records_expired_before_mirroring_are_reported_and_skipped(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """A stored position older than what the source retains (a long outage) is an error metric and a
    log line, then the mirror goes on from the oldest record left; it neither stops nor rewinds."""
    from confluent_kafka import TopicPartition

    topic = unique_name("expired")
    create_topic(kafka_central, topic, partitions=1)
    alias = "e" + _alias(unique_name)
    settings = settings_for(kafka_central, kafka_local, alias=alias, selection={"topics": [topic]})
    produce(kafka_central, topic, 100, partitions=1)
    with running_in_thread(settings):
        read_all(kafka_local, topic, expected=100)
    # While the mirror is away, 100 more records arrive and the first 50 of them expire.
    produce(kafka_central, topic, 100, partitions=1, start=100)
    admin = make_admin(kafka_central)
    for future in admin.delete_records([TopicPartition(topic, 0, 150)]).values():
        future.result(timeout=30)
    with running_in_thread(settings) as service:
        target = read_all(kafka_local, topic, expected=150)
        expired = service.metrics.errors.labels(error="source_records_expired")._value.get()
    offsets = [int(dict(r.headers)["ingestd.mirror.source_offset"] or b"-1") for r in target]
    assert offsets == list(range(100)) + list(range(150, 200))
    assert expired == 1


def test_health_reports_an_unreachable_source(
    kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """Alive but not ready, with the reason an operator can act on, while the source cannot be listed."""
    import urllib.error

    nowhere = KafkaConnection(
        bootstrap_servers="127.0.0.1:1", librdkafka={"socket.connection.setup.timeout.ms": 1000}
    )
    settings = settings_for(
        nowhere, kafka_local, alias="h" + _alias(unique_name), selection={"topics": ["t"]}
    )
    with running_in_thread(settings) as service:
        base = f"http://127.0.0.1:{service.http_port}"

        def not_ready_reasons() -> dict[str, str]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}/readyz", timeout=5)
            assert refused.value.code == 503
            reasons: dict[str, str] = json.load(refused.value)["not_ready"]
            return reasons

        wait_until(lambda: "source" in not_ready_reasons(), 60, "readiness never named the source")
        assert "topic discovery failed" in not_ready_reasons()["source"]
        assert json.load(urllib.request.urlopen(f"{base}/healthz", timeout=5))["ok"] is True
