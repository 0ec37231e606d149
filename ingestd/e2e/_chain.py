"""One whole chain on real servers: Rucio ``messages`` → publisher → central Kafka → mirror → local Kafka →
daemon → PostgreSQL registry, with OpenSearch documents and Prometheus metrics on.

:class:`Chain` owns everything one run creates, named after a run id so runs on
shared servers never meet: a copy of the bootstrapped Rucio database, the
registry database, topics ``e2e.<run>.*`` on both clusters, consumer groups, the
OpenSearch indices ``e2e-<run>-*`` and their template, Prometheus target files.
Its services are child processes (:class:`~ingestd.e2e._processes.ServiceProcess`)
started from YAML files it writes, the way an operator would start them. It is a
context manager: leaving it stops the services and deletes what the run created
(``keep=True`` keeps it for inspection).

Rucio and the registry may live on another PostgreSQL server than the shared one
(the chaos tests use a private server they can restart), and the local Kafka on
another cluster (likewise).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from ingestd.kafka import KafkaConnection, ensure_topics, make_admin
from ingestd.log import get_logger

from ._campaign import FACILITY_UNDER_TEST, RSES, Campaign, site_map_for
from ._ledger import Ledger
from ._processes import ServiceError, ServiceProcess, free_port, ingestd_argv
from ._reconcile import (
    KafkaEvidence,
    ReconciliationReport,
    database_url,
    plain_url,
    reconcile,
    scratch_database,
)
from ._rucio import RucioFeeder

__all__ = ["SERVICES", "Chain", "ChainError", "RegistryProgress", "TestBed", "Tuning"]

logger = get_logger(__name__)

SERVICES = ("publisher", "mirror", "daemon")
"""The chain's own services, upstream first; ``daemon`` stands for every replica of the daemon."""


def daemon_names(replicas: int) -> tuple[str, ...]:
    """Service names of ``replicas`` daemons in one consumer group: ``daemon``, ``daemon-2``, ..."""
    if replicas < 1:
        raise ValueError(f"at least one daemon is needed, not {replicas}")
    return ("daemon", *(f"daemon-{index}" for index in range(2, replicas + 1)))


PROGRESS_COUNT_S = 20.0
"""Seconds between counts of the registry while the daemon's counter says events are still due."""

RUCIO_SERVICE = "activemq"
"""``[hermes] services_list`` of the run's Rucio: Rucio 41 refuses ``kafka``, so rows are tagged activemq."""


class ChainError(RuntimeError):
    """The chain could not be set up, or did not finish in time; the message says where."""


@dataclass(frozen=True)
class TestBed:
    """Where the servers are.

    Parameters
    ----------
    central, local
        The two Kafka clusters (USDF, the facility).
    postgres_url
        Superuser URL of the PostgreSQL server holding Rucio's and the registry's databases.
    opensearch_url
        OpenSearch for event documents (None: documents off).
    kafka_lib
        Kafka 3.9 + MirrorMaker 2 jars (the anchor path needs them).
    prometheus_targets_dir
        File-discovery folder of the test bed's Prometheus: services are registered there.
    """

    __test__ = False  # not a pytest class, despite the name

    central: KafkaConnection
    local: KafkaConnection
    postgres_url: str
    opensearch_url: str | None = None
    kafka_lib: Path | None = None
    prometheus_targets_dir: Path | None = None
    prometheus_url: str | None = None

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> TestBed:
        """The test bed ``python -m deploy.local env`` describes (``INGESTD_TEST_*`` variables).

        Raises
        ------
        ChainError
            Naming the variables that are missing.
        """
        env = dict(os.environ if environ is None else environ)
        needed = ("INGESTD_TEST_KAFKA_CENTRAL", "INGESTD_TEST_KAFKA_LOCAL", "INGESTD_TEST_POSTGRES_URL")
        missing = [name for name in needed if not env.get(name)]
        if missing:
            raise ChainError(
                f"the test bed is not described: {', '.join(missing)} unset; run "
                "`source <(python3 -m deploy.local env)` (after `python3 -m deploy.local up`)"
            )
        targets = env.get("INGESTD_TEST_PROMETHEUS_TARGETS_DIR")
        lib = env.get("INGESTD_TESTBED_KAFKA_LIB")
        return cls(
            central=KafkaConnection(
                bootstrap_servers=env["INGESTD_TEST_KAFKA_CENTRAL"], client_id="ingestd-e2e"
            ),
            local=KafkaConnection(bootstrap_servers=env["INGESTD_TEST_KAFKA_LOCAL"], client_id="ingestd-e2e"),
            postgres_url=env["INGESTD_TEST_POSTGRES_URL"],
            opensearch_url=env.get("INGESTD_TEST_OPENSEARCH_URL") or None,
            kafka_lib=Path(lib) if lib else None,
            prometheus_targets_dir=Path(targets) if targets else None,
            prometheus_url=env.get("INGESTD_TEST_PROMETHEUS_URL") or None,
        )


