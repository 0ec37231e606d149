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

When the target fails under a transaction
------------------------------------------
Every blocking transactional call has a deadline the mirror enforces itself
(``transaction_call_timeout_s``, see :mod:`mirror._transactional`), because
librdkafka does not always keep the timeout it is given: after a restart of the
target broker ``send_offsets_to_transaction`` can wait forever for a group
coordinator that is gone (librdkafka#5456), or time out on every attempt on a
coordinator connection that never recovers. A failed batch is aborted, and the
partitions go back to the positions stored on the target, read anew. The
producer is rebuilt -- same transactional id -- when a call did not return, when
the producer is in a fatal state of its own, when the abort fails, or when two
batches in a row failed. Rebuilding rather than exiting is safe: the new
producer's ``init_transactions`` bumps the epoch, which ends the old producer's
transaction (aborted, or committed if its commit had reached the coordinator)
and fences it, so nothing it still holds can land; positions are read back with
``require_stable`` afterwards, so either outcome is seen. A call left stuck keeps
its client (threads, sockets) until it returns, so after ``max_producer_rebuilds``
rebuilds without a commit the process exits non-zero and the supervisor starts a
clean one. The group consumer, when a broker restart fences its static membership,
is replaced the same way (:meth:`Replicator._rejoin_group`).

Liveness follows progress, not the loop: ``/healthz`` is beaten by a committed
transaction or a turn with nothing to do, never by retries. When records wait
and nothing was committed for ``stall_limit_s``, ``/healthz`` fails (the
supervisor restarts the process) and ``/readyz`` names the stall and its last cause.

Verified by ``tests/mirror``: kill -9 at random moments, two instances and a
rebalance, a paused instance coming back, a stalled instance trying to commit
after its partitions moved, one instance name used twice, and the target broker
restarted (and killed) under a running mirror (``test_target_restart.py``).
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
    TopicPartition,
)

from ingestd.kafka import (
    CallStuckError,
    KafkaErrorKind,
    classify_kafka_error,
    make_admin,
    make_consumer,
    make_producer,
)
from ingestd.log import get_logger
from monitoring.http_server import HealthState, StallWatch
from monitoring.metrics import MirrorMetrics, TransactionResult

from ._errors import MirrorFatalError, MirrorFencedError
from ._headers import SOURCE_OFFSET_HEADER, partition_headers
from ._settings import MirrorSettings
from ._topics import MirroredTopic, TopicCatalog
from ._transactional import TransactionalProducer

__all__ = ["Replicator"]

logger = get_logger(__name__)

POSITIONS_TIMEOUT_S = 2.0
"""Bound on one read of stored positions; a predecessor's open transaction makes it retry next turn."""
LAG_INTERVAL_S = 2.0
"""How often the per-partition lag gauges are refreshed."""
PROGRESS_INTERVAL_S = 60.0
"""How often a ``mirror.progress`` line summarises the work done (when there was any)."""
REBUILD_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Pauses between attempts to (re)build and initialise the transactional producer."""
REJOIN_WINDOW_S = 60.0
REJOIN_LIMIT = 3
"""Fences of the group consumer within :data:`REJOIN_WINDOW_S` that mean another process has our name.

