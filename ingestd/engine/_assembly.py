"""Build the engine's parts from settings: the one place that turns configuration into objects.

``ingestd run``, ``replay`` and ``dlq redrive`` differ only in their source and in
which observers they attach; everything else (registry, decoder rules, verifier,
parking, dead-letter writer, metrics and the OpenSearch sink) comes from here, so
the three commands cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry

from butler_registry.interface import (
    Registry,
    RegistryConfigurationError,
    RegistryError,
    SchemaVersionError,
    TransientRegistryError,
)
from ingestd.config import ConfigurationError, IngestdSettings
from ingestd.deadletter import DeadLetterWriter, FileDeadLetterWriter, KafkaDeadLetterWriter
from ingestd.kafka import KafkaErrorKind, classify_kafka_error, ensure_topics, make_admin
from ingestd.log import get_logger
from ingestd.mapping import MappingConfigurationError
from ingestd.planning import PlanRules, plan
from ingestd.sources import TopicSelection
from ingestd.work import Planned, Position
from monitoring.http_server import HealthState
from monitoring.metrics import IngestMetrics, Stage
from monitoring.opensearch import EventSink, NullSink, make_sink

from ._control import Retrier, StopToken
from ._engine import Admission, Engine, Planner
from ._errors import FatalEngineError
from ._observers import Observer
from ._parking import ParkingPolicy
from ._pending import PendingQueue
from ._verify import FileVerifier, Verifier

__all__ = [
    "Pipeline",
    "build_pipeline",
    "dead_letter_topic_config",
    "ensure_dead_letter_topics",
    "make_dead_letter_writer",
    "make_parking",
    "make_pending",
    "make_planner",
    "make_rules",
    "make_verifier",
    "open_registry",
    "subscription",
    "wait_for_topics",
]

logger = get_logger(__name__)

_DLQ_MAX_MESSAGE_BYTES = 16 * 1_048_576
"""Largest dead letter kept whole: far above any valid event, so even an oversized one is copied intact."""


def open_registry(settings: IngestdSettings, *, create: bool | None = None) -> Registry:
    """Open the configured registry: the SQL registry at ``registry.url``, or the real Butler.

    ``create`` overrides ``registry.create_schema`` (``ingestd check`` never creates).

    Raises
    ------
    ConfigurationError
        The registry cannot be opened as configured (the message says why).
    TransientRegistryError
        The database is unreachable right now.
    """
    if settings.uses_daf_butler:
        assert settings.daf_butler is not None
        try:
            from butler_registry.daf import DafButlerRegistry
        except ImportError as error:
            raise ConfigurationError(
                f"butler_repo/daf_butler.repo {settings.daf_butler.repo!r} names a real Butler repository, "
                f"which needs the optional extra: pip install 'df-ingestd[butler]' ({error}); "
                "or set registry.url (INGESTD_REGISTRY_URL) with INGESTD_REGISTRY_BACKEND=sql"
            ) from error
        registry: Registry = DafButlerRegistry(settings.daf_butler)
        return registry
    from butler_registry import open_registry as open_sql_registry

    try:
        should_create = settings.registry.should_create if create is None else create
        return open_sql_registry(settings.registry.resolved_url(), create=should_create)
    except TransientRegistryError:
        raise
    except RegistryError as error:
        raise ConfigurationError(f"registry {settings.registry.display_url()}: {error}") from error


def make_rules(settings: IngestdSettings) -> PlanRules:
    """This site's decoding rules: event types, kinds, facility, URL prefixes, size limit.

    Raises
    ------
    ConfigurationError
        A prefix pair cannot be used (the message names it).
    """
    try:
        return PlanRules.from_settings(settings)
    except (MappingConfigurationError, KeyError, ValueError) as error:
        raise ConfigurationError(f"URL prefixes: {error}") from error


def make_planner(rules: PlanRules) -> Planner:
    """The decoder with ``rules``."""

    def planner(raw: bytes, position: Position) -> Planned:
        return plan(raw, position, rules)

    return planner


def subscription(settings: IngestdSettings, *, with_retry_topic: bool = True) -> TopicSelection:
    """The daemon's topic selection: configured topics and pattern, mirrored names, the retry topic."""
    consumer = settings.consumer
    if not consumer.topics and not consumer.topic_pattern:
        raise ConfigurationError(
            "no topics to consume: set consumer.topics (or ctrl_ingestd's topics table) and/or "
            "consumer.topic_pattern"
        )
    extra = (settings.dead_letters.retry_topic_name,) if with_retry_topic else ()
    return TopicSelection(
        topics=tuple(consumer.topics),
        pattern=consumer.topic_pattern,
        aliases=tuple(consumer.source_aliases),
        extra_topics=extra,
    )


