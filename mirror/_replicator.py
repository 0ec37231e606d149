"""The replicator: an exactly-once copy of the selected source partitions onto the target cluster.

How exactly-once holds
----------------------
One loop per instance: gather a batch from the source (``read_committed``, so
aborted or unfinished source transactions are never copied), produce it to the
target in ONE transaction of a transactional producer, add the next source
offset of every partition in the batch to the same transaction, commit.
Records and positions therefore become visible together or not at all; after
a crash (``kill -9`` included) the restarted instance finds the positions of
the last committed transaction and continues from there.

Where positions live, and who may write them. The consumer group that shares
partitions among instances lives on the TARGET cluster, not the source: a
coordination consumer subscribes to the *target* topics (same names as the
mirrored ones after naming, same partition counts) and never fetches from them;
its assignment of target partition ``(T, p)`` means "this instance mirrors
source partition ``(S, p)``". Positions are the group's committed offsets on
the target (``__consumer_offsets``, compacted), keyed by group, target topic
and partition, with the source cluster/topic/partition in the commit metadata,
and written with ``send_offsets_to_transaction`` inside the mirror's
transaction. That makes the broker enforce zombie fencing (KIP-447): every
transactional offset commit carries the member's group generation, and the
group coordinator refuses a commit from an instance that was evicted from the
group (paused, partitioned from the target, too slow), so its transaction can
only abort. A new owner reads positions with ``require_stable`` (librdkafka
does so for ``read_committed`` consumers), which waits for a predecessor's
pending transaction to end either way. Hence no duplicate across rebalances,
with one producer per instance and one transaction per batch for all its
partitions, rather than one producer per partition (the pre-KIP-447 scheme)
or an offsets topic written with ``produce()``, which a zombie with a
different transactional id could still append to.

The transactional id is stable per instance (``<prefix>.<alias>.<instance>``),
and the group membership is static (``group.instance.id = instance``): a
restarted instance aborts its own unfinished transaction at
``init_transactions`` and gets its partitions back without waiting for the
session timeout. Static membership is also what makes the fencing
unconditional: Kafka skips the member check only for a transactional offset
commit with no member id, no generation and no instance id, which is what a
client that has already left its group would send; with an instance id every
commit is checked. Two processes with one instance name fence each other
(the older one exits with :class:`MirrorFencedError`).

Operators can inspect or reset positions with the standard
``kafka-consumer-groups`` tool on the target (values are SOURCE offsets; the
LAG column it computes against target offsets is meaningless).

Verified by ``tests/mirror``: kill -9 at random moments, two instances and a
rebalance, a paused instance coming back, a stalled instance trying to commit
after its partitions moved, and one instance name used twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from ingestd.kafka import KafkaErrorKind, classify_kafka_error, make_admin, make_consumer, make_producer
from ingestd.log import get_logger
from monitoring.http_server import HealthState
from monitoring.metrics import MirrorMetrics, TransactionResult

from ._errors import MirrorFatalError, MirrorFencedError
from ._headers import SOURCE_OFFSET_HEADER, partition_headers
from ._settings import MirrorSettings
from ._topics import MirroredTopic, TopicCatalog

__all__ = ["Replicator"]

logger = get_logger(__name__)

KAFKA_TIMEOUT_S = 30.0
"""Bound on one blocking client call (commit, abort, init); the loop comes back to beat and poll after it."""
POSITIONS_TIMEOUT_S = 2.0
"""Bound on one read of stored positions; a predecessor's open transaction makes it retry next turn."""
LAG_INTERVAL_S = 2.0
"""How often the per-partition lag gauges are refreshed."""
PROGRESS_INTERVAL_S = 60.0
"""How often a ``mirror.progress`` line summarises the work done (when there was any)."""
RETRIES = 5
"""Attempts of one transactional call on a retriable error before the transaction is aborted."""

_FENCED_CODES = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
_UNKNOWN_TOPIC_CODES = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)

