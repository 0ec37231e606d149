"""Wiring: settings → database, Kafka, site map, metrics and health → the loop of the chosen mode.

:func:`run_publisher` is what ``ingestd publish`` calls, and what tests and
benchmarks call in-process. It validates what it can before the first batch (the
Rucio tables exist with the expected columns; the mode's settings are present),
serves ``/healthz``, ``/readyz`` and ``/metrics``, stops after the current batch on
SIGTERM/SIGINT, and returns an exit code: 0 after a clean stop, 2 when the
configuration cannot work, 1 after an error an operator must look at.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from ingestd.gc_tuning import tune_gc
from ingestd.kafka import make_consumer
from ingestd.log import get_logger
from monitoring.http_server import HealthServer, HealthState
from monitoring.metrics import PublisherMetrics

from ._delivery import KafkaDelivery
from ._errors import ConfigurationError, PermanentError, TransientError
from ._loop import Backoff, BatchResult, run_loop
from ._metadata import DatabaseMetadata, Enricher, MetadataLookup, RestMetadata
from ._routing import UNROUTED_FACILITY, Router
from ._settings import MetadataSourceKind, PublisherSettings
from ._source import MessageTable
from ._table_publisher import TablePublisher
from ._tables import RucioTables, rucio_tables
from ._topic_router import TopicRouter

__all__ = ["PublisherMode", "build_engine", "run_publisher"]

logger = get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIGURATION = 2


class PublisherMode(StrEnum):
    """What the publisher reads."""

    table = "table"
    """Rucio's ``messages`` table (the default)."""
    route = "route"
    """One raw Hermes topic (``ingestd publish --route``)."""


def build_engine(settings: PublisherSettings) -> sa.Engine:
    """An engine on the Rucio database, small pool, connections checked before use."""
    if settings.database is None:
        raise ConfigurationError("the database section (INGESTD_PUBLISHER_DATABASE__URL) is required")
    url = settings.database.sqlalchemy_url()
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["application_name"] = f"ingestd-publisher {settings.instance_id}"[:63]
        connect_args["connect_timeout"] = 10
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=connect_args)


def _metadata_lookup(
    settings: PublisherSettings, tables: RucioTables | None, engine: sa.Engine | None
) -> MetadataLookup | None:
    source = settings.metadata.source
    if source is MetadataSourceKind.none:
        return None
    if source is MetadataSourceKind.rest:
        return RestMetadata(chunk_size=settings.metadata.rest_chunk_size)
    if tables is None or engine is None:
        raise ConfigurationError(
            "metadata.source=database needs the database section; in route mode without database access "
            "use metadata.source=rest (or none)"
        )
    return DatabaseMetadata(tables, engine)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM and SIGINT (main thread only; tests run the loop in threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: Any) -> None:
        logger.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _wait_for_schema(
    table: MessageTable, stop: threading.Event, health: HealthState, max_backoff_s: float
) -> None:
    """Check Rucio's tables, retrying while the database is unreachable (it may start after us)."""
    backoff = Backoff(maximum_s=max_backoff_s)
    while not stop.is_set():
        health.beat()
        try:
            table.check_schema()
            summary = table.summary()
        except TransientError as error:
            health.set_not_ready("source", str(error))
            delay = backoff.next_delay()
            logger.warning("database_unreachable", detail=str(error), retry_in_s=delay)
            stop.wait(delay)
            continue
        health.set_ready("source")
        logger.info(
            "messages_table_found",
            rows_by_type_and_service=[{"event_type": e, "services": s, "rows": n} for e, s, n in summary],
            publishing_event_types=table.event_types,
            claiming_services=table.services,
        )
        wanted = sum(n for e, s, n in summary if e in table.event_types)
        claimable = sum(
            n
            for e, s, n in summary
            if e in table.event_types and (table.services is None or s in table.services)
        )
        if wanted and not claimable:
            logger.warning(
                "no_rows_for_configured_services",
                rows_of_wanted_types=wanted,
                services=table.services,
                hint="rows exist under other services; set database.services to the Hermes service "
                "Rucio tags them with ([hermes] services_list)",
            )
        return