Two processes with one instance name fence each other in turn, within seconds; a broker
restart fences a member at most once. Two restarts within a minute must not end the
process, hence three."""

_FENCED_CODES = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
_PRODUCER_FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
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
    floor: int | None = None
    """First source offset produced while no position was stored: where a rewind must go back to then."""
    """Next source offset once the open transaction commits."""
    batch_records: int = 0
    batch_bytes: int = 0

    def __post_init__(self) -> None:
        self.pending = self.committed


@dataclass
class _Batch:
    """What one transaction carries, for the commit and for the rewind of an abort."""

    touched: dict[_Key, _PartitionState] = field(default_factory=dict)
    timestamps_ms: list[int] = field(default_factory=list)
    in_transaction: bool = False
    committing: bool = False
    """Offsets were added and the commit began: its outcome is known only to the broker if it fails."""


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
        Liveness (beaten on progress: a committed transaction, or a turn with nothing to do) and
        readiness (source listed, target committing, not stalled).

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
        self._txn: TransactionalProducer | None = None
        self._producer_overrides: dict[str, Any] = {}
        self._producers_built = 0
        self._rebuilds_since_commit = 0
        self._build_attempts = 0
        self._next_build = 0.0
        self._awaiting_fallback: dict[_Key, int] = {}
        self._stall = StallWatch(health, settings.stall_limit_s)
        self._last_problem = ""
        self._rejoins: list[float] = []
        self._lag_waiting = False
        self._unfinished = False
        """A batch failed and no transaction committed since: its records still wait."""
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
        self._producer_overrides = {
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
        while not self._ensure_producer():
            if self._stop.wait(max(0.0, self._next_build - time.monotonic())):
                return
        self._coordinator = self._new_coordinator()
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
        self._poll_group()
        now = time.monotonic()
        if now >= self._next_discovery:
            self._discover()
        if not self._ensure_producer():
            # Positions to re-read (a rebuild rewinds) or records known to wait: a stall.
            self._check_stall(work_waiting=self._unfinished or bool(self._awaiting) or self._lag_waiting)
            self._stop.wait(min(0.5, max(0.0, self._next_build - time.monotonic())))
            return
        self._resolve_positions()
        messages = self._gather()
        if messages:
            self._mirror(messages)
        if time.monotonic() >= self._next_lag:
            self._update_lag()
        self._check_stall(
            work_waiting=bool(messages or self._awaiting or self._lag_waiting or self._unfinished)
        )
        self._progress.maybe_log(len(self._owned))

    def _check_stall(self, *, work_waiting: bool) -> None:
        """Keep liveness and the ``stalled`` readiness reason true to the progress actually made.

        Liveness is beaten only by progress: a committed transaction (see
        :meth:`_committed`) or a turn with nothing to do. Turns that retry
        without committing do not beat it, so after ``stall_limit_s`` of them
        ``/healthz`` fails and the supervisor restarts the process.
        """
        if not work_waiting:
            self._made_progress()
            return
        stalled_s = self._stall.check(
            lambda stalled_s: (
                f"no transaction committed for {stalled_s:.0f} s while records wait "
                f"(stall limit {self._settings.stall_limit_s:.0f} s); "
                f"last problem: {self._last_problem or 'none'}"
            )
        )
        if stalled_s is not None:
            self._metrics.observe_error("stalled")
            logger.error("mirror.stalled", stalled_s=round(stalled_s), last_problem=self._last_problem)

    def _made_progress(self) -> None:
        if self._stall.progress():
            logger.info("mirror.stall_over")

    def _note_problem(self, what: str, error: BaseException | KafkaError) -> None:
        self._last_problem = f"{what}: {error}"
        self._metrics.observe_error(_error_name(error))

    # -- the transactional producer -----------------------------------------------------------
    def _ensure_producer(self) -> bool:
        """Build and initialise the transactional producer if there is none; True once it is usable.

        One attempt per call, so the loop keeps polling the group in between;
        attempts are spaced by :data:`REBUILD_BACKOFF_S`.

        Raises
        ------
        MirrorFatalError
            Authentication, authorisation or fencing at initialisation, or too many
            rebuilds without a committed transaction.
        """
        if self._txn is not None and self._txn.initialised:
            return True
        if time.monotonic() < self._next_build:
            return False
        if self._txn is None:
            self._txn = TransactionalProducer(
                make_producer(
                    self._settings.target,
                    transactional_id=self._settings.transactional_id,
                    overrides=self._producer_overrides,
                ),
                self._settings.transaction_call_timeout_s,
                self._producers_built,
                on_retry=lambda error: self._note_problem("init_transactions", error),
            )
            self._producers_built += 1
        try:
            self._txn.init_transactions()
        except KafkaException as error:
            self._note_problem("init_transactions", error)
            kafka_error = _kafka_error(error)
            if classify_kafka_error(error) is KafkaErrorKind.fatal and (
                kafka_error is None or not kafka_error.fatal() or kafka_error.code() in _FENCED_CODES
            ):
                raise self._fatal(error, "init_transactions") from error
            self._health.set_not_ready("target", f"init_transactions: {error}")
            self._rebuild_producer(f"init_transactions: {error}")
            return False
        except CallStuckError as error:
            self._note_problem("init_transactions", error)
            self._health.set_not_ready("target", str(error))
            if self._txn.stuck:
                self._rebuild_producer(str(error))
            else:  # it returned, failing retriably (target unreachable): the same producer tries again
                self._build_attempts += 1
                delay = REBUILD_BACKOFF_S[min(self._build_attempts - 1, len(REBUILD_BACKOFF_S) - 1)]
                self._next_build = time.monotonic() + delay
                logger.warning(
                    "mirror.retrying", operation="init_transactions", error=str(error), delay_s=delay
                )
            return False
        self._next_build = 0.0
        self._build_attempts = 0
        self._health.set_ready("target")
        logger.info(
            "mirror.producer_ready",
            transactional_id=self._settings.transactional_id,
            generation=self._producers_built - 1,
        )
        return True

    def _rebuild_producer(self, reason: str) -> None:
        """Retire the transactional producer; the next turn builds another with the same transactional id.

        Safe for exactly-once: the new producer's ``init_transactions`` bumps the
        transactional id's epoch, which ends the old producer's open transaction
        (aborted; or committed, if its commit had already reached the coordinator)
        and fences the old producer, so nothing it still sends can land. Positions
        are then read back from the target (:meth:`_rewind_to_stored`), never
        assumed.

        Raises
        ------
        MirrorFatalError
            ``max_producer_rebuilds`` rebuilds without a committed transaction: exit,
            so the supervisor starts a fresh process (and clients left stuck go with it).
        """
        txn = self._txn
        self._txn = None
        stuck = txn is not None and txn.stuck
        if txn is not None:
            txn.retire()
        self._rebuilds_since_commit += 1
        self._metrics.observe_error("producer_rebuilt")
        delay = REBUILD_BACKOFF_S[min(self._rebuilds_since_commit - 1, len(REBUILD_BACKOFF_S) - 1)]
        self._next_build = time.monotonic() + delay
        logger.warning(
            "mirror.producer_rebuilding",
            reason=reason,
            stuck_call=stuck,
            rebuilds_since_commit=self._rebuilds_since_commit,
            delay_s=delay,
        )
        if self._rebuilds_since_commit > self._settings.max_producer_rebuilds:
            raise MirrorFatalError(
                f"the transactional producer was rebuilt {self._rebuilds_since_commit} times without a "
                f"committed transaction; the last reason: {reason}"
            )
        self._rewind_to_stored()

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
        self._awaiting_fallback.clear()
        if self._txn is not None:
            self._txn.close()
            self._txn = None
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
    def _txn_(self) -> TransactionalProducer:
        if self._txn is None:
            raise RuntimeError("the transactional producer is not ready")
        return self._txn

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

    # -- group and discovery ------------------------------------------------------------------
    def _new_coordinator(self) -> Consumer:
        settings = self._settings
        return make_consumer(
            settings.target,
            settings.effective_group_id,
            read_committed=True,
            overrides={
                "logger": logging.getLogger("mirror.librdkafka"),
                "group.instance.id": settings.instance,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": settings.session_timeout_ms,
                "topic.metadata.refresh.interval.ms": max(1000, int(settings.discovery_interval_s * 1000)),
            },
        )

    def _rejoin_group(self, error: KafkaError) -> None:
        """Replace a group consumer fenced out of its static membership; exit if it happens again soon.

        After a restart of the target the group coordinator can fence this member's
        own static membership (``_FATAL``: "fenced by other consumer with same
        group.instance.id") though no other process runs; the consumer cannot continue.
        It is called between transactions, so nothing is in flight: every partition is
        rewound and a new consumer joins with the same ``group.instance.id``, gets the
        partitions again and reads their stored positions. When another process does
        run with this instance name, the two would fence each other in turn:
        :data:`REJOIN_LIMIT` fences within :data:`REJOIN_WINDOW_S` end this process
        (:class:`MirrorFencedError`); the older process is the one fenced first, hence the
        one that reaches the limit first and exits.
        """
        now = time.monotonic()
        self._rejoins = [at for at in self._rejoins if now - at < REJOIN_WINDOW_S] + [now]
        if len(self._rejoins) >= REJOIN_LIMIT:
            raise MirrorFencedError(
                f"group membership on the target fenced {len(self._rejoins)} times within "
                f"{REJOIN_WINDOW_S:.0f} s: {error} "
                f"(another process runs as instance {self._settings.instance!r})"
            )
        logger.warning("mirror.group_rejoining", error=str(error))
        self._rewind_to_stored()
        self._awaiting.clear()  # the new member's assignment decides
        old = self._coordinator
        self._coordinator = self._new_coordinator()
        if old is not None:
            self._close_quietly("fenced coordinator", old.close)
        self._subscribed = ()
        self._next_discovery = 0.0  # subscribe the new member this turn

    def _poll_group(self) -> None:
        message = self._coordinator_().poll(0)
        error = message.error() if message is not None else None
        if error is not None:
            self._metrics.observe_error(_error_name(error))
            # librdkafka reports a consumer fenced by another static member with the same
            # group.instance.id as _FATAL (the client is done for) rather than FENCED_INSTANCE_ID.
            if classify_kafka_error(error) is KafkaErrorKind.fatal or error.code() in (
                KafkaError._FATAL,
                KafkaError.FENCED_INSTANCE_ID,
            ):
                if error.code() == KafkaError.FENCED_INSTANCE_ID or "fenced" in error.str().lower():
                    self._rejoin_group(error)
                    return
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
            self._awaiting_fallback.pop(target_key, None)
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
            # After a rewind of a partition with no stored position yet: where its first batch began.
            fallback = self._awaiting_fallback.pop(target_key, None)
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
            if committed is not None:
                position = committed
            elif fallback is not None:
                position = fallback
            else:
                position = initial
            start.append(TopicPartition(topic.source, tp.partition, position))
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
        except (KafkaException, CallStuckError) as error:
            self._fail_batch(batch, error)
            return
        self._committed(batch)

    def _produce_batch(self, messages: list[Message], batch: _Batch) -> None:
        txn = self._txn_()
        producer = txn.producer
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
                txn.begin_transaction()
                batch.in_transaction = True
                queue_deadline = time.monotonic() + self._settings.transaction_call_timeout_s
            if key not in batch.touched:
                batch.touched[key] = state  # type: ignore[index]
                if state.committed is None and state.floor is None:
                    state.floor = offset
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
                    # The queue drains only while the target accepts records; a target that does
                    # not is a failed batch, not a loop without end.
                    if time.monotonic() > queue_deadline:
                        raise CallStuckError(
                            "the producer queue stayed full for "
                            f"{self._settings.transaction_call_timeout_s:.0f} s: "
                            "the target is not accepting records"
                        ) from None
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
        txn = self._txn_()
        positions = [
            TopicPartition(state.target_topic, state.partition, state.pending, state.metadata)
            for state in batch.touched.values()
            if state.pending is not None  # always set for a touched partition
        ]
        txn.send_offsets_to_transaction(positions, self._coordinator_().consumer_group_metadata())
        batch.committing = True
        txn.commit_transaction()

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
        self._rebuilds_since_commit = 0
        self._unfinished = False
        self._health.set_ready("target")
        self._made_progress()

    def _fail_batch(self, batch: _Batch, error: KafkaException | CallStuckError) -> None:
        """End a batch that could not commit: abort (or rebuild the producer), rewind, back off.

        * abortable, or retriable past the call deadline: ``abort_transaction``; when
          the abort fails or hangs too, when the deadline passed during the commit (librdkafka
          refuses an abort while a commit is in progress), or when the batch before failed as
          well (a producer whose calls keep timing out is wedged), the producer is rebuilt;
        * a call that never returned, or a fatal producer state: the producer is rebuilt
          (:meth:`_rebuild_producer`), which fences the old one and ends its transaction;
        * fatal for another reason (authentication, authorisation, this instance fenced
          by another process): :class:`MirrorFatalError`, the process exits.

        Every partition then goes back to the position stored on the target, read
        anew: after a failed commit the outcome is not known locally (the broker may
        have committed), and the stored position is the truth either way.
        """
        self._note_problem("mirror transaction", error)
        self._unfinished = True  # until a commit, or no lag on partitions owned again
        self._health.set_not_ready("target", f"transaction failed: {error}")
        rebuild = isinstance(error, CallStuckError) and self._txn_().stuck
        if isinstance(error, KafkaException):
            kafka_error = _kafka_error(error)
            if classify_kafka_error(error) is KafkaErrorKind.fatal:
                if kafka_error is None or not kafka_error.fatal() or self._fenced_by_other(kafka_error):
                    raise self._fatal(error, "mirror transaction") from error
                rebuild = True  # the producer's own fatal state (e.g. epoch lost in a broker restart)
        if batch.committing and isinstance(error, CallStuckError):
            # A commit that timed out is still in progress inside librdkafka: an abort is refused
            # (_CONFLICT) until it ends. A new producer's init_transactions ends it at once instead.
            rebuild = True
        if self._consecutive_aborts >= 1:
            # The batch before failed too: the producer may be wedged on a coordinator connection that
            # will not recover (every call times out); a fresh one looks the coordinators up again.
            rebuild = True
        logger.warning(
            "mirror.transaction_failed",
            error=str(error),
            partitions=len(batch.touched),
            committing=batch.committing,
            rebuild_producer=rebuild,
        )
        if not rebuild and batch.in_transaction:
            try:
                self._txn_().abort_transaction()
            except (KafkaException, CallStuckError) as abort_error:
                self._note_problem("abort_transaction", abort_error)
                if isinstance(abort_error, KafkaException) and self._fenced_by_other(
                    _kafka_error(abort_error)
                ):
                    raise self._fatal(abort_error, "aborting a transaction") from abort_error
                rebuild = True
            else:
                self._metrics.transactions.labels(result=TransactionResult.aborted.value).inc()
                self._progress.aborted += 1
        if rebuild:
            self._rebuild_producer(str(error))  # rewinds too
        else:
            self._rewind_to_stored()
        self._consecutive_aborts += 1
        if self._consecutive_aborts >= self._settings.max_consecutive_aborts:
            raise MirrorFatalError(
                f"{self._consecutive_aborts} transactions in a row failed, the last because of: {error}"
            )
        self._stop.wait(min(0.1 * 2**self._consecutive_aborts, 5.0))

    def _fenced_by_other(self, error: KafkaError | None) -> bool:
        """Whether ``error`` says a newer producer took this instance's transactional id.

        Only another process's ``init_transactions`` with the same transactional id
        fences the current producer (a producer this process retired never initialises
        again), so this ends the process at once, as before: the older of two processes
        with one instance name is the one fenced, deterministically. (A broker restart
        does not fence: a transaction the coordinator aborted meanwhile surfaces as an
        abortable error.)
        """
        return error is not None and error.code() in _PRODUCER_FENCED_CODES

    def _rewind_to_stored(self) -> None:
        """Send every partition back to the position stored on the target, read anew before mirroring on.

        What a restart would do, without the restart: the source consumer stops
        reading the partitions, their stored positions are read with
        ``require_stable`` (waiting for any transaction still open to end), and
        reading starts again there. Records fetched beyond are dropped.
        """
        if not self._owned:
            return
        released: list[TopicPartition] = []
        for target_key, source_key in list(self._owned_by_target.items()):
            state = self._owned.pop(source_key, None)
            if state is None:
                continue
            released.append(TopicPartition(*source_key))
            self._awaiting.add(target_key)
            if state.committed is None and state.floor is not None:
                self._awaiting_fallback[target_key] = state.floor
        self._owned_by_target.clear()
        if released:
            self._data_().incremental_unassign(released)
        logger.info("mirror.rewound", partitions=len(released))

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
        self._lag_waiting = False
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
            if high > position:
                self._lag_waiting = True
        if not self._lag_waiting:
            self._unfinished = False  # the failed batch's records went elsewhere (another instance)

    def _forget_lag(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.lag.remove(self._metrics.topic_label(topic), str(partition))
