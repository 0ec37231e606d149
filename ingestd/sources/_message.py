"""Turn a confluent-kafka ``Message`` into plain, fully typed values (one place for its Optionals)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from ingestd.deadletter import DeadLetterInfo
from ingestd.work import Position

from ._base import Headers, RawRecord

__all__ = ["Consumed", "normalise_headers", "to_raw_record", "unpack"]


@dataclass(frozen=True, slots=True)
class Consumed:
    """The parts of a consumed (non-error) message the sources use."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int | None


def normalise_headers(raw: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> Headers:
    """Headers as ``(name, bytes)`` pairs, whatever form the client gives them in."""
    if raw is None:
        return ()
    if raw.__class__ is list and all(value.__class__ is bytes for _name, value in raw):
        return tuple(raw)  # what confluent-kafka gives: its pairs are used as they are
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    result = []
    for name, value in pairs:
        if value is None:
            data = b""
        elif isinstance(value, str):
            data = value.encode()
        else:
            data = bytes(value)
        result.append((name, data))
    return tuple(result)


def unpack(message: Message) -> Consumed:
    """The typed parts of a message returned by ``consume`` without an error."""
    topic = message.topic()
    partition = message.partition()
    offset = message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("consumed message without topic, partition or offset")
    _kind, timestamp = message.timestamp()
    return Consumed(
        topic=topic,
        partition=partition,
        offset=offset,
        key=message.key(),
        value=message.value() or b"",
        headers=normalise_headers(message.headers()),
        timestamp_ms=timestamp if timestamp > 0 else None,
    )


def to_raw_record(
    consumed: Consumed,
    *,
    kind: str,
    origin_from_headers: bool,
    generation: int = 0,
) -> RawRecord:
    """Build the engine's record; ``origin`` comes from dead-letter headers when asked and present.

    A record re-driven from the retry or dead-letter topic keeps its *first*
    position as origin, so provenance and reports name where the event came from;
    ``kind`` (``dlq``) replaces the source kind when it says more.
    """
    position = Position(
        source=kind, topic=consumed.topic, partition=consumed.partition, offset=consumed.offset
    )
    origin = position
    if origin_from_headers and consumed.headers:
        info = DeadLetterInfo.from_headers(consumed.headers)
        if info is not None:
            first = info.origin
            origin = Position(
                source=kind if kind == "dlq" else first.source,
                topic=first.topic,
                partition=first.partition,
                offset=first.offset,
                line=first.line,
            )
    return RawRecord(
        value=consumed.value,
        position=position,
        origin=origin,
        key=consumed.key,
        headers=consumed.headers,
        timestamp_ms=consumed.timestamp_ms,
        generation=generation,
    )
