"""Provenance headers: where each mirrored record came from.

Every record the mirror writes carries four headers naming its source cluster,
topic, partition and offset, after the record's own headers. A facility can so
trace any local record back to the central one (and audit the mirror:
offsets per partition must be strictly increasing, without repeats).
MirrorMaker 2 adds no such headers by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SOURCE_CLUSTER_HEADER",
    "SOURCE_OFFSET_HEADER",
    "SOURCE_PARTITION_HEADER",
    "SOURCE_TOPIC_HEADER",
    "Provenance",
    "partition_headers",
]

SOURCE_CLUSTER_HEADER = "ingestd.mirror.source_cluster"
SOURCE_TOPIC_HEADER = "ingestd.mirror.source_topic"
SOURCE_PARTITION_HEADER = "ingestd.mirror.source_partition"
SOURCE_OFFSET_HEADER = "ingestd.mirror.source_offset"

Header = tuple[str, bytes | None]


def partition_headers(cluster: str, topic: str, partition: int) -> list[tuple[str, bytes]]:
    """The three provenance headers shared by every record of one source partition."""
    return [
        (SOURCE_CLUSTER_HEADER, cluster.encode()),
        (SOURCE_TOPIC_HEADER, topic.encode()),
        (SOURCE_PARTITION_HEADER, str(partition).encode()),
    ]


@dataclass(frozen=True)
class Provenance:
    """The origin of a mirrored record, read back from its headers."""

    cluster: str
    topic: str
    partition: int
    offset: int

    @classmethod
    def from_headers(cls, headers: Sequence[Header] | None) -> Provenance | None:
        """Read the provenance of a record; None when it was not written by the mirror.

        When a record went through several mirrors, the last (outermost) set wins.
        """
        found: dict[str, bytes] = {}
        for key, value in headers or ():
            if key.startswith("ingestd.mirror.source_") and value is not None:
                found[key] = value
        try:
            return cls(
                cluster=found[SOURCE_CLUSTER_HEADER].decode(),
                topic=found[SOURCE_TOPIC_HEADER].decode(),
                partition=int(found[SOURCE_PARTITION_HEADER]),
                offset=int(found[SOURCE_OFFSET_HEADER]),
            )
        except (KeyError, ValueError):
            return None
