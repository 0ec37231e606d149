"""Producing a batch of records and learning, record by record, which ones Kafka confirmed.

HermesK flushed after every message and never looked at the delivery report, then
deleted the Rucio row: a refused or lost record was gone for good. Here every
record of a batch is produced (batched and compressed by librdkafka), then the
producer is flushed once and each record's delivery report decides its fate: only
confirmed records may leave Rucio's table. The producer is idempotent with
``acks=all`` (the shared factory), so librdkafka's own retries never duplicate or
reorder records of one partition.

Delivery is bounded in time: ``message.timeout.ms`` is the delivery timeout, and a
flush that outlives it is purged, so a batch always ends with an answer for every
record (delivered, or failed with a reason) and the rows of failed records stay
for a later try.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ingestd.kafka import KafkaConnection, ensure_topics, make_admin, make_producer
from ingestd.log import get_logger

from ._errors import BrokerUnavailableError
from ._messages import OutgoingRecord
from ._settings import TopicSettings

__all__ = ["RECORD_ERRORS", "DeliveryOutcome", "KafkaDelivery"]

logger = get_logger(__name__)

_PENDING: Any = object()
"""Marker of a record whose delivery report has not arrived yet."""

TOPIC_CREATION_FAILED = "topic_creation_failed"
"""Error name of records whose topic could not be created."""
FLUSH_TIMED_OUT = "flush_timed_out"
"""Error name of records still unconfirmed when the flush deadline passed (then purged)."""


RECORD_ERRORS = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "_MSG_SIZE_TOO_LARGE",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_RECORD",
        "INVALID_MSG",
        "CORRUPT_MESSAGE",
        "POLICY_VIOLATION",
        "TOPIC_AUTHORIZATION_FAILED",
        "UNKNOWN_TOPIC_OR_PART",
        "_UNKNOWN_TOPIC",
        "TOPIC_EXCEPTION",
        "INVALID_TOPIC_EXCEPTION",
        TOPIC_CREATION_FAILED,
    }
)
"""Errors about the record or its topic, not the cluster: waiting for the brokers will not fix them.

Their rows are held back on their own (so the rows behind them flow) instead of
making the whole publisher back off. Any other error counts as the cluster's.
"""


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """Which records of a batch Kafka confirmed."""

    delivered: list[int]
    """Indices (into the batch) of confirmed records."""
    failed: dict[int, str]
    """Index of each failed record -> error name (a bounded label: librdkafka's error name)."""

    @property
    def all_delivered(self) -> bool:
        """Whether every record was confirmed."""
        return not self.failed

    def record_failures(self) -> list[int]:
        """Indices of the records that failed for a reason of their own (see :data:`RECORD_ERRORS`)."""
        return [index for index, error in self.failed.items() if error in RECORD_ERRORS]


_CLUSTER_ERRORS = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_CONTROLLER,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
    }
)
"""Topic-creation failures that are the cluster's (unreachable, timing out), not the topic's."""


