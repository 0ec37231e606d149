"""mirror: exactly-once replication of a facility's topics from the central Kafka to the local Kafka.

``ingestd mirror`` runs :class:`MirrorService`; :mod:`mirror.mm2` renders the
equivalent MirrorMaker 2 configuration for sites that prefer it. The mirror
knows nothing of the registry: it copies records, keeps their key, value,
headers, timestamp and partition, adds provenance headers, and stores its
positions on the target inside the same transactions as the records.
"""

from ._errors import MirrorConfigError, MirrorError, MirrorFatalError, MirrorFencedError, Mm2RenderError
from ._headers import (
    SOURCE_CLUSTER_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    Provenance,
)
from ._policy import ReplicationPolicy, TopicNaming
from ._replicator import Replicator
from ._selection import MM2_DEFAULT_EXCLUDES, TopicSelector
from ._service import EXIT_FATAL, EXIT_OK, MirrorService
from ._settings import MirrorSettings, TopicSelection, load_mirror_settings
from ._topics import MirroredTopic, TopicCatalog

__all__ = [
    "EXIT_FATAL",
    "EXIT_OK",
    "MM2_DEFAULT_EXCLUDES",
    "SOURCE_CLUSTER_HEADER",
    "SOURCE_OFFSET_HEADER",
    "SOURCE_PARTITION_HEADER",
    "SOURCE_TOPIC_HEADER",
    "MirrorConfigError",
    "MirrorError",
    "MirrorFatalError",
    "MirrorFencedError",
    "MirrorService",
    "MirrorSettings",
    "MirroredTopic",
    "Mm2RenderError",
    "Provenance",
    "ReplicationPolicy",
    "Replicator",
    "TopicCatalog",
    "TopicNaming",
    "TopicSelection",
    "TopicSelector",
    "load_mirror_settings",
]
