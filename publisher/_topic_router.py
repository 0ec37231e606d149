"""Route mode: one raw Hermes topic → facility topics, offsets committed only after the fan-out.

For sites where a Hermes instance already writes every event to a single Kafka
topic: consume it in a group (manual commits), complete and route each event with
the same rules as table mode, produce, wait for every delivery report, and only
then commit, per partition, up to the first record that was not delivered. The
partitions with a failure are rewound to that record, so it and everything after
it are read again after the back-off (at-least-once; nothing is skipped).

Records are forwarded byte for byte unless enrichment changed their payload; a
record that is not a JSON envelope goes to the catch-all topic unchanged.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from ingestd.kafka import KafkaErrorKind, classify_kafka_error
from ingestd.log import get_logger
from monitoring.metrics import PublisherMetrics, PublishOutcome

from ._delivery import KafkaDelivery
from ._errors import BrokerUnavailableError, PermanentError
from ._loop import BatchResult
from ._messages import HEADER_EVENT_TYPE, HEADER_PUBLISHER, HEADER_UNROUTED, OutgoingRecord
from ._metadata import Enricher
from ._routing import Router, UnroutedReason, did_key

__all__ = ["TopicRouter"]

logger = get_logger(__name__)

_OWN_HEADERS = frozenset({HEADER_EVENT_TYPE, HEADER_PUBLISHER, HEADER_UNROUTED})


@dataclass(slots=True)
class _Item:
    """One consumed record on its way out."""

    message: Message
    envelope: dict[str, Any] | None
    forward: bool
    """False for records of event types not published (skipped, offset committed)."""


class TopicRouter:
    """Fans a raw Hermes topic out to facility topics.

    Parameters
    ----------
    consumer
        A consumer from :func:`ingestd.kafka.make_consumer` (manual commits), not yet subscribed.
    source_topic
        The raw topic.
    enricher, router, delivery, metrics
        As in table mode.
    event_types
        Event types forwarded; other records are skipped (and committed).
    batch_size
        Most records per batch.
    poll_timeout_s
        How long one consume call waits for records.
    instance_id
        Written into every record's ``ingestd-publisher`` header.
    """

    def __init__(
        self,
        consumer: Consumer,
        source_topic: str,
        *,
        enricher: Enricher,
        router: Router,
        delivery: KafkaDelivery,
        metrics: PublisherMetrics,
        event_types: Sequence[str],
        batch_size: int,
        poll_timeout_s: float,
        instance_id: str,
    ) -> None:
        self.consumer = consumer
        self.source_topic = source_topic
        self.enricher = enricher
        self.router = router
        self.delivery = delivery
        self.metrics = metrics
        self.event_types = frozenset(event_types)
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self._publisher_header = instance_id.encode()
        self._last_timestamp_s: float | None = None
        self.consumer.subscribe([source_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing is in flight between batches: each batch is delivered and committed
        # (or rewound) before the next poll, which is where rebalances happen.
        logger.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _consume(self) -> list[Message]:
        try:
            polled = self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout_s)
        except KafkaException as error:
            raise BrokerUnavailableError(f"consuming {self.source_topic} failed: {error}") from error
        records: list[Message] = []
        for message in polled:
            problem = message.error()
            if problem is None:
                records.append(message)
                continue
            if problem.code() == KafkaError._PARTITION_EOF:
                continue
            self.metrics.observe_error(problem.name())
            kind = classify_kafka_error(problem)
            logger.warning("consume_error", error=problem.name(), reason=problem.str(), kind=kind.value)
            if kind is KafkaErrorKind.fatal:
                raise PermanentError(f"consumer of {self.source_topic} hit a fatal error: {problem.str()}")
        return records

    def _item(self, message: Message) -> _Item:
        try:
            decoded = json.loads(message.value() or b"")
        except (ValueError, UnicodeDecodeError):
            decoded = None
        envelope = decoded if isinstance(decoded, dict) else None
        if envelope is None:
            return _Item(message, None, forward=True)
        return _Item(message, envelope, forward=envelope.get("event_type") in self.event_types)

    def _record(self, item: _Item, changed: bool) -> OutgoingRecord:
        message = item.message
        original = [(name, value) for name, value in _headers(message) if name not in _OWN_HEADERS]
        envelope = item.envelope
        payload = envelope.get("payload") if envelope is not None else None
        if envelope is None:
            route = self.router.catch_all(UnroutedReason.invalid_payload)
        elif not isinstance(payload, dict):
            route = self.router.catch_all(UnroutedReason.invalid_payload)
            payload = None
        else:
            route = self.router.route(payload)
        if envelope is not None and changed:
            value = json.dumps({**envelope, "payload": payload}).encode()
        else:
            value = message.value() or b""
        topic, partition, offset = _position(message)
        fallback = f"{topic}:{partition}:{offset}"
        key = did_key(payload, fallback) if payload is not None else (message.key() or fallback.encode())
        headers = [*original, (HEADER_PUBLISHER, self._publisher_header)]
        if envelope is not None and isinstance(envelope.get("event_type"), str):
            headers.append((HEADER_EVENT_TYPE, envelope["event_type"].encode()))
        if route.unrouted is not None:
            headers.append((HEADER_UNROUTED, route.unrouted.value.encode()))
        return OutgoingRecord(route.topic, key, value, tuple(headers), route)

    def publish_batch(self) -> BatchResult:
        """Consume, route, deliver and commit one batch.

        Raises
        ------
        BrokerUnavailableError
            When consuming failed; nothing was committed.
        SourceUnavailableError
            When DID metadata could not be read; the batch is rewound and retried.
        """
        started = time.monotonic()
        messages = self._consume()
        if not messages:
            return BatchResult(duration_s=time.monotonic() - started)
        items = [self._item(message) for message in messages]
        forwarded = [item for item in items if item.forward]
        payloads: list[dict[str, Any] | None] = []
        for item in forwarded:
            payload = item.envelope.get("payload") if item.envelope is not None else None
            payloads.append(payload if isinstance(payload, dict) else None)
        try:
            enrichment = self.enricher.enrich(payloads)
        except Exception:
            self._rewind(messages)
            raise
        records = [self._record(item, index in enrichment.changed) for index, item in enumerate(forwarded)]
        outcome = self.delivery.deliver(records)

        failed_messages = {id(forwarded[index].message) for index in outcome.failed}
        self._commit_and_rewind(messages, failed_messages)
        duration = time.monotonic() - started
        self.metrics.batch_duration.observe(duration)
        for facility, count in Counter(records[i].facility for i in outcome.delivered).items():
            self.metrics.observe_message(facility, PublishOutcome.delivered, count)
        for facility, count in Counter(records[i].facility for i in outcome.failed).items():
            self.metrics.observe_message(facility, PublishOutcome.failed, count)
        for error, count in Counter(outcome.failed.values()).items():
            self.metrics.errors.labels(error=self.metrics.error_label(error)).inc(count)
        _timestamp_type, timestamp_ms = messages[-1].timestamp()
        if timestamp_ms > 0:
            self._last_timestamp_s = timestamp_ms / 1000.0
        result = BatchResult(
            taken=len(messages),
            delivered=len(outcome.delivered),
            failed=len(outcome.failed),
            skipped=len(items) - len(forwarded),
            unrouted=sum(1 for record in records if record.route.unrouted is not None),
            enriched=len(enrichment.changed),
            duration_s=duration,
        )
        if result.failed:
            logger.warning(
                "records_not_delivered",
                failed=result.failed,
                delivered=result.delivered,
                errors=dict(Counter(outcome.failed.values())),
            )
        if result.unrouted:
            logger.warning(
                "events_unrouted", count=result.unrouted, topic=self.router.site_map.catch_all_topic
            )
        logger.debug(
            "batch_routed", consumed=result.taken, delivered=result.delivered, skipped=result.skipped
        )
        return result

    def _commit_and_rewind(self, messages: Sequence[Message], failed: set[int]) -> None:
        """Commit each partition up to its first failed record; rewind the partitions that have one."""
        commit_to: dict[tuple[str, int], int] = {}
        rewind_to: dict[tuple[str, int], int] = {}
        for message in messages:  # in offset order within each partition
            topic, partition, offset = _position(message)
            if (topic, partition) in rewind_to:
                continue
            if id(message) in failed:
                rewind_to[(topic, partition)] = offset
            else:
                commit_to[(topic, partition)] = offset + 1
        offsets = [
            TopicPartition(topic, partition, offset) for (topic, partition), offset in commit_to.items()
        ]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as error:
                # The records are delivered; an uncommitted offset only means they may be
                # routed again after a restart or rebalance (at-least-once).
                self.metrics.observe_error(_kafka_error_name(error))
                logger.warning("offset_commit_failed", reason=str(error))
        for (t, p), o in rewind_to.items():
            self._seek(t, p, o)

    def _rewind(self, messages: Sequence[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            topic, partition, offset = _position(message)
            first.setdefault((topic, partition), offset)
        for (topic, partition), offset in first.items():
            self._seek(topic, partition, offset)

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        try:
            self.consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as error:
            # Partition no longer ours (rebalance): its new owner starts from the committed offset.
            logger.info("rewind_skipped", topic=topic, partition=partition, reason=str(error))

    def refresh_backlog(self) -> None:
        """Set the backlog gauge to the records not yet consumed on the assigned partitions."""
        try:
            assignment = self.consumer.assignment()
            if not assignment:
                return
            positions = self.consumer.position(assignment)
            lag = 0
            for position in positions:
                _low, high = self.consumer.get_watermark_offsets(position, cached=True)
                if position.offset >= 0 and high >= 0:
                    lag += max(0, high - position.offset)
        except KafkaException as error:
            self.metrics.observe_error(_kafka_error_name(error))
            return
        self.metrics.backlog.set(lag)
        if lag and self._last_timestamp_s is not None:
            age = datetime.now(UTC).timestamp() - self._last_timestamp_s
            self.metrics.oldest_message_age.set(max(0.0, age))
        else:
            self.metrics.oldest_message_age.set(0.0)

    def close(self) -> None:
        """Leave the group (its partitions go to the other routers at once)."""
        self.consumer.close()


def _position(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record (always set on records without error)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    return topic, partition, offset


def _headers(message: Message) -> list[tuple[str, bytes]]:
    """The record's headers as (name, bytes) pairs, whatever form the client returned."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    out: list[tuple[str, bytes]] = []
    for name, value in pairs:
        if value is None:
            out.append((name, b""))
        else:
            out.append((name, value.encode() if isinstance(value, str) else value))
    return out


def _kafka_error_name(error: KafkaException) -> str:
    inner = error.args[0] if error.args else None
    return inner.name() if isinstance(inner, KafkaError) else type(error).__name__