def run_publisher(
    settings: PublisherSettings,
    *,
    mode: PublisherMode = PublisherMode.table,
    stop: threading.Event | None = None,
    drain: bool = False,
    max_batches: int | None = None,
    registry: CollectorRegistry | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    on_ready: Callable[[HealthServer | None], None] | None = None,
) -> int:
    """Run the publisher until stopped; return the process exit code.

    Parameters
    ----------
    settings
        Validated settings.
    mode
        Table or route mode.
    stop
        Set it to stop after the current batch; SIGTERM/SIGINT set it when running in
        the main thread.
    drain
        Return once a batch finds nothing to publish.
    max_batches
        Return after this many batches that did work.
    registry
        Prometheus registry to register the metrics on (a new one by default).
    on_batch
        Called after every batch (tests, benchmarks).
    on_ready
        Called once the components are built, with the health server (None when disabled).
    """
    stop = stop or threading.Event()
    registry = registry or CollectorRegistry()
    site_map = settings.resolved_site_map
    metrics = PublisherMetrics(
        registry, facilities=[f.name for f in site_map.facilities] + [UNROUTED_FACILITY]
    )
    health = HealthState(liveness_timeout_s=max(120.0, 3 * settings.delivery_timeout_s))
    log = logger.bind(mode=mode.value, instance=settings.instance_id)

    with ExitStack() as resources, _stop_on_signals(stop):
        server: HealthServer | None = None
        if settings.http_port is not None:
            server = HealthServer(health, registry, settings.http_host, settings.http_port).start()
            resources.callback(server.stop)
            log.info("health_server_listening", host=settings.http_host, port=server.port)
        try:
            router = Router(site_map)
            engine: sa.Engine | None = None
            tables: RucioTables | None = None
            if settings.database is not None:
                engine = build_engine(settings)
                resources.callback(engine.dispose)
                tables = rucio_tables(settings.database.db_schema)
            enricher = Enricher(_metadata_lookup(settings, tables, engine), settings.metadata.keys)
            delivery = KafkaDelivery(
                settings.kafka,
                settings.topics,
                delivery_timeout_s=settings.delivery_timeout_s,
                instance_id=settings.instance_id,
                on_error=metrics.observe_error,
            )
            resources.callback(delivery.close)
            worker: TablePublisher | TopicRouter
            if mode is PublisherMode.table:
                if settings.database is None or engine is None or tables is None:
                    raise ConfigurationError(
                        "table mode needs the database section (INGESTD_PUBLISHER_DATABASE__URL)"
                    )
                table = MessageTable(engine, tables, settings.event_types, settings.database.services)
                _wait_for_schema(table, stop, health, settings.max_backoff_s)
                worker = TablePublisher(
                    table,
                    enricher,
                    router,
                    delivery,
                    metrics,
                    batch_size=settings.batch_size,
                    instance_id=settings.instance_id,
                )
            else:
                if settings.route is None:
                    raise ConfigurationError(
                        "route mode needs the route section (INGESTD_PUBLISHER_ROUTE__SOURCE_TOPIC)"
                    )
                consumer = make_consumer(
                    settings.kafka,
                    settings.route.group_id,
                    read_committed=True,
                    overrides={"client.id": f"{settings.kafka.client_id}-router-{settings.instance_id}"},
                )
                router_worker = TopicRouter(
                    consumer,
                    settings.route.source_topic,
                    enricher=enricher,
                    router=router,
                    delivery=delivery,
                    metrics=metrics,
                    event_types=settings.event_types,
                    batch_size=settings.batch_size,
                    poll_timeout_s=min(settings.poll_interval_s, 1.0),
                    instance_id=settings.instance_id,
                )
                resources.callback(router_worker.close)
                worker = router_worker
            if on_ready is not None:
                on_ready(server)
            tune_gc()
            log.info(
                "publisher_started",
                event_types=settings.event_types,
                facilities=[f.name for f in site_map.facilities],
                topic_template=site_map.topic_template,
                catch_all_topic=site_map.catch_all_topic,
                batch_size=settings.batch_size,
                metadata_source=settings.metadata.source.value,
            )
            run_loop(
                worker,
                stop=stop,
                health=health,
                metrics=metrics,
                poll_interval_s=settings.poll_interval_s,
                max_backoff_s=settings.max_backoff_s,
                backlog_interval_s=settings.backlog_interval_s,
                drain=drain,
                max_batches=max_batches,
                on_batch=on_batch,
            )
        except ConfigurationError as error:
            log.error("publisher_misconfigured", detail=str(error))
            return EXIT_CONFIGURATION
        except PermanentError as error:
            log.error("publisher_failed", error=type(error).__name__, detail=str(error))
            return EXIT_FAILED
        log.info("publisher_stopped")
    return EXIT_OK
