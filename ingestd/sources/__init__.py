"""Where raw records come from, and how each source acknowledges them.

* :class:`KafkaGroupSource` — the live daemon and the dead-letter re-drive: a
  consumer group, offsets committed synchronously after each batch.
* :class:`KafkaRangeSource` — backfills and listings: partitions assigned between
  two offsets or times, no group, nothing committed.
* :class:`JsonlFileSource` — a file of events, with an optional resume marker.
* :class:`RucioReplicaSource` — replicas at an RSE rebuilt from Rucio's catalogue
  (backfills), with a checkpoint in its state file.
"""

from ._base import FatalSourceError, Progress, RawRecord, Source, SourceError, TransientSourceError
from ._jsonl import JsonlFileSource
from ._kafka_group import KafkaGroupSource, PartitionLag
from ._kafka_range import KafkaRangeSource, RangeBound
from ._rucio import BackfillCounts, ListingUnit, RucioReplicaSource
from ._topics import TopicSelection, escape_topic

__all__ = [
    "BackfillCounts",
    "FatalSourceError",
    "JsonlFileSource",
    "KafkaGroupSource",
    "KafkaRangeSource",
    "ListingUnit",
    "PartitionLag",
    "Progress",
    "RangeBound",
    "RawRecord",
    "RucioReplicaSource",
    "Source",
    "SourceError",
    "TopicSelection",
    "TransientSourceError",
    "escape_topic",
]