@dataclass(frozen=True)
class Tuning:
    """The settings of the services that a run varies; everything else is the services' defaults.

    The mirror's and the daemon's are their shipped defaults (transactions closed
    after 20 ms, batches after 50 ms); the publisher polls an empty table every 50 ms
    rather than its default second (``ingestd bench e2e`` keeps the default in drain
    mode), which is Rucio's database load for an operator to choose. With a backlog
    every stage fills whole batches anyway.
    """

    publisher_batch_size: int = 10_000
    publisher_poll_interval_s: float = 0.05
    mirror_batch_max_wait_ms: int = 20
    daemon_batch_events: int = 2000
    daemon_batch_wait_s: float = 0.05
    daemon_replicas: int = 1
    """Daemons sharing the facility's partitions in one consumer group (production runs two)."""
    verify_files: bool = False
    verify_checksums: bool = True
    log_level: str = "INFO"
    session_timeout_s: float = 6.0
    park_max_age_s: float = 86_400.0
    opensearch: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain data for reports."""
        return dict(self.__dict__)


@dataclass
class RegistryProgress:
    """What the facility's registry holds, polled while events flow."""

    datasets: int
    exposures: int
    at: float = field(default_factory=time.monotonic)


class Chain:
    """A run's databases, topics, configuration files and service processes.

    Parameters
    ----------
    testbed
        The servers.
    workdir
        Where configuration files, logs, the storage area and the ledger go.
    tuning
        Service settings.
    run_id
        Names everything the run creates (random by default).
    keep
        Keep databases, topics and files after the run.
    """

    def __init__(
        self,
        testbed: TestBed,
        workdir: Path,
        *,
        tuning: Tuning | None = None,
        run_id: str | None = None,
        keep: bool = False,
    ) -> None:
        self.testbed = testbed
        self.workdir = workdir
        self.tuning = tuning or Tuning()
        self.run_id = run_id or uuid.uuid4().hex[:10]
        self.keep = keep
        self.prefix = f"e2e.{self.run_id}"
        self.storage = workdir / "storage"
        self.site_map = site_map_for(self.prefix)
        self.facility_site_map = site_map_for(self.prefix, self.storage)
        self.facility_topics = sorted(
            {
                self.site_map.topic_for(rse.name, rse.scope)
                for rse in RSES
                if rse.facility == FACILITY_UNDER_TEST
            }
        )
        self.central_topics = sorted(
            {self.site_map.topic_for(rse.name, rse.scope) for rse in RSES} | {self.site_map.catch_all_topic}
        )
        self.dead_letter_topic = f"{self.prefix}.dead-letters"
        self.retry_topic = f"{self.dead_letter_topic}.retry"
        self.group_id = f"ingestd-{self.run_id}"
        self.mirror_group_id = f"ingestd-mirror.{self.run_id}"
        self.index_prefix = f"e2e-{self.run_id}"
        self.daemons = daemon_names(self.tuning.daemon_replicas)
        self.service_names: tuple[str, ...] = ("publisher", "mirror", *self.daemons)
        """Every service process, upstream first (each daemon replica on its own)."""
        self.services: dict[str, ServiceProcess] = {}
        self.rucio_url: str = ""
        self.registry_url: str = ""
        self.rucio_python: Path | None = None
        self.rucio_config: Path | None = None
        self._stack = ExitStack()
        self._prometheus_files: list[Path] = []
        self.bootstrap_exposures = 0

    # -- set-up ------------------------------------------------------------------------------

    def __enter__(self) -> Chain:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        self._stack.callback(self._cleanup)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def prepare(self, campaign: Campaign) -> None:
        """Create the databases (Rucio's from its template, the registry with the bootstrap records),
        the central topics, and the configuration files."""
        from butler_registry import open_registry

        self._prepare_rucio()
        admin_url = plain_url(self.testbed.postgres_url)
        name = f"e2e_registry_{self.run_id}"
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self._stack.callback(self._drop_database, name)
        self.registry_url = database_url(admin_url, name).replace("postgresql://", "postgresql+psycopg://", 1)
        bootstrap = campaign.write_bootstrap_export(self.workdir / "bootstrap-dimensions.yaml")
        registry = open_registry(self.registry_url, create=True)
        try:
            result = registry.import_dimensions(bootstrap)
        finally:
            registry.close()
        logger.info("e2e_registry_ready", records=result.dimension_records_inserted)
        self.bootstrap_exposures = self.registry_progress().exposures
        ensure_topics(make_admin(self.testbed.central), self.central_topics, partitions=3)
        self._write_configs()

    def _prepare_rucio(self) -> None:
        try:
            from deploy.local.rucio_env import (
                PostgresAdmin,
                clone_database,
                ensure_rucio_venv,
                ensure_template_database,
                write_rucio_config,
            )
        except ImportError as error:  # deploy/ ships with the source tree, not with the package
            raise ChainError(
                "end-to-end runs need the source checkout's deploy/ package (Rucio's virtualenv): run "
                "from the repository root, e.g. `python -m ingestd bench e2e`"
            ) from error
        admin = PostgresAdmin.from_url(self.testbed.postgres_url)
        venv = ensure_rucio_venv()
        template = ensure_template_database(admin, venv, self.workdir / "rucio-template")
        url = self._stack.enter_context(clone_database(admin, template, f"e2e_rucio_{self.run_id}"))
        self.rucio_url = url
        self.rucio_config = write_rucio_config(
            self.workdir / "rucio", url, venv=venv, services=[RUCIO_SERVICE]
        )
        self.rucio_python = venv / "bin" / "python"

    def _write_configs(self) -> None:
        tuning = self.tuning
        site = json.loads(self.site_map.model_dump_json())
        facility_site = json.loads(self.facility_site_map.model_dump_json())
        ports = {name: free_port() for name in self.service_names}
        publisher = {
            "kafka": {
                "bootstrap_servers": self.testbed.central.bootstrap_servers,
                "client_id": "e2e-publisher",
            },
            "database": {"url": self.rucio_url, "services": [RUCIO_SERVICE]},
            "site_map": site,
            "batch_size": tuning.publisher_batch_size,
            "poll_interval_s": tuning.publisher_poll_interval_s,
            "max_backoff_s": 2.0,
            "http_host": "127.0.0.1",
            "http_port": ports["publisher"],
            "instance_id": f"e2e-{self.run_id}",
            "topics": {"partitions": 3},
        }
        mirror = {
            "source": {
                "bootstrap_servers": self.testbed.central.bootstrap_servers,
                "client_id": "e2e-mirror",
            },
            "target": {"bootstrap_servers": self.testbed.local.bootstrap_servers, "client_id": "e2e-mirror"},
            "source_alias": "usdf",
            "policy": "identity",
            "selection": {"facility": FACILITY_UNDER_TEST, "site_map": site},
            "instance": f"e2e-{self.run_id}",
            "group_id": self.mirror_group_id,
            "transactional_id_prefix": f"e2e-{self.run_id}",
            "batch_max_wait_ms": tuning.mirror_batch_max_wait_ms,
            "discovery_interval_s": 2.0,
            "http_host": "127.0.0.1",
            "http_port": ports["mirror"],
        }
        daemon: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.testbed.local.bootstrap_servers},
            "consumer": {
                "group_id": self.group_id,
                "topics": self.facility_topics,
                "source_aliases": [],
                "session_timeout_s": tuning.session_timeout_s,
            },
            "site": facility_site,
            "planning": {"facility": FACILITY_UNDER_TEST},
            "registry": {"url": self.registry_url},
            "dead_letters": {
                "topic": self.dead_letter_topic,
                "park_delay_s": 1.0,
                "park_delay_max_s": 2.0,
                "park_max_age_s": tuning.park_max_age_s,
            },
            "verification": {"enabled": tuning.verify_files, "checksum": tuning.verify_checksums},
            "batching": {"max_events": tuning.daemon_batch_events, "max_wait_s": tuning.daemon_batch_wait_s},
            "retry": {"initial_backoff_s": 0.2, "max_backoff_s": 2.0},
            "lifecycle": {"shutdown_timeout_s": 20.0},
            "logging": {"format": "json", "level": tuning.log_level},
        }
        if tuning.opensearch and self.testbed.opensearch_url:
            daemon["opensearch"] = {
                "urls": [self.testbed.opensearch_url],
                "index_prefix": self.index_prefix,
                "number_of_replicas": 0,
            }
        configs = {"publisher": publisher, "mirror": mirror}
        commands = {
            "publisher": ingestd_argv("publish", "--config", str(self.workdir / "publisher.yaml")),
            "mirror": ingestd_argv("mirror", "--config", str(self.workdir / "mirror.yaml")),
        }
        for name in self.daemons:
            configs[name] = {
                **daemon,
                "kafka": {**daemon["kafka"], "client_id": f"e2e-{name}"},
                "http": {"host": "127.0.0.1", "port": ports[name]},
            }
            commands[name] = ingestd_argv("run", "--config", str(self.workdir / f"{name}.yaml"))
        env = self.child_environment()
        for name in self.service_names:
            (self.workdir / f"{name}.yaml").write_text(yaml.safe_dump(configs[name], sort_keys=False))
            self.services[name] = ServiceProcess(name, commands[name], self.workdir, env, ports[name])

    def child_environment(self, **extra: str) -> dict[str, str]:
        """A service's environment: no stray ``INGESTD_*`` settings, JSON logs, the repository on the path."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("INGESTD_") or k.startswith("INGESTD_TEST")
        }
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        env["INGESTD_LOG_FORMAT"] = "json"
        env["INGESTD_LOG_LEVEL"] = self.tuning.log_level
        env.update(extra)
        return env

    # -- running -----------------------------------------------------------------------------

    def feeder(self) -> RucioFeeder:
        """A Rucio feeder writing into this run's ``messages`` table."""
        if self.rucio_python is None or self.rucio_config is None:
            raise ChainError("prepare() the chain first")
        return RucioFeeder(self.rucio_python, self.rucio_config, self.workdir / "rucio-feeder.log")

    def expand(self, names: Iterable[str]) -> list[str]:
        """``names`` with ``daemon`` standing for every daemon replica."""
        expanded: list[str] = []
        for name in names:
            expanded.extend(self.daemons if name == "daemon" else (name,))
        return expanded

    def start(self, names: Iterable[str] = SERVICES, *, ready_timeout_s: float = 90.0) -> None:
        """Start services (upstream first; ``daemon``: every replica) and wait until each reports ready.

        The daemons start once the mirror has created the facility's topics on the local
        cluster: a consumer subscribed before a topic exists notices it only at its next
        metadata refresh (tens of seconds), which would count as latency of the first events.
        """
        names = self.expand(names)
        for name in names:
            if name == self.daemons[0] and "mirror" in names:
                self.wait_for_local_topics(ready_timeout_s)
            service = self.services[name]
            service.start()
            self._register_with_prometheus(service)
        for name in names:
            self.services[name].wait_ready(ready_timeout_s)

    def wait_for_local_topics(self, timeout_s: float = 60.0) -> None:
        """Wait until every facility topic exists on the local cluster (the mirror creates them)."""
        admin = make_admin(self.testbed.local)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                existing = admin.list_topics(timeout=5).topics
                if all(topic in existing for topic in self.facility_topics):
                    return
            if time.monotonic() > deadline:
                raise ChainError(
                    f"the mirror did not create {self.facility_topics} on the local cluster within "
                    f"{timeout_s:.0f} s; mirror log:\n{self.services['mirror'].tail(15)}"
                )
            self.services["mirror"].assert_alive()
            time.sleep(0.2)

    def restart(self, name: str, *, ready_timeout_s: float = 90.0) -> None:
        """Start a stopped or killed service again and wait until it is ready."""
        self.services[name].start()
        self.services[name].wait_ready(ready_timeout_s)

    def stop(self, names: Sequence[str] = SERVICES, timeout_s: float = 40.0) -> dict[str, int | None]:
        """Stop services with SIGTERM (downstream first; ``daemon``: every replica); return exit codes."""
        return {name: self.services[name].stop(timeout_s) for name in reversed(self.expand(names))}

    def vacuum_rucio_messages(self) -> None:
        """``VACUUM (ANALYZE)`` Rucio's ``messages`` table, as its autovacuum keeps it while a backlog grows.

        A drain fills the table in a minute or two; the insert-triggered vacuum of those
        rows would otherwise run while the chain is on the clock, a cost a backlog that
        built up over hours has already paid (and a 10k run barely pays at all).
        """
        with psycopg.connect(plain_url(self.rucio_url), autocommit=True, connect_timeout=5) as connection:
            connection.execute("VACUUM (ANALYZE) messages")

    def registry_progress(self) -> RegistryProgress:
        """Datasets and exposures in the registry now."""
        with psycopg.connect(plain_url(self.registry_url), connect_timeout=5) as connection:
            row = connection.execute(
                "SELECT (SELECT count(*) FROM dataset), "
                "(SELECT count(*) FROM dimension_record WHERE element = 'exposure')"
            ).fetchone()
        assert row is not None
        return RegistryProgress(int(row[0]), int(row[1]))

    def wait_for_registry(
        self,
        *,
        datasets: int,
        dimension_files: int,
        timeout_s: float,
        on_progress: Callable[[RegistryProgress], None] | None = None,
        check_alive: Sequence[str] = SERVICES,
        poll_s: float = 0.25,
        events: int | None = None,
    ) -> RegistryProgress:
        """Wait until the registry holds ``datasets`` datasets and the exposures of ``dimension_files``.

        Counting a large registry costs its server tens of milliseconds of a core the
        chain needs, so counts are spaced by twenty times their own duration. Given
        ``events`` (the facility's), the registry is counted every 20 s at most (for
        progress; at 1,000,000 events a count takes 80 ms of the server, and counting
        every 5 s was 1.5 % of its CPU in the run) and the daemon's ``/metrics`` is
        read every ``poll_s`` in between;
        the registry is counted as soon as the daemon says it registered them all, so
        the stop time is known to within ``poll_s`` without the counts' cost.

        Raises
        ------
        ChainError
            Time ran out, or a service in ``check_alive`` died; with the logs' tails.
        """
        deadline = time.monotonic() + timeout_s
        wanted_exposures = self.bootstrap_exposures + dimension_files
        next_count = 0.0
        while True:
            asked = time.monotonic()
            if asked >= next_count or (events is not None and self._daemon_registered_events() >= events):
                progress = self._progress_or_none()
                query_s = time.monotonic() - asked
                spacing = poll_s if events is None else PROGRESS_COUNT_S
                next_count = time.monotonic() + max(spacing, 20 * query_s)
                if progress is not None:
                    if on_progress is not None:
                        on_progress(progress)
                    if progress.datasets >= datasets and progress.exposures >= wanted_exposures:
                        return progress
            for name in self.expand(check_alive):
                service = self.services[name]
                if service.process is not None and not service.alive():
                    raise ChainError(f"{name} died while events flowed:\n{service.tail()}")
            if time.monotonic() > deadline:
                shown = self._progress_or_none()
                raise ChainError(
                    f"registry holds {shown.datasets if shown else '?'} of {datasets} datasets after "
                    f"{timeout_s:.0f} s; daemon log:\n" + self.services["daemon"].tail(15)
                )
            time.sleep(poll_s if events is not None else max(0.0, next_count - time.monotonic()))

    def _daemon_registered_events(self) -> float:
        """Registered events summed over the daemons (see :meth:`registered_by_daemon`)."""
        return sum(self.registered_by_daemon().values())

    def registered_by_daemon(self) -> dict[str, float]:
        """``ingestd_events_total{outcome="registered"}`` of each daemon replica, from its ``/metrics``.

        A daemon that cannot be read counts 0 (while waiting, the registry count then decides).
        """
        counts: dict[str, float] = {}
        for name in self.daemons:
            counts[name] = 0.0
            try:
                text = self.services[name].metrics_text(timeout_s=2.0, names=["ingestd_events_total"])
            except (OSError, ServiceError):
                continue
            for line in text.splitlines():
                if line.startswith("ingestd_events_total{") and 'outcome="registered"' in line:
                    counts[name] += float(line.rsplit(" ", 1)[1])
        return counts

    def _progress_or_none(self) -> RegistryProgress | None:
        """Progress, or None while the registry's server is away (restarts during chaos)."""
        try:
            return self.registry_progress()
        except psycopg.OperationalError:
            return None

    # -- after the run -----------------------------------------------------------------------

    def reconcile(
        self, ledger: Ledger, *, expected_dead_letters: int = 0, kafka_timeout_s: float = 120.0
    ) -> ReconciliationReport:
        """Count every hop against the ledger (see :mod:`ingestd.e2e._reconcile`)."""
        with scratch_database(self.testbed.postgres_url, f"e2e_ledger_{self.run_id}", keep=self.keep) as url:
            return reconcile(
                ledger,
                scratch_url=url,
                rucio_url=self.rucio_url,
                registry_url=self.registry_url,
                central=KafkaEvidence("central", self.testbed.central, self.central_topics),
                local=KafkaEvidence("local", self.testbed.local, self.facility_topics),
                dead_letters=KafkaEvidence("dlq", self.testbed.local, [self.dead_letter_topic]),
                retries=KafkaEvidence("retry", self.testbed.local, [self.retry_topic]),
                facility=FACILITY_UNDER_TEST,
                expected_dead_letters=expected_dead_letters,
                kafka_timeout_s=kafka_timeout_s,
            )

    def opensearch_latency(self) -> dict[str, Any] | None:
        """Document count and latency percentiles of the run's event documents (None when off)."""
        if not (self.tuning.opensearch and self.testbed.opensearch_url):
            return None
        import urllib.request

        base = self.testbed.opensearch_url.rstrip("/")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(
                urllib.request.Request(f"{base}/{self.index_prefix}-*/_refresh", method="POST"), timeout=30
            ).close()
        body = {
            "size": 0,
            "track_total_hits": True,
            "query": {"term": {"outcome": "registered"}},
            "aggs": {
                "latency": {"percentiles": {"field": "latency_seconds", "percents": [50, 90, 99, 99.9]}},
                "max": {"max": {"field": "latency_seconds"}},
                "outcomes": {"terms": {"field": "outcome", "size": 10}},
            },
        }
        request = urllib.request.Request(
            f"{base}/{self.index_prefix}-*/_search",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
        except OSError as error:
            return {"error": str(error)}
        values = answer["aggregations"]["latency"]["values"]
        return {
            "registered_documents": answer["hits"]["total"]["value"],
            "p50_s": values.get("50.0"),
            "p90_s": values.get("90.0"),
            "p99_s": values.get("99.0"),
            "p99_9_s": values.get("99.9"),
            "max_s": answer["aggregations"]["max"]["value"],
        }

    def registry_latency(self) -> dict[str, Any]:
        """Latency percentiles from the registry: ingest time minus ``transferred_at``, every dataset.

        ``ingest_date`` is set by the database when the registering transaction starts, a
        few milliseconds before it commits, so these figures are a lower bound on the
        commit latency (the OpenSearch figures carry the commit time itself).
        """
        query = """
            SELECT count(*),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY s),
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY s),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY s),
                   percentile_cont(0.999) WITHIN GROUP (ORDER BY s),
                   max(s)
            FROM (SELECT extract(epoch FROM ingest_date - event_time) AS s
                  FROM dataset WHERE event_time IS NOT NULL) AS latency
        """
        with psycopg.connect(plain_url(self.registry_url)) as connection:
            row = connection.execute(query).fetchone()
        assert row is not None
        keys = ("datasets", "p50_s", "p90_s", "p99_s", "p99_9_s", "max_s")
        return {key: (round(float(value), 4) if value is not None and key != "datasets" else value)
                for key, value in zip(keys, row, strict=True)}  # fmt: skip

    def registry_rate(self, low: float = 0.1, high: float = 0.9) -> float | None:
        """Steady-state registrations per second between the ``low`` and ``high`` quantiles of ingest time."""
        with psycopg.connect(plain_url(self.registry_url)) as connection:
            row = connection.execute(
                "SELECT count(*), "
                "percentile_cont(%s) WITHIN GROUP (ORDER BY extract(epoch FROM ingest_date)), "
                "percentile_cont(%s) WITHIN GROUP (ORDER BY extract(epoch FROM ingest_date)) FROM dataset",
                (low, high),
            ).fetchone()
        if row is None or not row[0] or row[2] is None or row[2] <= row[1]:
            return None
        return float(row[0]) * (high - low) / (float(row[2]) - float(row[1]))

    # -- Prometheus and clean-up -------------------------------------------------------------

    def _register_with_prometheus(self, service: ServiceProcess) -> None:
        folder = self.testbed.prometheus_targets_dir
        if folder is None or service.health_port is None or not folder.is_dir():
            return
        path = folder / f"e2e-{self.run_id}-{service.name}.json"
        if path in self._prometheus_files:
            return
        labels = {"scrape_job": f"e2e-{self.run_id}", "service": service.name}
        path.write_text(json.dumps([{"targets": [f"127.0.0.1:{service.health_port}"], "labels": labels}]))
        self._prometheus_files.append(path)

    def prometheus_query(self, promql: str) -> list[dict[str, Any]] | None:
        """An instant query against the test bed's Prometheus (None when there is none)."""
        if not self.testbed.prometheus_url:
            return None
        import urllib.parse
        import urllib.request

        url = f"{self.testbed.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except OSError:
            return None
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def _drop_database(self, name: str) -> None:
        if self.keep:
            return
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(plain_url(self.testbed.postgres_url), autocommit=True) as connection,
        ):
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _cleanup(self) -> None:
        for service in self.services.values():
            service.stop(20)
        for path in self._prometheus_files:
            path.unlink(missing_ok=True)
        if self.keep:
            logger.info("e2e_kept", workdir=str(self.workdir), run_id=self.run_id)
            return
        self._delete_topics(self.testbed.central, self.prefix)
        self._delete_topics(self.testbed.local, self.prefix)
        self._delete_groups(self.testbed.local, [self.group_id, self.mirror_group_id])
        self._delete_opensearch()
        shutil.rmtree(self.storage, ignore_errors=True)

    @staticmethod
    def _delete_topics(connection: KafkaConnection, prefix: str) -> None:
        with contextlib.suppress(Exception):  # clean-up is best effort: the figures are already taken
            admin = make_admin(connection)
            names = [t for t in admin.list_topics(timeout=10).topics if prefix in t]
            if names:
                for future in admin.delete_topics(names, operation_timeout=30).values():
                    with contextlib.suppress(Exception):
                        future.result(timeout=30)

    @staticmethod
    def _delete_groups(connection: KafkaConnection, groups: list[str]) -> None:
        with contextlib.suppress(Exception):
            admin = make_admin(connection)
            for future in admin.delete_consumer_groups(groups, request_timeout=15).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=15)

    def _delete_opensearch(self) -> None:
        if not self.testbed.opensearch_url:
            return
        import urllib.request

        from monitoring.opensearch._template import template_name

        base = self.testbed.opensearch_url.rstrip("/")
        for path in (f"{self.index_prefix}-*", f"_index_template/{template_name(self.index_prefix)}"):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(
                    urllib.request.Request(f"{base}/{path}", method="DELETE"), timeout=30
                ).close()


def iter_events(campaign: Campaign, ledger: Ledger) -> Iterator[dict[str, Any]]:
    """The campaign's events as ``add_messages`` input, each recorded in the ledger as it is made."""
    for event in campaign.events_iter():
        ledger.record(event)
        yield {"event_type": "transfer-done", "payload": event.payload}
