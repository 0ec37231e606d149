"""Read a slice of Kafka topics without a consumer group: backfills and inspection.

``ingestd replay --from-kafka`` and ``ingestd dlq list`` assign partitions
themselves, read from a start (offset, timestamp or the beginning) to an end
(offset, timestamp or the end the partition had when the read started) and stop.
Nothing is committed, so the live consumer group is never disturbed; replaying is
safe because registration is idempotent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import OFFSET_END, OFFSET_INVALID, Consumer, KafkaException, TopicPartition

from ingestd.kafka import KafkaConnection, KafkaErrorKind, classify_kafka_error, client_logger, make_consumer
from ingestd.log import get_logger

from ._base import FatalSourceError, Progress, RawRecord, TransientSourceError
from ._message import to_raw_record, unpack
from ._topics import TopicSelection

__all__ = ["KafkaRangeSource", "RangeBound"]

logger = get_logger(__name__)

TP = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RangeBound:
    """A start or end of the range: an offset (same for every partition) or a time, or neither."""

    offset: int | None = None
    time: datetime | None = None

    def __post_init__(self) -> None:
        if self.offset is not None and self.time is not None:
            raise ValueError("a range bound is an offset or a time, not both")
        if self.time is not None and self.time.tzinfo is None:
            raise ValueError("range bound times must carry a time zone (e.g. 2025-03-20T00:00:00Z)")

    @property
    def unbounded(self) -> bool:
        """Neither offset nor time: the beginning (start) or current end (end)."""
        return self.offset is None and self.time is None


class KafkaRangeSource:
    """Read ``[start, end)`` of every partition of the selected topics, then stop.

    Parameters
    ----------
    connection
        Cluster to read.
    selection
        Topics to read (matched against the cluster's topic list when the read starts).
    start, end
        Range bounds; offsets are per partition, times are looked up per partition.
    origin_kind
        ``Position.source`` of the records (``kafka-range``; ``dlq`` to list dead letters).
    origin_from_headers
        Use the original position of dead-letter/retry records as their origin.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        selection: TopicSelection,
        *,
        start: RangeBound | None = None,
        end: RangeBound | None = None,
        origin_kind: str = "kafka-range",
        origin_from_headers: bool = True,
        metadata_timeout_s: float = 15.0,
        consumer: Consumer | None = None,
    ) -> None:
        self.selection = selection
        self.name = f"kafka range {selection.regex}"
        self._start_bound = start or RangeBound()
        self._end_bound = end or RangeBound()
        self._origin_kind = origin_kind
        self._origin_from_headers = origin_from_headers
        self._timeout = metadata_timeout_s
        self._consumer = consumer or make_consumer(
            connection,
            None,
            overrides={
                "logger": client_logger("ingestd.kafka.consumer"),
            },
        )
        self._starts: dict[TP, int] = {}
        self._ends: dict[TP, int] = {}
        self._done: set[TP] = set()
        self._positions: dict[TP, int] = {}
        self._assigned = False
        self._paused = False
        self.read = 0

    @property
    def topics(self) -> list[str]:
        """The topics being read (after the first poll)."""
        return sorted({topic for topic, _ in self._ends})

    def _assign(self) -> None:
        if self._assigned:
            return
        try:
            metadata = self._consumer.list_topics(timeout=self._timeout)
        except KafkaException as error:
            raise TransientSourceError(f"cannot list topics: {error}") from error
        topics = self.selection.select(metadata.topics)
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(metadata.topics[topic].partitions)
        ]
        for tp in partitions:
            try:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout)
            except KafkaException as error:
                raise TransientSourceError(
                    f"cannot read offsets of {tp.topic}[{tp.partition}]: {error}"
                ) from error
            key = (tp.topic, tp.partition)
            self._starts[key] = self._resolve(tp, self._start_bound, low=low, high=high, default=low)
            self._ends[key] = self._resolve(tp, self._end_bound, low=low, high=high, default=high)
            if self._starts[key] >= self._ends[key]:
                self._done.add(key)
        todo = [
            TopicPartition(t, p, self._starts[(t, p)])
            for t, p in sorted(self._starts)
            if (t, p) not in self._done
        ]
        self._consumer.assign(todo)
        self._assigned = True
        logger.debug(
            "kafka_range_assigned",
            topics=topics,
            partitions=len(partitions),
            records=self.total,
        )

    def _resolve(self, tp: TopicPartition, bound: RangeBound, *, low: int, high: int, default: int) -> int:
        if bound.offset is not None:
            return min(max(bound.offset, low), high)
        if bound.time is not None:
            query = TopicPartition(tp.topic, tp.partition, int(bound.time.timestamp() * 1000))
            try:
                (found,) = self._consumer.offsets_for_times([query], timeout=self._timeout)
            except KafkaException as error:
                raise TransientSourceError(
                    f"cannot look up offsets by time in {tp.topic}: {error}"
                ) from error
            if found.offset in (OFFSET_END, OFFSET_INVALID) or found.offset < 0:
                return high
            return min(max(found.offset, low), high)
        return default

    @property
    def total(self) -> int:
        """Records in the range (an upper bound: transaction markers take offsets too)."""
        return sum(max(self._ends[key] - self._starts[key], 0) for key in self._ends)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Read up to ``max_records`` records inside the range."""
        self._assign()
        if self.exhausted or self._paused:
            if self._paused:
                time.sleep(min(timeout_s, 0.2))
            return []
        try:
            messages = self._consumer.consume(num_messages=max(max_records, 1), timeout=timeout_s)
        except KafkaException as error:
            if classify_kafka_error(error) is KafkaErrorKind.fatal:
                raise FatalSourceError(f"Kafka consume failed: {error}") from error
            raise TransientSourceError(f"Kafka consume failed: {error}") from error
        records: list[RawRecord] = []
        for message in messages:
            kafka_error = message.error()
            if kafka_error is not None:
                if classify_kafka_error(kafka_error) is KafkaErrorKind.fatal:
                    raise FatalSourceError(f"Kafka consumer error: {kafka_error}")
                logger.warning("kafka_consumer_error", error=str(kafka_error))
                continue
            consumed = unpack(message)
            key = (consumed.topic, consumed.partition)
            if key in self._done:
                continue
            offset = consumed.offset
            if offset >= self._ends[key]:
                self._finish(key)
                continue
            self._positions[key] = offset + 1
            if offset + 1 >= self._ends[key]:
                self._finish(key)
            records.append(
                to_raw_record(consumed, kind=self._origin_kind, origin_from_headers=self._origin_from_headers)
            )
        if not records:
            self._check_positions()
        self.read += len(records)
        return records

    def _finish(self, key: TP) -> None:
        if key in self._done:
            return
        self._done.add(key)
        with contextlib.suppress(KafkaException):
            self._consumer.pause([TopicPartition(key[0], key[1])])

    def _check_positions(self) -> None:
        """Mark partitions done whose position passed the end (the last offsets were control records)."""
        pending = [TopicPartition(t, p) for t, p in self._ends if (t, p) not in self._done]
        if not pending:
            return
        try:
            positions = self._consumer.position(pending)
        except KafkaException:
            return
        for tp in positions:
            if tp.offset >= 0 and tp.offset >= self._ends[(tp.topic, tp.partition)]:
                self._finish((tp.topic, tp.partition))

    @property
    def exhausted(self) -> bool:
        """Every partition reached its end."""
        return self._assigned and len(self._done) == len(self._ends)

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        """Nothing to record: a range read never commits (the live group is not disturbed)."""

    def pause(self) -> None:
        """Stop reading until :meth:`resume` (no group to keep alive)."""
        self._paused = True

    def resume(self) -> None:
        """Read again."""
        self._paused = False

    def keepalive(self, timeout_s: float) -> None:
        """No group membership to keep: just wait."""
        time.sleep(max(timeout_s, 0.0))

    def readiness(self) -> tuple[bool, str]:
        """Always ready: no group to join."""
        return True, "range read"

    def progress(self) -> Progress:
        """Records read against the size of the range."""
        done = sum(
            max(self._positions.get(key, self._starts[key]) - self._starts[key], 0) for key in self._ends
        )
        return Progress(done=done, total=self.total if self._assigned else None, unit="records")

    def close(self) -> None:
        """Close the consumer (nothing to commit)."""
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as error:
            logger.warning("kafka_close_failed", error=str(error))