_Key = tuple[str, int]


def _kafka_error(error: BaseException | KafkaError) -> KafkaError | None:
    if isinstance(error, KafkaError):
        return error
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


def _error_name(error: BaseException | KafkaError) -> str:
    kafka_error = _kafka_error(error)
    if kafka_error is not None:
        return str(kafka_error.name())
    return type(error).__name__


@dataclass
class _PartitionState:
    """One source partition this instance mirrors."""

    source_topic: str
    partition: int
    target_topic: str
    committed: int | None
    """Next source offset stored on the target (None: no position stored yet)."""
    headers: list[tuple[str, bytes]]
    metadata: str
    pending: int | None = None
    """Next source offset once the open transaction commits."""
    batch_records: int = 0
    batch_bytes: int = 0

    def __post_init__(self) -> None:
        self.pending = self.committed


@dataclass
class _Batch:
    """What one transaction carries, for the commit and for the rewind of an abort."""

    touched: dict[_Key, _PartitionState] = field(default_factory=dict)
    first_offsets: dict[_Key, int] = field(default_factory=dict)
    timestamps_ms: list[int] = field(default_factory=list)
    in_transaction: bool = False


@dataclass
class _Progress:
    """Work since the last ``mirror.progress`` line: an operator's view without Prometheus."""

    records: int = 0
    bytes: int = 0
    transactions: int = 0
    aborted: int = 0
    since: float = field(default_factory=time.monotonic)

    def maybe_log(self, partitions: int) -> None:
        elapsed = time.monotonic() - self.since
        if elapsed < PROGRESS_INTERVAL_S:
            return
        if self.transactions or self.aborted:
            logger.info(
                "mirror.progress",
                records=self.records,
                bytes=self.bytes,
                transactions=self.transactions,
                aborted=self.aborted,
                records_per_s=round(self.records / elapsed, 1),
                partitions=partitions,
            )
        self.records = self.bytes = self.transactions = self.aborted = 0
        self.since = time.monotonic()


