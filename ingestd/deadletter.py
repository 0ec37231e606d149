"""Dead letters and parked events: the record format, and writers that wait for durability.

An event that can never succeed as sent (``rejected``, ``conflict``) is copied to the
dead-letter topic; one that must wait (``parked``: dimension records not there
yet, file not visible yet) is copied to the retry topic, which the daemon also
consumes. Either way the copy carries the original key and value bytes unchanged
and says what happened in headers:

=============================  ================================================
header                          value (UTF-8)
=============================  ================================================
``ingestd.error_class``         bounded identifier (``invalid_json``, ``conflict``, ``missing_dimensions``)
``ingestd.reason``              what an operator needs to know, naming field and value
``ingestd.outcome``             ``rejected``, ``conflict`` or ``parked``
``ingestd.source.kind``         ``kafka``, ``file``, ``kafka-range`` or ``dlq``
``ingestd.source.topic``        where the event was first read ...
``ingestd.source.partition``    ...
``ingestd.source.offset``       ...
``ingestd.source.line``         ... or its line in a JSON-lines file
``ingestd.failed_at``           ISO 8601 UTC time of this failure
``ingestd.first_failed_at``     ISO 8601 UTC time of the first failure (parking age)
``ingestd.attempts``            how many times the event has been tried
``ingestd.not_before``          retry topic only: do not retry before this time
=============================  ================================================

The engine acknowledges its source only after :meth:`DeadLetterWriter.write`
returned, i.e. after the broker confirmed every record (``acks=all``, idempotent
producer) or the file was synced to disk. A delivery that fails raises
:class:`DeadLetterDeliveryError` listing what was *not* confirmed, so a retry
re-sends only those; a dead letter is therefore written at least once and at
most twice only if the broker confirmed after the client gave up waiting.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from ingestd.kafka import KafkaConnection, KafkaErrorKind, classify_kafka_error, client_logger, make_producer
from ingestd.log import get_logger
from ingestd.work import Outcome, Position

__all__ = [
    "HEADER_PREFIX",
    "DeadLetter",
    "DeadLetterDeliveryError",
    "DeadLetterError",
    "DeadLetterInfo",
    "DeadLetterWriter",
    "Destination",
    "FatalDeadLetterError",
    "FileDeadLetterWriter",
    "KafkaDeadLetterWriter",
    "read_dead_letter_file",
]

logger = get_logger(__name__)

HEADER_PREFIX: Final = "ingestd."
H_ERROR_CLASS: Final = "ingestd.error_class"
H_REASON: Final = "ingestd.reason"
H_OUTCOME: Final = "ingestd.outcome"
H_SOURCE_KIND: Final = "ingestd.source.kind"
H_SOURCE_TOPIC: Final = "ingestd.source.topic"
H_SOURCE_PARTITION: Final = "ingestd.source.partition"
H_SOURCE_OFFSET: Final = "ingestd.source.offset"
H_SOURCE_LINE: Final = "ingestd.source.line"
H_FAILED_AT: Final = "ingestd.failed_at"
H_FIRST_FAILED_AT: Final = "ingestd.first_failed_at"
H_ATTEMPTS: Final = "ingestd.attempts"
H_NOT_BEFORE: Final = "ingestd.not_before"
H_TRUNCATED: Final = "ingestd.truncated_from_bytes"

MAX_REASON_BYTES: Final = 4_000
"""Reasons are cut to this length: a header is for a sentence, not a traceback."""


class Destination(StrEnum):
    """Where a copy of a failed event goes."""

    dead_letter = "dead_letter"
    """The dead-letter topic: waits for an operator (`ingestd dlq`)."""
    retry = "retry"
    """The retry topic: re-driven by the daemon after its not-before time."""


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """What the headers of a dead-letter or retry record say."""

    error_class: str
    reason: str
    outcome: Outcome
    origin: Position
    failed_at: datetime
    attempts: int = 1
    first_failed_at: datetime | None = None
    not_before: datetime | None = None
    truncated_from_bytes: int | None = None

    def to_headers(self) -> list[tuple[str, bytes]]:
        """Encode as Kafka headers (UTF-8 strings)."""
        reason = self.reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
        headers: list[tuple[str, str]] = [
            (H_ERROR_CLASS, self.error_class),
            (H_REASON, reason),
            (H_OUTCOME, self.outcome.value),
            (H_SOURCE_KIND, self.origin.source),
            (H_FAILED_AT, _iso(self.failed_at)),
            (H_FIRST_FAILED_AT, _iso(self.first_failed_at or self.failed_at)),
            (H_ATTEMPTS, str(self.attempts)),
        ]
        if self.origin.topic is not None:
            headers.append((H_SOURCE_TOPIC, self.origin.topic))
        if self.origin.partition is not None:
            headers.append((H_SOURCE_PARTITION, str(self.origin.partition)))
        if self.origin.offset is not None:
            headers.append((H_SOURCE_OFFSET, str(self.origin.offset)))
        if self.origin.line is not None:
            headers.append((H_SOURCE_LINE, str(self.origin.line)))
        if self.not_before is not None:
            headers.append((H_NOT_BEFORE, _iso(self.not_before)))
        if self.truncated_from_bytes is not None:
            headers.append((H_TRUNCATED, str(self.truncated_from_bytes)))
        return [(name, value.encode()) for name, value in headers]

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes | None]] | None) -> DeadLetterInfo | None:
        """Decode the headers of a dead-letter or retry record; None when they are not ours.

        Unparseable values fall back to neutral ones rather than raising: a record
        written by an older or foreign writer is still listed and re-drivable.
        """
        values = {
            name: (value or b"").decode(errors="replace")
            for name, value in headers or ()
            if name.startswith(HEADER_PREFIX)
        }
        if H_ERROR_CLASS not in values:
            return None
        try:
            outcome = Outcome(values.get(H_OUTCOME, Outcome.rejected.value))
        except ValueError:
            outcome = Outcome.rejected
        origin = Position(
            source=values.get(H_SOURCE_KIND, "kafka"),
            topic=values.get(H_SOURCE_TOPIC),
            partition=_int(values.get(H_SOURCE_PARTITION)),
            offset=_int(values.get(H_SOURCE_OFFSET)),
            line=_int(values.get(H_SOURCE_LINE)),
        )
        failed_at = _time(values.get(H_FAILED_AT)) or datetime.fromtimestamp(0, UTC)
        return cls(
            error_class=values[H_ERROR_CLASS],
            reason=values.get(H_REASON, ""),
            outcome=outcome,
            origin=origin,
            failed_at=failed_at,
            attempts=_int(values.get(H_ATTEMPTS)) or 1,
            first_failed_at=_time(values.get(H_FIRST_FAILED_AT)),
            not_before=_time(values.get(H_NOT_BEFORE)),
            truncated_from_bytes=_int(values.get(H_TRUNCATED)),
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One copy to write: the original bytes, the original foreign headers, and what happened."""

    destination: Destination
    value: bytes
    info: DeadLetterInfo
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    """The record's own headers; earlier ``ingestd.*`` headers are replaced by ``info``."""

    def all_headers(self) -> list[tuple[str, bytes]]:
        """Foreign headers first, then this failure's ``ingestd.*`` headers."""
        kept = [(name, value) for name, value in self.headers if not name.startswith(HEADER_PREFIX)]
        return kept + self.info.to_headers()