def dead_letter_topic_config(settings: IngestdSettings) -> dict[str, str]:
    """Topic configuration of the dead-letter and retry topics."""
    return {
        "retention.ms": str(settings.dead_letters.retention_ms),
        "max.message.bytes": str(_DLQ_MAX_MESSAGE_BYTES + 65_536),
        "cleanup.policy": "delete",
    }


def ensure_dead_letter_topics(settings: IngestdSettings, *, timeout_s: float = 15.0) -> list[str]:
    """Create the dead-letter and retry topics when missing (``dead_letters.create_topics``)."""
    kafka = settings.require_kafka("run")
    names = [settings.dead_letters.topic, settings.dead_letters.retry_topic_name]
    admin = make_admin(kafka)
    return ensure_topics(
        admin,
        names,
        partitions=settings.dead_letters.partitions,
        replication_factor=settings.dead_letters.replication_factor,
        config=dead_letter_topic_config(settings),
        timeout_s=timeout_s,
    )


def make_dead_letter_writer(settings: IngestdSettings) -> DeadLetterWriter:
    """Kafka dead-letter and retry topics when a cluster is configured, a JSON-lines file otherwise."""
    if settings.kafka is None:
        return FileDeadLetterWriter(settings.dead_letters.file)
    return KafkaDeadLetterWriter(
        settings.kafka,
        topic=settings.dead_letters.topic,
        retry_topic=settings.dead_letters.retry_topic_name,
        delivery_timeout_s=settings.dead_letters.delivery_timeout_s,
        max_message_bytes=_DLQ_MAX_MESSAGE_BYTES,
    )


def make_verifier(settings: IngestdSettings, rules: PlanRules) -> Verifier | None:
    """The file verifier, or None when verification is off."""
    verification = settings.verification
    if not verification.enabled:
        return None
    return FileVerifier(
        checksum=verification.checksum, workers=verification.workers, root_for=rules.mapper.root_for
    )


def make_parking(settings: IngestdSettings) -> ParkingPolicy:
    """The retry schedule of parked events."""
    dead_letters = settings.dead_letters
    return ParkingPolicy(
        delay_s=dead_letters.park_delay_s,
        delay_max_s=dead_letters.park_delay_max_s,
        max_age_s=dead_letters.park_max_age_s,
        not_visible_timeout_s=settings.verification.not_visible_timeout_s,
    )


def make_pending(settings: IngestdSettings, registry: Registry) -> PendingQueue | None:
    """Where events waiting for dimension records are parked: the registry database, when it can.

    The real Butler's database has no table of ours: with it (or with
    ``dead_letters.park_store: retry_topic``) they wait in the retry topic instead.
    """
    from butler_registry import SqlRegistry
    from butler_registry._pending import PendingStore

    dead_letters = settings.dead_letters
    if dead_letters.park_store != "registry" or not isinstance(registry, SqlRegistry):
        return None
    return PendingQueue(
        PendingStore(registry.engine),
        registry.universe,
        poll_interval_s=dead_letters.park_poll_interval_s,
        lease_s=dead_letters.park_lease_s,
    )


