"""Topic discovery: which source topics match the selection, and their target topics made ready.

Run at start-up and every ``discovery_interval_s`` so that a topic created on
the central cluster after the mirror started (a new scope, a new RSE) is
mirrored without a restart. Target topics are created with the source's
partition count (a record keeps its partition, so per-key order survives the
copy) and the configured retention; a target with fewer partitions than its
source is grown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions

from ingestd.kafka import ensure_topics
from ingestd.log import get_logger

from ._policy import TopicNaming
from ._selection import TopicSelector

__all__ = ["MirroredTopic", "TopicCatalog"]

logger = get_logger(__name__)


@dataclass(frozen=True)
class MirroredTopic:
    """One mirrored topic: its source name, its target name and its source partition count."""

    source: str
    target: str
    partitions: int


class TopicCatalog:
    """Finds the source topics to mirror and prepares their target topics.

    Parameters
    ----------
    source_admin, target_admin
        Admin clients of the two clusters.
    selector
        Which source topics to mirror.
    naming
        Source → target topic names.
    replication_factor
        Of created target topics; -1 for the broker default.
    topic_config
        Topic configs of created target topics (retention and extras).
    timeout_s
        Bound on each admin request.
    """

    def __init__(
        self,
        source_admin: AdminClient,
        target_admin: AdminClient,
        selector: TopicSelector,
        naming: TopicNaming,
        *,
        replication_factor: int = -1,
        topic_config: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._source_admin = source_admin
        self._target_admin = target_admin
        self._selector = selector
        self._naming = naming
        self._replication_factor = replication_factor
        self._topic_config = dict(topic_config or {})
        self._timeout_s = timeout_s

    def refresh(self) -> dict[str, MirroredTopic]:
        """List the source, create or grow target topics; return the mirrored topics by source name.

        Raises
        ------
        confluent_kafka.KafkaException
            A cluster could not be listed or a topic not created; the caller
            retries at the next discovery.
        """
        source_metadata = self._source_admin.list_topics(timeout=self._timeout_s)
        selected: dict[str, MirroredTopic] = {}
        for name in self._selector.select(source_metadata.topics):
            topic = source_metadata.topics[name]
            if topic.error is not None or not topic.partitions:
                # Just created and without leaders yet; the next pass picks it up.
                logger.info("mirror.topic_not_ready", topic=name, error=str(topic.error))
                continue
            selected[name] = MirroredTopic(name, self._naming.target_topic(name), len(topic.partitions))
        self._prepare_targets(selected.values())
        return selected

    def _prepare_targets(self, wanted: Iterable[MirroredTopic]) -> None:
        wanted = list(wanted)
        if not wanted:
            return
        target_metadata = self._target_admin.list_topics(timeout=self._timeout_s)
        to_create: dict[int, list[str]] = defaultdict(list)
        to_grow: list[NewPartitions] = []
        for topic in wanted:
            existing = target_metadata.topics.get(topic.target)
            if existing is None or existing.error is not None:
                to_create[topic.partitions].append(topic.target)
            elif len(existing.partitions) < topic.partitions:
                to_grow.append(NewPartitions(topic.target, topic.partitions))
        for partitions, names in sorted(to_create.items()):
            created = ensure_topics(
                self._target_admin,
                names,
                partitions=partitions,
                replication_factor=self._replication_factor,
                config=self._topic_config,
                timeout_s=self._timeout_s,
            )
            for name in created:
                logger.info("mirror.target_topic_created", topic=name, partitions=partitions)
        if to_grow:
            futures = self._target_admin.create_partitions(to_grow, operation_timeout=self._timeout_s)
            for name, future in futures.items():
                try:
                    future.result(timeout=self._timeout_s)
                except KafkaException as error:
                    raise KafkaException(
                        f"could not add partitions to target topic {name!r}: {error}"
                    ) from error
                logger.info("mirror.target_topic_grown", topic=name)