class _RateLimitedLog:
    """librdkafka's own log lines, through structlog, at most once per interval per facility.

    A broker that is away makes librdkafka log every reconnection attempt (several
    per second); the first line says all an operator needs, the count says the rest.
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, message: str, *args: Any, **_kwargs: Any) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client, message).
        text = message % args if args else message
        facility = str(args[0]) if args else "librdkafka"
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(facility, -self.interval_s) < self.interval_s:
                self._suppressed[facility] = self._suppressed.get(facility, 0) + 1
                return
            self._last[facility] = now
            suppressed = self._suppressed.pop(facility, 0)
        logger.log(level, "librdkafka_log", facility=facility, detail=text, repeated_since_last=suppressed)


@dataclass
class _BrokerState:
    """What the producer's error callback last said, read by readiness."""

    last_error: str | None = None
    fatal: KafkaError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class KafkaDelivery:
    """Produces batches of records and reports their delivery one by one.

    Parameters
    ----------
    connection
        The central Kafka cluster.
    topics
        Whether and how destination topics are created.
    delivery_timeout_s
        librdkafka ``message.timeout.ms``: after it a record counts as failed.
    instance_id
        Appended to the client id, so brokers' logs tell instances apart.
    on_error
        Called with an error name for every client-level error (metrics).
    producer_overrides
        Extra librdkafka parameters (benchmarks, tests).
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topics: TopicSettings,
        *,
        delivery_timeout_s: float,
        instance_id: str,
        on_error: Callable[[str], None] | None = None,
        producer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.connection = connection
        self.topics = topics
        self.delivery_timeout_s = delivery_timeout_s
        self.instance_id = instance_id
        self._on_error_hook = on_error
        self._overrides = dict(producer_overrides or {})
        self._state = _BrokerState()
        self._librdkafka_log = _RateLimitedLog()
        self._error_logged: dict[str, float] = {}
        self._known_topics: set[str] = set()
        self._admin: Any = None
        self._producer: Producer = self._new_producer()

    # -- client life cycle ----------------------------------------------------------------
    def _new_producer(self) -> Producer:
        overrides: dict[str, Any] = {
            "client.id": f"{self.connection.client_id}-publisher-{self.instance_id}",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.timeout.ms": int(self.delivery_timeout_s * 1000),
            # Java clients' default partitioner: the same key lands in the same partition
            # whichever client produced it.
            "partitioner": "murmur2_random",
            "error_cb": self._on_client_error,
            "logger": self._librdkafka_log,
        }
        overrides.update(self._overrides)
        return make_producer(self.connection, overrides=overrides)

    def _admin_client(self) -> Any:
        if self._admin is None:
            self._admin = make_admin(
                self.connection,
                overrides={
                    "client.id": f"{self.connection.client_id}-publisher-admin-{self.instance_id}",
                    "logger": self._librdkafka_log,
                },
            )
        return self._admin

    def _on_client_error(self, error: KafkaError) -> None:
        name = error.name()
        now = time.monotonic()
        with self._state.lock:
            self._state.last_error = name
            if error.fatal():
                self._state.fatal = error
            quiet = now - self._error_logged.get(name, -60.0) < 30.0 and not error.fatal()
            if not quiet:
                self._error_logged[name] = now
        if not quiet:  # every error is counted; the log says it once per 30 s per kind
            logger.warning("kafka_client_error", error=name, reason=error.str(), fatal=error.fatal())
        if self._on_error_hook is not None:
            self._on_error_hook(error.name())

    @property
    def last_client_error(self) -> str | None:
        """The name of the last client-level error since the last successful batch, if any."""
        with self._state.lock:
            return self._state.last_error

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is left (normally nothing) and release the producer."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            logger.warning("kafka_close_unflushed", records=remaining)

    # -- topics -----------------------------------------------------------------------------
    def prepare_topics(self, names: Iterable[str]) -> None:
        """Create (or check) topics ahead of the first batch, e.g. every facility topic at start-up.

        Raises
        ------
        BrokerUnavailableError
            When the cluster does not answer.
        KafkaException
            When a topic cannot be created for a reason of its own (authorization, policy).
        """
        refused = self._ensure_topics(names)
        if refused:
            raise KafkaException(f"could not create topics {sorted(refused)}")

    def _ensure_topics(self, names: Iterable[str]) -> set[str]:
        """Create topics not seen before; return the names that could not be made sure of.

        Raises
        ------
        BrokerUnavailableError
            When the cluster itself cannot answer (the whole batch waits, not just these topics).
        """
        new = sorted(set(names) - self._known_topics)
        if not new:
            return set()
        if not self.topics.create:
            self._known_topics.update(new)
            return set()
        try:
            created = ensure_topics(
                self._admin_client(),
                new,
                partitions=self.topics.partitions,
                replication_factor=self.topics.replication_factor,
                config=self.topics.topic_config(),
                timeout_s=min(10.0, self.delivery_timeout_s),
            )
        except KafkaException as error:
            if self._on_error_hook is not None:
                self._on_error_hook(TOPIC_CREATION_FAILED)
            if _is_cluster_error(error):
                raise BrokerUnavailableError(f"Kafka cannot create or list topics now: {error}") from error
            logger.warning("topic_creation_failed", topics=new, reason=str(error))
            return set(new)
        if created:
            logger.info(
                "topics_created",
                topics=created,
                partitions=self.topics.partitions,
                replication_factor=self.topics.replication_factor,
            )
        self._known_topics.update(new)
        return set()

    # -- delivery ---------------------------------------------------------------------------
    def deliver(self, records: Sequence[OutgoingRecord]) -> DeliveryOutcome:
        """Produce ``records`` and wait until each is confirmed or has failed.

        Never raises for a record-level failure: the outcome lists it. The order of
        records sharing a key is kept (one producer, idempotent, one partition per key).

        Raises
        ------
        BrokerUnavailableError
            When a new topic cannot be created because the cluster does not answer;
            nothing of the batch was produced.
        """
        if not records:
            return DeliveryOutcome([], {})
        results: list[Any] = [_PENDING] * len(records)
        unready = self._ensure_topics(record.topic for record in records)
        producer = self._producer
        for index, record in enumerate(records):
            if record.topic in unready:
                results[index] = TOPIC_CREATION_FAILED
                continue
            callback = partial(_store_report, results, index)
            while True:
                try:
                    producer.produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        headers=list(record.headers),
                        on_delivery=callback,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)  # queue full: serve delivery reports, then retry
                except KafkaException as error:
                    results[index] = _error_name(error)
                    break
        remaining = producer.flush(self.delivery_timeout_s + 10.0)
        if remaining:
            # message.timeout.ms should have answered every record by now; purge what is
            # left so that no stale report can arrive later, and start a fresh producer.
            logger.warning("kafka_flush_timed_out", unconfirmed=remaining)
            producer.purge(in_queue=True, in_flight=True)
            producer.poll(0)
            self._replace_producer("flush_timed_out")
        with self._state.lock:
            fatal = self._state.fatal
        if fatal is not None:
            logger.error("kafka_producer_fatal", error=fatal.name(), reason=fatal.str())
            self._replace_producer(fatal.name())
        delivered: list[int] = []
        failed: dict[int, str] = {}
        for index, result in enumerate(results):
            if result is None:
                delivered.append(index)
            elif result is _PENDING:
                failed[index] = FLUSH_TIMED_OUT
            else:
                failed[index] = str(result)
        if not failed:
            with self._state.lock:
                self._state.last_error = None
        return DeliveryOutcome(delivered, failed)

    def _replace_producer(self, reason: str) -> None:
        """Start over with a new producer (after a fatal error or a stuck flush)."""
        logger.warning("kafka_producer_replaced", reason=reason)
        old = self._producer
        with self._state.lock:
            self._state.fatal = None
        try:
            old.purge(in_queue=True, in_flight=True)
            old.flush(0)
        except KafkaException:
            pass
        self._producer = self._new_producer()


def _store_report(results: list[Any], index: int, error: KafkaError | None, _message: Message) -> None:
    """Delivery callback: None for success, the error's name otherwise."""
    results[index] = None if error is None else error.name()


def _is_cluster_error(error: BaseException) -> bool:
    """Whether a topic-creation failure is the cluster's (itself, or the error it was raised from)."""
    current: BaseException | None = error
    while current is not None:
        inner = current.args[0] if isinstance(current, KafkaException) and current.args else None
        if isinstance(inner, KafkaError) and inner.code() in _CLUSTER_ERRORS:
            return True
        current = current.__cause__
    return False


def _error_name(error: KafkaException) -> str:
    inner = error.args[0] if error.args else None
    return inner.name() if isinstance(inner, KafkaError) else type(error).__name__
