"""Pre-flight checks (``ingestd check``): can the daemon work with these settings, and if not, what to fix.

Each check reaches one dependency with a short timeout and returns a
:class:`Check` with a status and, when something is wrong, what the operator
should change. Checks never create or modify anything (the dead-letter topics are
validated with a dry-run creation; the registry is opened without creating its
schema).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from butler_registry.interface import (
    RegistryConfigurationError,
    RegistryError,
    SchemaVersionError,
    TransientRegistryError,
)
from ingestd.config import ConfigurationError, IngestdSettings
from ingestd.kafka import NewTopic, make_admin, make_consumer

from ._assembly import dead_letter_topic_config, open_registry, subscription

__all__ = ["Check", "CheckStatus", "run_checks"]


class CheckStatus(StrEnum):
    """How one check went."""

    ok = "ok"
    """Works."""
    warn = "warn"
    """Works now, or will at start, but deserves a look."""
    fail = "fail"
    """Will not work: the daemon would not start or not ingest."""
    skip = "skip"
    """Not configured, not needed."""


@dataclass
class Check:
    """The result of one check."""

    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def run_checks(settings: IngestdSettings, *, timeout_s: float = 10.0) -> list[Check]:
    """Run every check, in order; a failing one does not stop the others."""
    checks: list[Check] = []
    for check in _checks(settings, timeout_s):
        checks.append(check)
    return checks


def _timed(name: str, function: Callable[[], Check]) -> Check:
    started = time.monotonic()
    try:
        result = function()
    except Exception as error:  # a check must report, never crash the command
        result = Check(name, CheckStatus.fail, f"{type(error).__name__}: {error}")
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _checks(settings: IngestdSettings, timeout_s: float) -> Iterator[Check]:
    kafka_ok = False
    if settings.kafka is None:
        yield Check(
            "kafka",
            CheckStatus.warn,
            "no Kafka cluster configured: only `ingestd replay --from-file` can work",
            fix="set kafka.bootstrap_servers (ctrl_ingestd: brokers) or INGESTD_KAFKA__BOOTSTRAP_SERVERS",
        )
    else:
        kafka_check = _timed("kafka", lambda: _kafka(settings, timeout_s))
        kafka_ok = kafka_check.status is CheckStatus.ok
        yield kafka_check
    if kafka_ok:
        yield _timed("topics", lambda: _topics(settings, timeout_s))
        yield _timed("dead_letter_topics", lambda: _dead_letter_topics(settings, timeout_s))
    yield _timed("registry", lambda: _registry(settings))
    yield _timed("prefixes", lambda: _prefixes(settings))
    if settings.opensearch.enabled:
        yield _timed("opensearch", lambda: _opensearch(settings))
    else:
        yield Check("opensearch", CheckStatus.skip, "not configured (no event documents; metrics still work)")


def _kafka(settings: IngestdSettings, timeout_s: float) -> Check:
    assert settings.kafka is not None
    servers = ",".join(settings.kafka.bootstrap_servers)
    admin = make_admin(
        settings.kafka, overrides={"socket.connection.setup.timeout.ms": int(timeout_s * 1000)}
    )
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        return Check(
            "kafka",
            CheckStatus.fail,
            f"cannot reach Kafka at {servers}: {error.args[0] if error.args else error}",
            fix="check kafka.bootstrap_servers (host:port), the network path and kafka.security",
        )
    brokers = sorted(f"{broker.host}:{broker.port}" for broker in metadata.brokers.values())
    return Check(
        "kafka",
        CheckStatus.ok,
        f"reached {servers}: {len(brokers)} brokers, {len(metadata.topics)} topics",
        data={"brokers": brokers, "cluster_id": metadata.cluster_id},
    )


def _topics(settings: IngestdSettings, timeout_s: float) -> Check:
    assert settings.kafka is not None
    try:
        selection = subscription(settings, with_retry_topic=False)
    except ConfigurationError as error:
        return Check("topics", CheckStatus.fail, str(error), fix="configure the topics to consume")
    consumer = make_consumer(settings.kafka, settings.consumer.group_id)
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        topics = selection.select(metadata.topics)
        if not topics:
            return Check(
                "topics",
                CheckStatus.warn,
                f"no topic matches the subscription {selection.regex} yet "
                f"({len(metadata.topics)} topics on the cluster)",
                fix="check consumer.topics / consumer.topic_pattern, or that the mirror created the topics",
            )
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(metadata.topics[topic].partitions)
        ]
        committed = consumer.committed(partitions, timeout=timeout_s)
        rows = []
        total_lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout_s
            )
            start = tp.offset if tp.offset >= 0 else low
            lag = max(high - start, 0)
            total_lag += lag
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": tp.offset if tp.offset >= 0 else None,
                    "end": high,
                    "lag": lag,
                }
            )
    finally:
        consumer.close()
    per_topic = {topic: sum(1 for row in rows if row["topic"] == topic) for topic in topics}
    shown = ", ".join(f"{topic} ({count} partitions)" for topic, count in per_topic.items())
    return Check(
        "topics",
        CheckStatus.ok,
        f"{len(topics)} topics match: {shown}; group {settings.consumer.group_id} lag {total_lag} records",
        data={"partitions": rows, "group_id": settings.consumer.group_id, "lag": total_lag},
    )


def _dead_letter_topics(settings: IngestdSettings, timeout_s: float) -> Check:
    assert settings.kafka is not None
    admin = make_admin(settings.kafka)
    wanted = [settings.dead_letters.topic, settings.dead_letters.retry_topic_name]
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return Check("dead_letter_topics", CheckStatus.ok, f"{' and '.join(wanted)} exist")
    if not settings.dead_letters.create_topics:
        return Check(
            "dead_letter_topics",
            CheckStatus.fail,
            f"{', '.join(missing)} missing and dead_letters.create_topics is off",
            fix="create the topics, or set dead_letters.create_topics: true",
        )
    requests = [
        NewTopic(
            name,
            num_partitions=settings.dead_letters.partitions,
            replication_factor=settings.dead_letters.replication_factor,
            config=dead_letter_topic_config(settings),
        )
        for name in missing
    ]
    problems = []
    for name, future in admin.create_topics(
        requests, validate_only=True, operation_timeout=timeout_s
    ).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as error:
            problems.append(f"{name}: {error.args[0] if error.args else error}")
    if problems:
        return Check(
            "dead_letter_topics",
            CheckStatus.fail,
            "cannot create " + "; ".join(problems),
            fix="create the topics with an admin account, or fix dead_letters.partitions/replication_factor",
        )
    return Check(
        "dead_letter_topics",
        CheckStatus.ok,
        f"{', '.join(missing)} will be created at start (dry run accepted)",
    )


def _registry(settings: IngestdSettings) -> Check:
    where = "daf_butler repository" if settings.uses_daf_butler else settings.registry.display_url()
    if not settings.uses_daf_butler and settings.registry.is_sqlite and settings.registry.should_create:
        path = _sqlite_path(settings.registry.url)
        if path is not None and (not path.exists() or path.stat().st_size == 0):
            return Check(
                "registry", CheckStatus.warn, f"{where} does not exist yet; it is created at first start"
            )
    try:
        registry = open_registry(settings, create=False)
    except ConfigurationError as error:
        return Check("registry", CheckStatus.fail, str(error), fix="fix registry.url / daf_butler.repo")
    except TransientRegistryError as error:
        return Check(
            "registry",
            CheckStatus.fail,
            f"cannot reach the registry at {where}: {error}",
            fix="check registry.url (host, port, database, user) and that the database is up",
        )
    except RegistryError as error:
        return _registry_problem(settings, where, error)
    try:
        registry.ping()
        stats = registry.stats()
    except TransientRegistryError as error:
        return Check(
            "registry",
            CheckStatus.fail,
            f"cannot reach the registry at {where}: {error}",
            fix="check registry.url (host, port, database, user) and that the database is up",
        )
    except RegistryError as error:
        return _registry_problem(settings, where, error)
    finally:
        registry.close()
    return Check(
        "registry",
        CheckStatus.ok,
        f"{where}: schema {stats.schema_version}, {stats.datasets} datasets in {stats.runs} runs",
        data={"schema_version": stats.schema_version, "datasets": stats.datasets},
    )


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (None in memory)."""
    rest = url.split("://", 1)[1].split("?", 1)[0] if "://" in url else ""
    if not rest.startswith("/"):
        return None
    path = rest[1:]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _registry_problem(settings: IngestdSettings, where: str, error: RegistryError) -> Check:
    if isinstance(error, SchemaVersionError):
        return Check(
            "registry",
            CheckStatus.fail,
            f"{where}: {error}",
            fix="run `ingestd registry upgrade` (or `ingestd registry init` on an empty database)",
        )
    if isinstance(error, RegistryConfigurationError) and settings.registry.should_create:
        return Check("registry", CheckStatus.warn, f"{where}: {error}; it will be created at first start")
    return Check(
        "registry",
        CheckStatus.fail,
        f"{where}: {type(error).__name__}: {error}",
        fix="check registry.url and the database permissions; `ingestd registry init` creates the schema",
    )


