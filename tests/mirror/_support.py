"""Helpers of the mirror tests: write known records to the source, read the target, check exactly-once.

The check is the acceptance criterion itself: a ``read_committed`` consumer of
the target sees every committed source record exactly once, in per-partition
order, with the same key, value, headers, timestamp and partition, and with
provenance headers naming the source record.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message, Producer, TopicPartition

from ingestd.kafka import KafkaConnection, ensure_topics, make_admin, make_consumer, make_producer
from mirror import MirrorService, MirrorSettings, Provenance

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_TIMESTAMP_MS = (int(time.time()) - 3600) * 1000
"""Timestamps of test records: distinct from produce time (so preservation is checked), yet recent,
since brokers delete records older than their retention (24 h in the test bed) within minutes."""


@dataclass(frozen=True)
class Record:
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp: int

    @classmethod
    def of(cls, message: Message) -> Record:
        timestamp_type, timestamp = message.timestamp()
        assert timestamp_type == TIMESTAMP_CREATE_TIME, timestamp_type
        return cls(
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=message.key(),
            value=message.value(),
            headers=_headers(message),
            timestamp=timestamp,
        )

    def without_provenance(self) -> tuple[tuple[str, bytes | None], ...]:
        return tuple(h for h in self.headers if not h[0].startswith("ingestd.mirror."))


def _headers(message: Message) -> tuple[tuple[str, bytes | None], ...]:
    headers = message.headers() or ()
    pairs = headers.items() if isinstance(headers, dict) else headers
    return tuple((key, value.encode() if isinstance(value, str) else value) for key, value in pairs)


def create_topic(connection: KafkaConnection, topic: str, partitions: int = 3) -> None:
    ensure_topics(make_admin(connection), [topic], partitions=partitions)


Headers = list[tuple[str, str | bytes | None]]


def record_payload(index: int, size: int = 64) -> tuple[bytes | None, bytes, Headers, int]:
    """Key, value, headers and timestamp of the ``index``-th test record (varied on purpose)."""
    key = None if index % 17 == 0 else f"key-{index % 50}".encode()
    body = f"record-{index}-".encode()
    value = (body * (size // len(body) + 1))[:size]
    headers: Headers = [("trace", f"t{index}".encode())]
    if index % 5 == 0:
        headers += [("dup", b"1"), ("dup", b"2"), ("empty", None)]
    return key, value, headers, BASE_TIMESTAMP_MS + index


def produce(
    connection: KafkaConnection,
    topic: str,
    count: int,
    *,
    partitions: int = 3,
    start: int = 0,
    size: int = 64,
    producer: Producer | None = None,
) -> None:
    """Produce ``count`` known records (indices ``start``..), spread over ``partitions``, and flush."""
    own = producer is None
    producer = producer or make_producer(connection)
    for index in range(start, start + count):
        key, value, headers, timestamp = record_payload(index, size)
        while True:
            try:
                producer.produce(
                    topic, value, key, partition=index % partitions, headers=headers, timestamp=timestamp
                )
                break
            except BufferError:
                producer.poll(0.05)
    if own:
        assert producer.flush(60) == 0


def produce_transactions(connection: KafkaConnection, topic: str, *, partitions: int = 3) -> int:
    """Write committed and aborted transactions to the source; return how many records were committed."""
    producer = make_producer(connection, transactional_id=f"test-source-{uuid.uuid4().hex}")
    producer.init_transactions(30)
    committed = 0
    for round_ in range(4):
        producer.begin_transaction()
        produce(connection, topic, 25, partitions=partitions, start=10_000 + round_ * 25, producer=producer)
        if round_ % 2:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            committed += 25
    return committed


def read_all(
    connection: KafkaConnection,
    topic: str,
    *,
    expected: int,
    timeout_s: float = 60.0,
    partitions: int | None = None,
    read_committed: bool = True,
) -> list[Record]:
    """Read ``topic`` (``read_committed`` unless told) until ``expected`` records arrived, then to its end.

    Reading on to the end (the last stable offsets) after the expected count is
    what catches duplicates.
    """
    consumer = make_consumer(connection, group_id=None, read_committed=read_committed)
    try:
        deadline = time.monotonic() + timeout_s
        while partitions is None:
            # The mirror may not have created the target topic yet.
            metadata = consumer.list_topics(timeout=10).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                partitions = len(metadata.partitions)
            elif time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} did not appear within {timeout_s} s")
            else:
                time.sleep(0.2)
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        records: list[Record] = []
        while len(records) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                assert message.error() is None, message.error()
                records.append(Record.of(message))
        if len(records) < expected:
            counts = {p: sum(1 for r in records if r.partition == p) for p in range(partitions)}
            positions = consumer.position(list(_tps(topic, partitions)))
            raise AssertionError(
                f"read {len(records)} of {expected} records of {topic} within {timeout_s} s; per partition "
                f"{counts}; positions {[tp.offset for tp in positions]}; "
                f"ends {[consumer.get_watermark_offsets(tp, timeout=10) for tp in _tps(topic, partitions)]}"
            )
        # Drain to the end: anything beyond `expected` is a duplicate the check reports.
        ends = {}
        for p in range(partitions):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        while time.monotonic() < deadline + 10:
            reached = {tp.partition: tp.offset for tp in consumer.position(list(_tps(topic, partitions)))}
            if all(reached[p] >= ends[p] or ends[p] <= 0 for p in range(partitions)):
                break
            for message in consumer.consume(10_000, 0.5):
                assert message.error() is None, message.error()
                records.append(Record.of(message))
        return records
    finally:
        consumer.close()


def _tps(topic: str, partitions: int) -> Iterator[TopicPartition]:
    for p in range(partitions):
        yield TopicPartition(topic, p)


def assert_exactly_once(
    source: Sequence[Record], target: Sequence[Record], *, source_alias: str, target_topic: str
) -> None:
    """Every source record appears once in the target, same content and partition, in per-partition order."""
    by_position = {(r.partition, r.offset): r for r in source}
    assert len(by_position) == len(source)
    seen: set[tuple[int, int]] = set()
    last_offset: dict[int, int] = {}
    problems: list[str] = []
    for record in target:
        provenance = Provenance.from_headers(record.headers)
        assert provenance is not None, f"record without provenance: {record}"
        assert provenance.cluster == source_alias
        assert record.topic == target_topic
        position = (provenance.partition, provenance.offset)
        if position in seen:
            problems.append(f"duplicate of source {position}")
            continue
        seen.add(position)
        original = by_position.get(position)
        if original is None:
            problems.append(f"target record {position} is not a committed source record")
            continue
        if record.partition != original.partition:
            problems.append(f"{position} landed in partition {record.partition}")
        if (record.key, record.value, record.timestamp) != (original.key, original.value, original.timestamp):
            problems.append(f"{position} changed: {record} vs {original}")
        if record.without_provenance() != original.headers:
            problems.append(f"{position} headers changed: {record.headers} vs {original.headers}")
        if last_offset.get(record.partition, -1) >= provenance.offset:
            problems.append(f"{position} out of order in target partition {record.partition}")
        last_offset[record.partition] = provenance.offset
    missing = sorted(set(by_position) - seen)
    if missing:
        problems.append(f"{len(missing)} source records missing, e.g. {missing[:5]}")
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"


def settings_for(
    source: KafkaConnection, target: KafkaConnection, *, alias: str, **fields: Any
) -> MirrorSettings:
    """Mirror settings for a test: unique alias (so group, transactional id and prefix are unique)."""
    values: dict[str, Any] = {
        "source": source,
        "target": target,
        "source_alias": alias,
        "instance": "i0",
        "http_host": "127.0.0.1",
        "http_port": 0,
        "discovery_interval_s": 1.0,
        "session_timeout_ms": 6000,
        "transaction_timeout_ms": 15000,
        "batch_max_wait_ms": 100,
    }
    values.update(fields)
    return MirrorSettings(**values)


@contextlib.contextmanager
def running_in_thread(settings: MirrorSettings) -> Iterator[MirrorService]:
    """Run a mirror in this process (a thread) for the duration of the block."""
    service = MirrorService(settings)
    stop = threading.Event()
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(service.run(stop)), name="mirror", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the mirror did not stop within 60 s"
    assert outcome == [0], f"mirror exited with {outcome}"


def write_config(path: Path, settings: MirrorSettings) -> Path:
    """Write ``settings`` as the YAML file ``ingestd mirror --config`` reads."""
    data = settings.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class MirrorProcess:
    """``ingestd mirror`` in a child process, as an operator runs it."""

    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> MirrorProcess:
        env = {**os.environ, "INGESTD_LOG_FORMAT": "json", "INGESTD_LOG_LEVEL": "INFO"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "mirror", "--config", str(self.config)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, like a node failure or the OOM killer."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(predicate: Any, timeout_s: float, message: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s: {message}")


def end_offsets(
    connection: KafkaConnection, topic: str, partitions: int, *, read_committed: bool = True
) -> dict[int, int]:
    """End offsets per partition: last stable offsets, or high watermarks with ``read_committed=False``."""
    consumer = make_consumer(connection, group_id=None, read_committed=read_committed)
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def committed_positions(
    connection: KafkaConnection, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """The source positions the mirror stored on the target for ``topic`` (a target topic)."""
    consumer = make_consumer(connection, group_id=group, read_committed=True)
    try:
        stored = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in stored}
    finally:
        consumer.close()


def mirrored_up_to(target: KafkaConnection, group: str, target_topic: str, ends: dict[int, int]) -> bool:
    positions = committed_positions(target, group, target_topic, len(ends))
    return all(positions.get(p, -1) >= end for p, end in ends.items() if end > 0)