class DeadLetterError(Exception):
    """Base of the errors of dead-letter writers."""


class DeadLetterDeliveryError(DeadLetterError, ConnectionError):
    """Some copies were not confirmed (broker away, timeout); retry with :attr:`undelivered`."""

    def __init__(self, message: str, undelivered: Sequence[DeadLetter]) -> None:
        super().__init__(message)
        self.undelivered = list(undelivered)


class FatalDeadLetterError(DeadLetterError, RuntimeError):
    """The writer cannot continue (authorization, fenced producer, unwritable file system)."""


class DeadLetterWriter(Protocol):
    """Writes copies of failed events durably."""

    description: str

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Write ``letters``; return only once each is durable.

        Raises
        ------
        DeadLetterDeliveryError
            Transient; ``undelivered`` lists what to write again.
        FatalDeadLetterError
        """

    def close(self, timeout_s: float) -> None:
        """Flush and release."""


class KafkaDeadLetterWriter:
    """Produce dead letters and parked events to their topics and wait for every confirmation.

    Parameters
    ----------
    connection
        The facility's Kafka.
    topic, retry_topic
        Dead-letter and retry topics.
    delivery_timeout_s
        Longest wait for confirmations; also librdkafka's ``message.timeout.ms``, so
        every record is resolved (delivered or failed) before the wait ends.
    max_message_bytes
        Largest record produced; a larger original value is cut to this size and the
        record says so in ``ingestd.truncated_from_bytes`` (the dead letter must exist
        even when the original cannot be copied whole).
    """

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        topic: str,
        retry_topic: str,
        delivery_timeout_s: float = 30.0,
        max_message_bytes: int = 16 * 1_048_576,
        producer: Producer | None = None,
    ) -> None:
        self.topic = topic
        self.retry_topic = retry_topic
        self.description = f"kafka topics {topic} / {retry_topic}"
        self._timeout_s = delivery_timeout_s
        self._max_bytes = max_message_bytes
        self._producer = producer or make_producer(
            connection,
            overrides={
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "message.max.bytes": max_message_bytes + 65_536,
                "linger.ms": 2,
                "logger": client_logger("ingestd.kafka.producer"),
            },
        )
        self._lock = threading.Lock()

    def _topic_of(self, letter: DeadLetter) -> str:
        return self.topic if letter.destination is Destination.dead_letter else self.retry_topic

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Produce ``letters`` and wait until the broker confirmed each (see class notes)."""
        if not letters:
            return
        results: dict[int, KafkaError | None] = {}
        with self._lock:
            for index, letter in enumerate(letters):
                self._produce(index, self._fit(letter), results)
            remaining = self._producer.flush(self._timeout_s + 5.0)
        failed = [letters[i] for i in range(len(letters)) if i not in results or results[i] is not None]
        if not failed:
            return
        errors = [error for error in results.values() if error is not None]
        for error in errors:
            if classify_kafka_error(error) is KafkaErrorKind.fatal:
                raise FatalDeadLetterError(f"dead-letter producer failed fatally: {error}")
        first = errors[0] if errors else f"{remaining} not confirmed within {self._timeout_s:.0f} s"
        raise DeadLetterDeliveryError(
            f"{len(failed)} of {len(letters)} dead letters not confirmed by Kafka: {first}", failed
        )

    def _produce(self, index: int, letter: DeadLetter, results: dict[int, KafkaError | None]) -> None:
        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            results[index] = error

        while True:
            try:
                self._producer.produce(
                    self._topic_of(letter),
                    value=letter.value,
                    key=letter.key,
                    headers=list[tuple[str, str | bytes | None]](letter.all_headers()),
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                # Local queue full: let deliveries drain, then try again.
                self._producer.poll(0.1)
            except KafkaException as error:
                kafka_error = error.args[0] if error.args else None
                if classify_kafka_error(error) is KafkaErrorKind.fatal:
                    raise FatalDeadLetterError(f"dead-letter producer failed fatally: {error}") from error
                if (
                    isinstance(kafka_error, KafkaError)
                    and kafka_error.code() == KafkaError.MSG_SIZE_TOO_LARGE
                ):
                    letter = self._truncated(letter, limit=len(letter.value) // 2)
                    continue
                results[index] = (
                    kafka_error
                    if isinstance(kafka_error, KafkaError)
                    else KafkaError(KafkaError._FAIL, str(error))
                )
                return

    def _fit(self, letter: DeadLetter) -> DeadLetter:
        size = len(letter.value) + len(letter.key or b"")
        if size <= self._max_bytes:
            return letter
        return self._truncated(letter, limit=self._max_bytes - len(letter.key or b""))

    @staticmethod
    def _truncated(letter: DeadLetter, *, limit: int) -> DeadLetter:
        original = letter.info.truncated_from_bytes or len(letter.value)
        info = _replace_info(letter.info, truncated_from_bytes=original)
        logger.warning("dead_letter_truncated", original_bytes=original, kept_bytes=max(limit, 0))
        return DeadLetter(
            destination=letter.destination,
            value=letter.value[: max(limit, 0)],
            info=info,
            key=letter.key,
            headers=letter.headers,
        )

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued, within ``timeout_s``."""
        with self._lock:
            self._producer.flush(timeout_s)


def _replace_info(info: DeadLetterInfo, **changes: Any) -> DeadLetterInfo:
    import dataclasses

    return dataclasses.replace(info, **changes)


class FileDeadLetterWriter:
    """Append dead letters and parked events to a JSON-lines file, synced before returning.

    For replays on a machine without Kafka (the README's first command). Each line
    is ``{"destination", "headers", "key", "value", "encoding"}``; values that are
    not UTF-8 are base64-encoded (``encoding: base64``), so the original bytes are
    kept exactly.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Append ``letters`` and fsync the file."""
        if not letters:
            return
        lines = []
        for letter in letters:
            value, encoding = _text_or_base64(letter.value)
            key, key_encoding = _text_or_base64(letter.key) if letter.key is not None else (None, None)
            entry = {
                "destination": letter.destination.value,
                "headers": {name: raw.decode(errors="replace") for name, raw in letter.all_headers()},
                "key": key,
                "key_encoding": key_encoding,
                "value": value,
                "encoding": encoding,
            }
            lines.append(json.dumps(entry, ensure_ascii=False))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write("\n".join(lines) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            raise FatalDeadLetterError(f"cannot write dead letters to {self.path}: {error}") from error

    def close(self, timeout_s: float) -> None:
        """Nothing buffered."""


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def read_dead_letter_file(path: Path) -> list[tuple[DeadLetterInfo, bytes, Destination]]:
    """Read a file written by :class:`FileDeadLetterWriter` (for ``ingestd dlq list --file``)."""
    entries = []
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if not line.strip():
                continue
            entry = json.loads(line)
            raw = entry["value"]
            value = base64.b64decode(raw) if entry.get("encoding") == "base64" else raw.encode()
            headers = [(name, text.encode()) for name, text in entry["headers"].items()]
            info = DeadLetterInfo.from_headers(headers)
            if info is not None:
                entries.append((info, value, Destination(entry.get("destination", "dead_letter"))))
    return entries
