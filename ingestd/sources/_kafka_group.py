"""The live source: a Kafka consumer group, acknowledged by synchronous offset commits.

Offsets are committed only when the engine says a batch is done (registry
committed, dead letters confirmed), synchronously, for the partitions this
consumer still owns in the same assignment generation as when the records were
read. A partition revoked mid-batch is simply not committed: its new owner reads
the records again and the registry reports them ``already_present``.

A synchronous commit is never waited for without a bound. librdkafka waits for
the reply of ``commit(asynchronous=False)`` forever, and after a broker restart
that reply can fail to come: the daemon's loop then hung inside ``commit`` with
its partitions reassigned and nothing consumed (the chaos suite's
``restart_kafka_local``; ``py-spy`` showed the main thread in
``rd_kafka_commit_queue`` for over a minute, with the broker long back). So the
commit runs on a worker thread and is given up after ``commit_timeout_s``; the
consumer that holds the unanswered commit is then retired (closed on a thread of
its own, which leaves the group) and a new one joins in its place. Nothing was
committed for the batch, so the new member re-reads it and the registry answers
``already_present``: nothing lost, nothing registered twice.

Two more duties live here because they are about *when* records are read:

* **Back-off.** :meth:`pause` stops fetching on every assigned partition and
  :meth:`keepalive` keeps calling ``consume`` so the group membership (and
  ``max.poll.interval.ms``) stays alive while the registry is away.
* **The retry topic.** Records parked by the engine carry an
  ``ingestd.not_before`` header. When one is read early, its partition is rewound
  to it and paused until that time; the other partitions flow on, so a parked
  event never blocks the live topics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from ingestd.deadletter import H_NOT_BEFORE
from ingestd.kafka import (
    CallStuckError,
    DeadlineCaller,
    KafkaConnection,
    KafkaErrorKind,
    classify_kafka_error,
    client_logger,
    make_consumer,
)
from ingestd.log import get_logger

from ._base import FatalSourceError, Headers, Progress, RawRecord, TransientSourceError
from ._message import to_raw_record, unpack
from ._topics import TopicSelection

__all__ = ["KafkaGroupSource", "PartitionLag"]

logger = get_logger(__name__)

TP = tuple[str, int]

_LOST_ASSIGNMENT = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
"""Commit errors that mean "these partitions are not yours any more": not retried."""

_UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
"""Consumer errors that mean the cluster cannot be reached (readiness says so)."""

_LOG_INTERVAL_S = 30.0


class PartitionLag(NamedTuple):
    """Records between the committed offset and the end of one assigned partition."""

    topic: str
    partition: int
    lag: int


class KafkaGroupSource:
    """Consume a topic selection as a member of a consumer group.

    Parameters
    ----------
    connection
        The facility's Kafka.
    group_id
        Consumer group; offsets are committed for it.
    selection
        Topics to subscribe (explicit, pattern, mirrored names, the retry topic).
    retry_topic
        The retry topic among the subscribed ones, whose records wait for their
        ``ingestd.not_before`` time; None when parking is not consumed here.
    origin_kind
        ``Position.source`` given to the records (``kafka``; ``dlq`` for re-drives).
    origin_from_headers
        Take each record's origin from its ``ingestd.source.*`` headers when present
        (retry and dead-letter records), so provenance names the first position.
    stop_at_end
        Finite mode (dead-letter re-drive): stop at the end offsets each partition
        had when it was first assigned.
    max_poll_interval_s, session_timeout_s
        Group timing.
    commit_timeout_s
        Longest wait for a synchronous offset commit before the consumer is
        replaced (see the module notes). Default: twice the session timeout, at
        least 30 s -- librdkafka itself gives up a commit waiting for a
        coordinator after one session timeout.
    consumer
        A consumer to use instead of building one (tests); it is not replaced.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        group_id: str,
        selection: TopicSelection,
        *,
        retry_topic: str | None = None,
        origin_kind: str = "kafka",
        origin_from_headers: bool = True,
        stop_at_end: bool = False,
        max_poll_interval_s: float = 300.0,
        session_timeout_s: float = 45.0,
        commit_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
        consumer: Consumer | None = None,
    ) -> None:
        self.name = f"kafka group {group_id}"
        self.group_id = group_id
        self.selection = selection
        self._retry_topic = retry_topic
        self._origin_kind = origin_kind
        self._origin_from_headers = origin_from_headers
        self._stop_at_end = stop_at_end
        self._clock = clock
        self._unreachable: tuple[float, str] | None = None
        """When and why the brokers were last reported unreachable (cleared by the next record)."""
        self._logged_errors: dict[int, float] = {}
        self._fatal: KafkaError | None = None
        overrides: dict[str, Any] = {
            "max.poll.interval.ms": int(max_poll_interval_s * 1000),
            "session.timeout.ms": int(session_timeout_s * 1000),
            "heartbeat.interval.ms": max(int(session_timeout_s * 1000 / 5), 100),
            "topic.metadata.refresh.interval.ms": 30_000,
            "logger": client_logger("ingestd.kafka.consumer"),
        }

        def build() -> Consumer:
            # Client-level errors (broker down, authentication) arrive here, not as records; a
            # retired consumer's are ignored (see _replace_consumer).
            epoch = self.replacements

            def on_error(error: KafkaError) -> None:
                self._on_client_error(error, epoch)

            return make_consumer(connection, group_id, overrides={**overrides, "error_cb": on_error})

        self.replacements = 0
        """Consumers replaced after a commit that never returned."""
        self._make_consumer: Callable[[], Consumer] | None = None if consumer is not None else build
        self._consumer = consumer or build()
        self._commit_timeout_s = (
            commit_timeout_s if commit_timeout_s is not None else max(2 * session_timeout_s, 30.0)
        )
        self._committer = DeadlineCaller(f"kafka-commit-{group_id}")
        self._assigned: dict[TP, int] = {}
        """Assigned partitions and the generation in which each was assigned."""
        self._generation = 0
        self._paused = False
        self._deferred: dict[TP, float] = {}
        """Retry-topic partitions paused until a record's not-before time (epoch seconds)."""
        self._end_offsets: dict[TP, int] = {}
        self._positions: dict[TP, int] = {}
        """Next offset to read per partition, as far as this source has returned records."""
        self._committed: dict[TP, int] = {}
        self._started = False
        self._closed = False
        self.consumed = 0

    # -- group membership ----------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._consumer.subscribe(
            [self.selection.regex],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._started = True
        logger.info("kafka_subscribed", group_id=self.group_id, subscription=self.selection.regex)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a retired consumer closing: its assignment is not this source's
        self._generation += 1
        consumer.assign(partitions)
        for tp in partitions:
            self._assigned[(tp.topic, tp.partition)] = self._generation
        if self._paused and partitions:
            consumer.pause(partitions)
        elif partitions:
            # librdkafka keeps a partition's pause flag across revoke and assign: a partition paused
            # during a back-off, lost, and assigned again after resume() ran on an empty assignment
            # would otherwise never be fetched again (found by the chaos suite's broker restarts).
            consumer.resume(partitions)
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException:
            committed = []
        for tp in committed:
            if tp.offset >= 0:
                self._committed[(tp.topic, tp.partition)] = tp.offset
        if self._stop_at_end:
            self._capture_end_offsets(partitions)
        logger.info(
            "kafka_partitions_assigned",
            group_id=self.group_id,
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
            generation=self._generation,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a retired consumer closing: the partitions may be the new one's already
        self._forget(partitions)
        logger.info(
            "kafka_partitions_revoked",
            group_id=self.group_id,
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a retired consumer closing: the partitions may be the new one's already
        self._forget(partitions)
        logger.warning(
            "kafka_partitions_lost",
            group_id=self.group_id,
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.pop(key, None)
            self._deferred.pop(key, None)
            self._positions.pop(key, None)
            self._committed.pop(key, None)

    def _capture_end_offsets(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if key in self._end_offsets:
                continue
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            except KafkaException as error:
                raise TransientSourceError(
                    f"cannot read end offset of {tp.topic}[{tp.partition}]: {error}"
                ) from error
            self._end_offsets[key] = high

    # -- reading -------------------------------------------------------------------------------

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Consume up to ``max_records`` (see the module notes on the retry topic)."""
        self._start()
        if self._fatal is not None:
            raise FatalSourceError(f"Kafka consumer error: {self._fatal}")
        self._resume_due()
        try:
            messages = self._consumer.consume(num_messages=max(max_records, 1), timeout=timeout_s)
        except KafkaException as error:
            self._raise(error, "consume")
            return []
        records: list[RawRecord] = []
        held: set[TP] = set()
        now = self._clock()
        if any(message.error() is None for message in messages):
            self._unreachable = None
        for message in messages:
            kafka_error = message.error()
            if kafka_error is not None:
                self._message_error(kafka_error)
                continue
            consumed = unpack(message)
            key = (consumed.topic, consumed.partition)
            if key in held or key not in self._assigned:
                continue
            offset = consumed.offset
            if self._stop_at_end and offset >= self._end_offsets.get(key, offset + 1):
                held.add(key)
                self._hold(key, offset, until=float("inf"))
                continue
            if key[0] == self._retry_topic:
                not_before = _not_before(consumed.headers)
                if not_before is not None and not_before > now:
                    held.add(key)
                    self._hold(key, offset, until=not_before)
                    continue
            record = to_raw_record(
                consumed,
                kind=self._origin_kind,
                origin_from_headers=self._origin_from_headers,
                generation=self._assigned[key],
            )
            self._positions[key] = offset + 1
            records.append(record)
        self.consumed += len(records)
        return records

    def _hold(self, key: TP, offset: int, *, until: float) -> None:
        """Rewind ``key`` to ``offset`` and pause it until ``until`` (epoch seconds)."""
        tp = TopicPartition(key[0], key[1], offset)
        try:
            self._consumer.pause([tp])
            self._consumer.seek(tp)
        except KafkaException as error:
            logger.warning("kafka_hold_failed", topic=key[0], partition=key[1], error=str(error))
            return
        self._deferred[key] = until

    def _resume_due(self) -> None:
        if self._paused or not self._deferred:
            return
        now = self._clock()
        due = [key for key, until in self._deferred.items() if until <= now]
        if not due:
            return
        for key in due:
            del self._deferred[key]
        self._consumer.resume([TopicPartition(topic, partition) for topic, partition in due])

    def _on_client_error(self, error: KafkaError, epoch: int = 0) -> None:
        """librdkafka's error callback: remember a fatal error for the next poll, note unreachability."""
        if epoch != self.replacements:
            return  # from a retired consumer
        if classify_kafka_error(error) is KafkaErrorKind.fatal:
            self._fatal = error
        self._note_error(error)

    def _message_error(self, error: KafkaError) -> None:
        if classify_kafka_error(error) is KafkaErrorKind.fatal:
            raise FatalSourceError(f"Kafka consumer error: {error}")
        self._note_error(error)

    def _note_error(self, error: KafkaError) -> None:
        kind = classify_kafka_error(error)
        now = time.monotonic()
        if error.code() in _UNREACHABLE:
            self._unreachable = (now, error.str())
        # librdkafka repeats these while a broker is away: log each kind once per interval.
        last = self._logged_errors.get(error.code(), -_LOG_INTERVAL_S)
        if now - last >= _LOG_INTERVAL_S:
            self._logged_errors[error.code()] = now
            logger.warning("kafka_consumer_error", error=str(error), code=error.code(), kind=kind.value)

    def _raise(self, error: KafkaException, action: str) -> None:
        if classify_kafka_error(error) is KafkaErrorKind.fatal:
            raise FatalSourceError(f"Kafka {action} failed: {error}") from error
        raise TransientSourceError(f"Kafka {action} failed: {error}") from error

    @property
    def exhausted(self) -> bool:
        """In finite mode, whether every assigned partition reached its end offset."""
        if not self._stop_at_end or not self._started or not self._assigned:
            return False
        for key in self._assigned:
            end = self._end_offsets.get(key)
            if end is None:
                return False
            if self._deferred.get(key) == float("inf"):
                continue  # held at its end offset
            if self._positions.get(key, self._committed.get(key, 0)) >= end or self._at_end(key, end):
                continue
            return False
        return True

    def _at_end(self, key: TP, end: int) -> bool:
        """Whether the consumer's own position (past control records) reached ``end``."""
        try:
            (tp,) = self._consumer.position([TopicPartition(key[0], key[1])])
        except KafkaException:
            return False
        return tp.offset != OFFSET_INVALID and tp.offset >= end

    # -- acknowledging -------------------------------------------------------------------------

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        """Commit, synchronously, the offsets after ``records`` for partitions still owned."""
        offsets: dict[TP, int] = {}
        for record in records:
            position = record.position
            if position.topic is None or position.partition is None or position.offset is None:
                raise ValueError(f"record {position} was not read from a Kafka partition")
            key = (position.topic, position.partition)
            if self._assigned.get(key) != record.generation:
                continue  # revoked (and maybe re-assigned) since: its new owner re-reads it
            offsets[key] = max(offsets.get(key, 0), position.offset + 1)
        self._commit(offsets)

    def _commit(self, offsets: dict[TP, int]) -> None:
        if not offsets:
            return
        partitions = [
            TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()
        ]
        consumer = self._consumer
        try:
            result = self._committer.call(
                "offset commit",
                lambda: consumer.commit(offsets=partitions, asynchronous=False),
                self._commit_timeout_s,
            )
        except CallStuckError as error:
            self._replace_consumer(f"offset commit did not return within {self._commit_timeout_s:.0f} s")
            raise TransientSourceError(
                f"Kafka offset commit did not return within {self._commit_timeout_s:.0f} s; "
                "consumer replaced, its uncommitted records are read again"
            ) from error
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            code = kafka_error.code() if isinstance(kafka_error, KafkaError) else None
            if code == KafkaError._NO_OFFSET:
                return
            if code in _LOST_ASSIGNMENT:
                logger.warning(
                    "kafka_commit_skipped_partitions_lost", group_id=self.group_id, error=str(error)
                )
                return
            self._raise(error, "offset commit")
            return
        for tp in result or ():
            if tp.error is not None:
                if tp.error.code() in _LOST_ASSIGNMENT:
                    continue
                self._raise(KafkaException(tp.error), f"offset commit of {tp.topic}[{tp.partition}]")
            self._committed[(tp.topic, tp.partition)] = tp.offset

    # -- back-off ------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop fetching on every assigned partition."""
        if self._paused:
            return
        self._paused = True
        assigned = self._assignment()
        if assigned:
            self._consumer.pause(assigned)

    def resume(self) -> None:
        """Fetch again, except retry partitions still waiting for their not-before time."""
        if not self._paused:
            return
        self._paused = False
        ready = [tp for tp in self._assignment() if (tp.topic, tp.partition) not in self._deferred]
        if ready:
            self._consumer.resume(ready)

    def keepalive(self, timeout_s: float) -> None:
        """Serve the group protocol for ``timeout_s`` while paused; rewind anything read meanwhile."""
        self._start()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            try:
                messages = self._consumer.consume(num_messages=100, timeout=max(min(remaining, 1.0), 0.0))
            except KafkaException as error:
                logger.warning("kafka_keepalive_error", error=str(error))
                messages = []
            first: dict[TP, int] = {}
            for message in messages:
                if message.error() is not None:
                    continue
                consumed = unpack(message)
                key = (consumed.topic, consumed.partition)
                first[key] = min(first.get(key, consumed.offset), consumed.offset)
            for key, offset in first.items():
                tp = TopicPartition(key[0], key[1], offset)
                try:
                    self._consumer.pause([tp])
                    self._consumer.seek(tp)
                except KafkaException as error:
                    logger.warning("kafka_rewind_failed", topic=key[0], partition=key[1], error=str(error))
            if remaining <= 0:
                return

    def _replace_consumer(self, reason: str) -> None:
        """Retire a consumer wedged in an unanswered call; a new one joins the group on the next poll.

        Everything known about the old assignment is dropped (its records fail the
        generation check in :meth:`acknowledge` and are read again by the new
        member). The old consumer is closed on a thread of its own -- closing leaves
        the group and hands its partitions over -- because closing may wait on the
        same unanswered request; the worker holding the stuck commit is retired too.
        The rebalance and error callbacks the old consumer still makes while it closes
        are ignored: they would otherwise forget the new consumer's partitions (same
        names) from another thread.
        """
        if self._make_consumer is None:
            raise FatalSourceError(f"Kafka consumer wedged ({reason}) and cannot be replaced")
        old, old_worker = self._consumer, self._committer
        self.replacements += 1
        self._consumer = self._make_consumer()
        self._committer = DeadlineCaller(f"kafka-commit-{self.group_id}")
        old_worker.retire()
        lost = sorted(f"{topic}[{partition}]" for topic, partition in self._assigned)
        self._forget([TopicPartition(topic, partition) for topic, partition in list(self._assigned)])
        self._started = False
        logger.error(
            "kafka_consumer_replaced",
            group_id=self.group_id,
            reason=reason,
            partitions=lost,
            replacements=self.replacements,
        )
        threading.Thread(
            target=_close_quietly, args=(old, self.group_id), name="kafka-consumer-retire", daemon=True
        ).start()

    def _assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in self._assigned]

    # -- status --------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Ready when at least one partition is assigned."""
        if not self._started:
            return False, "not subscribed yet"
        if self._unreachable is not None and time.monotonic() - self._unreachable[0] < _LOG_INTERVAL_S:
            return False, f"Kafka unreachable: {self._unreachable[1]}"
        if not self._assigned:
            return False, f"no partitions assigned to group {self.group_id} (joining, or no matching topic)"
        return True, f"{len(self._assigned)} partitions assigned"

    @property
    def assignment(self) -> list[TP]:
        """Assigned partitions."""
        return sorted(self._assigned)

    def lag(self) -> list[PartitionLag]:
        """Records between the committed offset and the end of each assigned partition.

        Uses the high watermarks the client caches from its fetch responses (no
        broker round trip, so measuring never stalls the loop); partitions not
        fetched yet (paused retry partitions) are left out.
        """
        lags = []
        for topic, partition in sorted(self._assigned):
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            committed = self._committed.get((topic, partition))
            if committed is None:
                committed = self._positions.get((topic, partition), high)
            lags.append(PartitionLag(topic, partition, max(high - committed, 0)))
        return lags

    def waiting(self) -> int:
        """Records this source could read now and has not: what an idle turn must not have.

        Per assigned partition not held back (a retry partition waiting for its
        not-before time), the cached high watermark (the last stable offset under
        ``read_committed``) less the furthest of the committed offset and the
        client's position; the position covers the transaction markers a
        transactional producer writes after each batch, which are never returned
        as records and so never committed. No broker round trip: called on idle turns.
        """
        keys = [key for key in sorted(self._assigned) if key not in self._deferred]
        if not keys:
            return 0
        try:
            positions = self._consumer.position(
                [TopicPartition(topic, partition) for topic, partition in keys]
            )
        except KafkaException:
            positions = []
        position = {(tp.topic, tp.partition): tp.offset for tp in positions}
        total = 0
        for key in keys:
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
            except KafkaException:
                continue
            if high is None or high < 0:
                continue  # not fetched yet
            done = max(self._committed.get(key, -1), self._positions.get(key, -1), position.get(key, -1))
            if done < 0:
                done = low if low is not None and low >= 0 else high  # nothing committed: from the start
            total += max(high - done, 0)
        return total

    def progress(self) -> Progress:
        """Records consumed so far; the total is known only in finite mode."""
        total = None
        if self._stop_at_end and self._end_offsets:
            total = self.consumed + sum(
                max(end - self._positions.get(key, self._committed.get(key, 0)), 0)
                for key, end in self._end_offsets.items()
            )
        return Progress(done=self.consumed, total=total, unit="records")

    def close(self) -> None:
        """Leave the group (partitions are handed over at once) without committing anything."""
        if self._closed:
            return
        self._closed = True
        self._committer.retire()
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as error:
            logger.warning("kafka_close_failed", error=str(error))


def _close_quietly(consumer: Consumer, group_id: str) -> None:
    """Close a retired consumer (on its own thread: it may wait on the request that wedged it)."""
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as error:
        logger.warning("kafka_retired_consumer_close_failed", group_id=group_id, error=str(error))
        return
    logger.info("kafka_retired_consumer_closed", group_id=group_id)


def _not_before(headers: Headers) -> float | None:
    for name, value in headers:
        if name == H_NOT_BEFORE and value:
            try:
                moment = datetime.fromisoformat(value.decode())
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    return None