def _prefixes(settings: IngestdSettings) -> Check:
    roots: dict[str, str] = {}
    for topic, prefix in settings.topic_prefixes.items():
        if prefix.fs_prefix:
            roots[f"topic {topic}"] = prefix.fs_prefix.removeprefix("file://")
    for facility in settings.site.facilities:
        for rse, rse_prefix in facility.prefixes.items():
            roots[f"RSE {rse}"] = rse_prefix.fs_prefix
    if not roots:
        return Check(
            "prefixes",
            CheckStatus.warn,
            "no URL prefixes configured: every event will be rejected with no_prefix",
            fix="configure topic_prefixes (ctrl_ingestd's topics table) or prefixes in the site map",
        )
    missing = sorted(f"{origin}: {root}" for origin, root in roots.items() if not Path(root).is_dir())
    if missing and settings.verification.enabled:
        return Check(
            "prefixes",
            CheckStatus.warn,
            "local prefix folders not found here: " + "; ".join(missing),
            fix="mount the storage, or fix fs_prefix (verification will park events until files appear)",
        )
    return Check("prefixes", CheckStatus.ok, f"{len(roots)} prefixes configured", data={"roots": roots})


def _opensearch(settings: IngestdSettings) -> Check:
    from monitoring.opensearch import make_client

    client = make_client(settings.opensearch)
    urls = ", ".join(str(url) for url in settings.opensearch.urls)
    try:
        info = client.info()
    except Exception as error:
        return Check(
            "opensearch",
            CheckStatus.fail,
            f"cannot reach OpenSearch at {urls}: {type(error).__name__}: {error}",
            fix="check opensearch.urls and credentials, or unset them to run without event documents",
        )
    version = (info.get("version") or {}).get("number", "?")
    return Check("opensearch", CheckStatus.ok, f"reached {urls}: OpenSearch {version}")