@dataclass
class Pipeline:
    """The engine and everything it owns, closed together."""

    engine: Engine
    registry: Registry
    dead_letters: DeadLetterWriter
    metrics: IngestMetrics
    prometheus: CollectorRegistry
    sink: EventSink | NullSink
    health: HealthState
    stop: StopToken
    verifier: Verifier | None = None
    observers: list[Observer] = field(default_factory=list)
    pending: PendingQueue | None = None
    """Events parked in the registry database (None: they wait in the retry topic)."""

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush dead letters and event documents, release the registry; never raises."""
        closers: list[tuple[str, Callable[[], object]]] = [
            ("dead_letters", lambda: self.dead_letters.close(timeout_s)),
            ("sink", lambda: self.sink.close(timeout_s)),
            ("verifier", lambda: self.verifier.close() if self.verifier is not None else None),
            ("registry", self.registry.close),
        ]
        for action, target in closers:
            try:
                target()
            except Exception:
                logger.exception("close_failed", part=action)


def build_pipeline(
    settings: IngestdSettings,
    *,
    stop: StopToken,
    health: HealthState | None = None,
    prometheus: CollectorRegistry | None = None,
    registry: Registry | None = None,
    opensearch: bool = True,
    extra_observers: Sequence[Observer] = (),
    admit: Admission | None = None,
) -> Pipeline:
    """Assemble the engine from settings.

    Parameters
    ----------
    settings
        Validated settings.
    stop
        Stop request shared with the runner and signal handlers.
    health, prometheus
        Health state and metrics registry of the HTTP port (fresh ones when omitted).
    registry
        An open registry (otherwise opened from the settings, waiting for the
        database with back-off, so a daemon started before its database comes up).
    opensearch
        Attach the OpenSearch sink when configured.
    extra_observers
        Further observers (progress display, replay summary).
    admit
        Records to pass over before decoding (dead-letter re-drive filters).

    Raises
    ------
    ConfigurationError
        Settings that cannot work (unknown registry, missing extra).
    FatalEngineError
        The registry schema is unusable.
    """
    health = health or HealthState(liveness_timeout_s=settings.lifecycle.liveness_timeout_s)
    prometheus = prometheus or CollectorRegistry()
    metrics = IngestMetrics(prometheus, facilities=[facility.name for facility in settings.site.facilities])
    retrier = Retrier(
        stop,
        initial_backoff_s=settings.retry.initial_backoff_s,
        max_backoff_s=settings.retry.max_backoff_s,
        jitter=settings.retry.jitter,
        health=health,
        metrics=metrics,
    )
    rules = make_rules(settings)
    if registry is None:
        registry = _open_registry_waiting(settings, retrier)
    planner = make_planner(rules)
    writer = make_dead_letter_writer(settings)
    verifier = make_verifier(settings, rules)
    pending = make_pending(settings, registry)
    engine = Engine(
        registry=registry,
        planner=planner,
        dead_letters=writer,
        retrier=retrier,
        parking=make_parking(settings),
        verifier=verifier,
        metrics=metrics,
        admit=admit,
        pending=pending,
    )
    sink: EventSink | NullSink = make_sink(settings.opensearch, metrics) if opensearch else NullSink()
    sink.start()
    observers: list[Observer] = [metrics.observe_reports, sink.submit, *extra_observers]
    return Pipeline(
        engine=engine,
        registry=registry,
        dead_letters=writer,
        metrics=metrics,
        prometheus=prometheus,
        sink=sink,
        health=health,
        stop=stop,
        verifier=verifier,
        observers=observers,
        pending=pending,
    )


class _Idle:
    """A stand-in source for waits before any source exists (start-up retries)."""

    def __init__(self, stop: StopToken) -> None:
        self._stop = stop

    def pause(self) -> None:
        """Nothing to pause."""

    def resume(self) -> None:
        """Nothing to resume."""

    def keepalive(self, timeout_s: float) -> None:
        """Sleep, waking on a stop request."""
        self._stop.wait(timeout_s)


def _open_registry_waiting(settings: IngestdSettings, retrier: Retrier) -> Registry:
    """Open and ping the registry, waiting with back-off while the database is away."""

    def attempt() -> Registry:
        registry = open_registry(settings)
        try:
            registry.ping()
        except BaseException:
            registry.close()
            raise
        return registry

    try:
        registry = retrier.call(
            Stage.register,
            attempt,
            transient=(TransientRegistryError,),
            source=_Idle(retrier.stop),
            health_key="registry",
        )
    except (SchemaVersionError, RegistryConfigurationError) as error:
        raise FatalEngineError(f"registry {settings.registry.display_url()}: {error}") from error
    if retrier.health is not None:
        retrier.health.set_ready("registry")
    return registry


def wait_for_topics(settings: IngestdSettings, retrier: Retrier) -> list[str]:
    """Create the dead-letter topics, retrying while the broker is away."""

    def attempt() -> list[str]:
        try:
            return ensure_dead_letter_topics(settings)
        except KafkaException as error:
            if classify_kafka_error(error) is KafkaErrorKind.fatal:
                raise FatalEngineError(f"cannot create the dead-letter topics: {error}") from error
            raise ConnectionError(str(error)) from error

    created = retrier.call(
        Stage.dead_letter,
        attempt,
        transient=(ConnectionError,),
        source=_Idle(retrier.stop),
        health_key="dead_letters",
    )
    if created:
        logger.info("dead_letter_topics_created", topics=created)
    return created
