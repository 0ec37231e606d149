"""Topic creation shared by the services that create topics on demand (publisher, mirror, dead letters)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

__all__ = ["NewTopic", "ensure_topics"]


def ensure_topics(
    admin: AdminClient,
    names: Iterable[str],
    *,
    partitions: int = 3,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Returns the names actually created. Raises :class:`KafkaException` for any
    error other than "already exists" (e.g. authorization), naming the topic.
    """
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [name for name in dict.fromkeys(names) if name not in existing]
    if not wanted:
        return []
    requests = [
        NewTopic(
            name, num_partitions=partitions, replication_factor=replication_factor, config=dict(config or {})
        )
        for name in wanted
    ]
    created = []
    for name, future in admin.create_topics(requests, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as error:
            if error.args and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaException(f"could not create topic {name!r}: {error}") from error
    return created