class Replicator:
    """Mirror the selected topics from the source cluster to the target cluster, exactly once.

    Parameters
    ----------
    settings
        Validated settings.
    metrics
        Where records, bytes, lag, latency, transactions and errors are counted.
    health
        Liveness (beaten every loop) and readiness (source listed, target committing).

    Notes
    -----
    Not thread-safe: :meth:`start`, :meth:`run` / :meth:`step` and :meth:`close`
    are called from one thread. Building the object does no I/O.
    """

    def __init__(self, settings: MirrorSettings, metrics: MirrorMetrics, health: HealthState) -> None:
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._naming = settings.naming()
        self._selector = settings.selection.selector()
        self._producer: Producer | None = None
        self._coordinator: Consumer | None = None
        self._data: Consumer | None = None
        self._catalog: TopicCatalog | None = None
        self._topics: dict[str, MirroredTopic] = {}
        self._by_target: dict[str, MirroredTopic] = {}
        self._subscribed: tuple[str, ...] = ()
        self._owned: dict[_Key, _PartitionState] = {}
        self._owned_by_target: dict[_Key, _Key] = {}
        self._awaiting: set[_Key] = set()
        self._next_discovery = 0.0
        self._next_lag = 0.0
        self._consecutive_aborts = 0
        self._stop = threading.Event()
        self._progress = _Progress()
        self._positions_logged = 0.0

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, stop: threading.Event | None = None) -> None:
        """Connect: initialise transactions (aborting this instance's unfinished one), discover, subscribe.

        Retries while the target is unreachable, until ``stop`` is set.

        Raises
        ------
        MirrorFatalError
            Authentication, authorisation or fencing: the process should exit.
        """
        if stop is not None:
            self._stop = stop
        settings = self._settings
        # librdkafka's own log lines go through logging, hence structlog: one format in the service log.
        client_log = {"logger": logging.getLogger("mirror.librdkafka")}
        overrides: dict[str, Any] = {
            **client_log,
            "transaction.timeout.ms": settings.transaction_timeout_ms,
            "compression.type": settings.compression,
            "linger.ms": 10,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "message.max.bytes": settings.max_record_bytes,
            "queue.buffering.max.messages": max(100_000, 2 * settings.batch_max_records),
            "queue.buffering.max.kbytes": max(1_048_576, 2 * settings.batch_max_bytes // 1024),
        }
        self._producer = make_producer(
            settings.target, transactional_id=settings.transactional_id, overrides=overrides
        )
        if not self._retry_until_stopped(
            "init_transactions", lambda: self._producer_().init_transactions(KAFKA_TIMEOUT_S)
        ):
            return
        self._coordinator = make_consumer(
            settings.target,
            settings.effective_group_id,
            read_committed=True,
            overrides={
                **client_log,
                "group.instance.id": settings.instance,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": settings.session_timeout_ms,
                "topic.metadata.refresh.interval.ms": max(1000, int(settings.discovery_interval_s * 1000)),
            },
        )
        self._data = make_consumer(
            settings.source,
            None,
            read_committed=True,
            overrides={
                **client_log,
                # A stored position the source no longer has is reported, not silently reset.
                "auto.offset.reset": "error",
                "fetch.wait.max.ms": 100,
                "max.partition.fetch.bytes": 4 * 1024 * 1024,
            },
        )
        source_admin = make_admin(settings.source, overrides=client_log)
        target_admin = make_admin(settings.target, overrides=client_log)
        topic_config = dict(settings.target_topic_config)
        if settings.target_retention_ms is not None:
            topic_config.setdefault("retention.ms", str(settings.target_retention_ms))
        self._catalog = TopicCatalog(
            source_admin,
            target_admin,
            self._selector,
            self._naming,
            replication_factor=settings.target_replication_factor,
            topic_config=topic_config,
        )
        while not self._stop.is_set() and not self._discover():
            self._stop.wait(min(5.0, settings.discovery_interval_s))
        if self._stop.is_set():
            return
        self._health.set_ready("starting")
        logger.info(
            "mirror.started",
            instance=settings.instance,
            transactional_id=settings.transactional_id,
            group_id=settings.effective_group_id,
            topics=len(self._topics),
        )

    def run(self, stop: threading.Event) -> None:
        """Mirror until ``stop`` is set; each turn ends between transactions."""
        self._stop = stop
        while not stop.is_set():
            self.step()

    def step(self) -> None:
        """One turn: group events, discovery when due, positions of new partitions, one batch, lag.

        Raises
        ------
        MirrorFatalError
            The clients cannot continue.
        """
        self._health.beat()
        self._poll_group()
        now = time.monotonic()
        if now >= self._next_discovery:
            self._discover()
        self._resolve_positions()
        messages = self._gather()
        if messages:
            self._mirror(messages)
        if time.monotonic() >= self._next_lag:
            self._update_lag()
        self._progress.maybe_log(len(self._owned))

    def close(self) -> None:
        """Leave cleanly: no transaction is open between turns; consumers are closed, the producer flushed.

        The group membership is static, so closing does not hand partitions to
        other instances at once; a restart within the session timeout gets them back.
        """
        # The coordinator first: closing may call on_revoke, which needs the data consumer.
        # A fenced or fatally failed client raises on close; there is nothing left to save then
        # (an open transaction is aborted by the broker), so the error is logged and closing goes on.
        if self._coordinator is not None:
            self._close_quietly("coordinator", self._coordinator.close)
            self._coordinator = None
        if self._data is not None:
            self._close_quietly("source consumer", self._data.close)
            self._data = None
        self._owned.clear()
        self._owned_by_target.clear()
        self._awaiting.clear()
        if self._producer is not None:
            self._close_quietly("producer", lambda: self._producer_().flush(5))
            self._producer = None
        logger.info("mirror.stopped", instance=self._settings.instance)

    @staticmethod
    def _close_quietly(client: str, close: Callable[[], object]) -> None:
        try:
            close()
        except KafkaException as error:
            logger.warning("mirror.close_failed", client=client, error=str(error))

    @property
    def assigned(self) -> list[tuple[str, int]]:
        """Source partitions this instance currently mirrors, sorted."""
        return sorted(self._owned)

    # -- clients ------------------------------------------------------------------------------
    def _producer_(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("the replicator is not started")
        return self._producer

    def _coordinator_(self) -> Consumer:
        if self._coordinator is None:
            raise RuntimeError("the replicator is not started")
        return self._coordinator

    def _data_(self) -> Consumer:
        if self._data is None:
            raise RuntimeError("the replicator is not started")
        return self._data

    def _fatal(self, error: BaseException | KafkaError, during: str) -> MirrorFatalError:
        kafka_error = _kafka_error(error)
        message = f"{during} failed: {error}"
        if kafka_error is not None and kafka_error.code() in _FENCED_CODES:
            return MirrorFencedError(
                f"{message} (another process runs as instance {self._settings.instance!r}, "
                f"transactional id {self._settings.transactional_id!r})"
            )
        return MirrorFatalError(message)

    def _retry_until_stopped(self, what: str, operation: Callable[[], object]) -> bool:
        """Run ``operation`` until it succeeds (True) or the service is stopped (False)."""
        delay = 0.5
        while True:
            try:
                operation()
                self._health.set_ready("target")
                return True
            except KafkaException as error:
                self._metrics.observe_error(_error_name(error))
                if classify_kafka_error(error) is KafkaErrorKind.fatal:
                    raise self._fatal(error, what) from error
                self._health.set_not_ready("target", f"{what}: {error}")
                logger.warning("mirror.retrying", operation=what, error=str(error), delay_s=delay)
            if self._stop.wait(delay):
                return False
            self._health.beat()
            delay = min(delay * 2, 10.0)

    # -- group and discovery ------------------------------------------------------------------
    def _poll_group(self) -> None:
        message = self._coordinator_().poll(0)
        error = message.error() if message is not None else None
        if error is not None:
            self._metrics.observe_error(_error_name(error))
            if classify_kafka_error(error) is KafkaErrorKind.fatal:
                raise self._fatal(error, "group membership on the target")
            logger.warning("mirror.group_error", error=str(error))

    def _discover(self) -> bool:
        settings = self._settings
        assert self._catalog is not None
        self._next_discovery = time.monotonic() + settings.discovery_interval_s
        try:
            topics = self._catalog.refresh()
        except KafkaException as error:
            self._metrics.observe_error(_error_name(error))
            if classify_kafka_error(error) is KafkaErrorKind.fatal:
                raise self._fatal(error, "topic discovery") from error
            self._health.set_not_ready("source", f"topic discovery failed: {error}")
            logger.warning("mirror.discovery_failed", error=str(error))
            self._next_discovery = time.monotonic() + min(5.0, settings.discovery_interval_s)
            return False
        self._health.set_ready("source")
        added = sorted(set(topics) - set(self._topics))
        removed = sorted(set(self._topics) - set(topics))
        if added or removed:
            logger.info("mirror.topics_changed", added=added, removed=removed, total=len(topics))
        if not topics and not self._topics:
            logger.warning("mirror.no_topics_selected", selection=self._selector.include_patterns())
        self._topics = topics
        self._by_target = {topic.target: topic for topic in topics.values()}
        targets = tuple(sorted(self._by_target))
        if targets != self._subscribed:
            coordinator = self._coordinator_()
            if targets:
                coordinator.subscribe(
                    list(targets),
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_revoke,
                )
            else:
                coordinator.unsubscribe()
            self._subscribed = targets
        return True

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The coordination consumer never reads the target topics it is assigned: it only learns
        # which partitions this instance mirrors. Assign at the end and pause at once.
        consumer.incremental_assign([TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in partitions])
        if partitions:
            consumer.pause(partitions)
        for tp in partitions:
            self._awaiting.add((tp.topic, tp.partition))
        logger.info(
            "mirror.partitions_assigned", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions]
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called between transactions (the group is only polled then): nothing of these
        # partitions is in flight, so they can go at once.
        released: list[TopicPartition] = []
        for tp in partitions:
            target_key = (tp.topic, tp.partition)
            self._awaiting.discard(target_key)
            source_key = self._owned_by_target.pop(target_key, None)
            if source_key is None:
                continue
            self._owned.pop(source_key, None)
            released.append(TopicPartition(*source_key))
            self._forget_lag(*source_key)
        if released:
            self._data_().incremental_unassign(released)
        consumer.incremental_unassign(partitions)
        logger.info(
            "mirror.partitions_revoked", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions]
        )

    def _resolve_positions(self) -> None:
        """Read the stored positions of newly assigned partitions and start reading them from the source."""
        if not self._awaiting:
            return
        request = [TopicPartition(topic, partition) for topic, partition in sorted(self._awaiting)]
        try:
            stored = self._coordinator_().committed(request, timeout=POSITIONS_TIMEOUT_S)
        except KafkaException as error:
            # Typically a predecessor's transaction still open: positions are not stable yet.
            self._metrics.observe_error(_error_name(error))
            if classify_kafka_error(error) is KafkaErrorKind.fatal:
                raise self._fatal(error, "reading stored positions") from error
            if time.monotonic() - self._positions_logged > 15:
                self._positions_logged = time.monotonic()
                logger.info("mirror.positions_pending", partitions=len(request), error=str(error))
            return
        start: list[TopicPartition] = []
        initial = OFFSET_BEGINNING if self._settings.initial_position == "earliest" else OFFSET_END
        for tp in stored:
            target_key = (tp.topic, tp.partition)
            topic = self._by_target.get(tp.topic)
            if tp.error is not None or topic is None:
                continue
            committed = tp.offset if tp.offset >= 0 else None
            state = _PartitionState(
                source_topic=topic.source,
                partition=tp.partition,
                target_topic=topic.target,
                committed=committed,
                headers=partition_headers(self._settings.source_alias, topic.source, tp.partition),
                metadata=json.dumps(
                    {
                        "source_cluster": self._settings.source_alias,
                        "source_topic": topic.source,
                        "source_partition": tp.partition,
                    },
                    separators=(",", ":"),
                ),
            )
            source_key = (topic.source, tp.partition)
            self._owned[source_key] = state
            self._owned_by_target[target_key] = source_key
            self._awaiting.discard(target_key)
            start.append(
                TopicPartition(topic.source, tp.partition, initial if committed is None else committed)
            )
            logger.info(
                "mirror.partition_started",
                topic=topic.source,
                partition=tp.partition,
                position=committed if committed is not None else self._settings.initial_position,
            )
        if start:
            self._data_().incremental_assign(start)

    # -- the batch ----------------------------------------------------------------------------
    def _gather(self) -> list[Message]:
        settings = self._settings
        data = self._data_()
        deadline = time.monotonic() + settings.batch_max_wait_ms / 1000
        messages: list[Message] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            chunk = data.consume(min(settings.batch_max_records - len(messages), 10_000), remaining)
            if not chunk:
                break
            messages.extend(chunk)
            size += sum(len(message) for message in chunk)
            if len(messages) >= settings.batch_max_records or size >= settings.batch_max_bytes:
                break
        return messages

    def _mirror(self, messages: list[Message]) -> None:
        batch = _Batch()
        try:
            self._produce_batch(messages, batch)
            if not batch.in_transaction:
                return
            self._commit(batch)
        except KafkaException as error:
            self._abort(messages, batch, error)
            return
        self._committed(batch)

    def _produce_batch(self, messages: list[Message], batch: _Batch) -> None:
        producer = self._producer_()
        produce = producer.produce
        owned = self._owned
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_message_error(message, error)
                continue
            key = (message.topic(), message.partition())
            state = owned.get(key)  # type: ignore[arg-type]
            if state is None:
                continue  # revoked since it was fetched
            offset = message.offset()
            if offset is None:
                continue
            if state.pending is not None and offset < state.pending:
                continue  # already in this or a committed transaction (re-fetched after a rewind)
            if not batch.in_transaction:
                producer.begin_transaction()
                batch.in_transaction = True
            if key not in batch.touched:
                batch.touched[key] = state  # type: ignore[index]
                batch.first_offsets[key] = offset  # type: ignore[index]
            record_headers = message.headers()
            headers = [*(record_headers or ()), *state.headers, (SOURCE_OFFSET_HEADER, b"%d" % offset)]
            timestamp_type, timestamp = message.timestamp()
            if timestamp_type == TIMESTAMP_NOT_AVAILABLE:
                timestamp = 0
            else:
                batch.timestamps_ms.append(timestamp)
            value = message.value()
            record_key = message.key()
            while True:
                try:
                    produce(
                        state.target_topic,
                        value,
                        record_key,
                        partition=state.partition,
                        timestamp=timestamp,
                        headers=headers,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            state.pending = offset + 1
            state.batch_records += 1
            state.batch_bytes += (len(value) if value else 0) + (len(record_key) if record_key else 0)

    def _on_message_error(self, message: Message, error: KafkaError) -> None:
        code = error.code()
        topic, partition = message.topic(), message.partition()
        if code == KafkaError._AUTO_OFFSET_RESET and topic is not None and partition is not None:
            # The stored position is older than what the source still retains: those records
            # expired before they could be mirrored. Say so loudly, then go on from the oldest.
            self._metrics.observe_error("source_records_expired")
            logger.error("mirror.source_records_expired", topic=topic, partition=partition, error=str(error))
            self._reposition(TopicPartition(topic, partition, OFFSET_BEGINNING))
            return
        self._metrics.observe_error(_error_name(error))
        if code in _UNKNOWN_TOPIC_CODES:
            logger.warning("mirror.source_topic_gone", topic=topic, partition=partition, error=str(error))
            self._next_discovery = 0.0
            return
        if classify_kafka_error(error) is KafkaErrorKind.fatal:
            raise self._fatal(error, "reading the source")
        logger.warning("mirror.source_error", topic=topic, partition=partition, error=str(error))

    def _commit(self, batch: _Batch) -> None:
        producer = self._producer_()
        coordinator = self._coordinator_()
        positions = [
            TopicPartition(state.target_topic, state.partition, state.pending, state.metadata)
            for state in batch.touched.values()
            if state.pending is not None  # always set for a touched partition
        ]
        self._with_retries(
            lambda: producer.send_offsets_to_transaction(
                positions, coordinator.consumer_group_metadata(), KAFKA_TIMEOUT_S
            )
        )
        self._with_retries(lambda: producer.commit_transaction(KAFKA_TIMEOUT_S))

    def _with_retries(self, operation: Callable[[], object]) -> None:
        for attempt in range(RETRIES):
            try:
                operation()
                return
            except KafkaException as error:
                if classify_kafka_error(error) is not KafkaErrorKind.retriable or attempt == RETRIES - 1:
                    raise
                self._metrics.observe_error(_error_name(error))
                logger.warning("mirror.transaction_retry", attempt=attempt + 1, error=str(error))
                self._health.beat()
                time.sleep(min(0.2 * 2**attempt, 5.0))

    def _committed(self, batch: _Batch) -> None:
        now_ms = time.time() * 1000
        per_topic: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for state in batch.touched.values():
            state.committed = state.pending
            totals = per_topic[state.source_topic]
            totals[0] += state.batch_records
            totals[1] += state.batch_bytes
            state.batch_records = state.batch_bytes = 0
        for topic, (records, size) in per_topic.items():
            self._metrics.observe_copied(topic, records, size)
            self._progress.records += records
            self._progress.bytes += size
        self._progress.transactions += 1
        self._metrics.transactions.labels(result=TransactionResult.committed.value).inc()
        observe = self._metrics.replication_latency.observe
        for timestamp in batch.timestamps_ms:
            observe(max(0.0, (now_ms - timestamp) / 1000))
        self._consecutive_aborts = 0
        self._health.set_ready("target")

    def _abort(self, messages: list[Message], batch: _Batch, error: KafkaException) -> None:
        """Abort the open transaction and rewind every partition of the batch to its stored position."""
        self._metrics.observe_error(_error_name(error))
        if classify_kafka_error(error) is KafkaErrorKind.fatal:
            raise self._fatal(error, "mirror transaction") from error
        logger.warning("mirror.transaction_aborting", error=str(error), partitions=len(batch.touched))
        if batch.in_transaction:
            try:
                self._with_retries(lambda: self._producer_().abort_transaction(KAFKA_TIMEOUT_S))
            except KafkaException as abort_error:
                # A restart aborts it for sure (init_transactions with the same transactional id).
                raise self._fatal(abort_error, "aborting a transaction") from abort_error
            self._metrics.transactions.labels(result=TransactionResult.aborted.value).inc()
            self._progress.aborted += 1
        # Every partition that had records in the batch goes back, produced or not yet.
        first_seen: dict[_Key, int] = {}
        for message in messages:
            if message.error() is None:
                first_seen.setdefault((message.topic(), message.partition()), message.offset())  # type: ignore[arg-type]
        for key, first in first_seen.items():
            state = self._owned.get(key)
            if state is None:
                continue
            state.pending = state.committed
            state.batch_records = state.batch_bytes = 0
            self._reposition(
                TopicPartition(key[0], key[1], state.committed if state.committed is not None else first)
            )
        self._consecutive_aborts += 1
        self._health.set_not_ready("target", f"transaction aborted: {error}")
        if self._consecutive_aborts >= self._settings.max_consecutive_aborts:
            raise MirrorFatalError(
                f"{self._consecutive_aborts} transactions in a row aborted, the last because of: {error}"
            )
        self._stop.wait(min(0.1 * 2**self._consecutive_aborts, 5.0))

    def _reposition(self, position: TopicPartition) -> None:
        """Make the source consumer read ``position`` next; records it had fetched beyond are dropped.

        A seek where possible; a partition in an error state (e.g. after an
        offset-out-of-range report) refuses seeks and is assigned afresh instead.
        """
        data = self._data_()
        try:
            data.seek(position)
        except KafkaException:
            data.incremental_unassign([TopicPartition(position.topic, position.partition)])
            data.incremental_assign([position])

    # -- lag ----------------------------------------------------------------------------------
    def _update_lag(self) -> None:
        self._next_lag = time.monotonic() + LAG_INTERVAL_S
        if not self._owned:
            return
        data = self._data_()
        # Called between transactions: the consumer's position is then the stored position, or past
        # it only by records the mirror must skip (transaction markers, aborted records), which the
        # stored position cannot include. Without it a transactional source would show a lag of 1 forever.
        positions = {
            (tp.topic, tp.partition): tp.offset
            for tp in data.position([TopicPartition(*key) for key in self._owned])
            if tp.error is None
        }
        for key, state in self._owned.items():
            low, high = data.get_watermark_offsets(TopicPartition(*key), cached=True)
            if high < 0:
                continue
            position = positions.get(key, -1)
            if state.committed is not None:
                position = max(position, state.committed)
            elif position < 0:
                position = max(low, 0) if self._settings.initial_position == "earliest" else high
            self._metrics.set_lag(state.source_topic, state.partition, high - position)

    def _forget_lag(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.lag.remove(self._metrics.topic_label(topic), str(partition))
