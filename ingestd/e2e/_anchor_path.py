"""The anchor path of a run: MirrorMaker 2 and the ctrl_ingestd-equivalent consumer on the real Butler.

It starts where the two paths share their input: the run's topics on the central
cluster, already filled by the publisher. MirrorMaker 2 (the test bed's Kafka 3.9
jars, configured by :func:`mirror.mm2.render_mm2_properties` from the same site
map, prefix policy so its copies never collide with ``ingestd mirror``'s) copies
the facility's topics to the local cluster; :mod:`ingestd.e2e.anchor` consumes the
copies and ingests into a real Butler repository whose registry is a fresh
database on the same PostgreSQL server, holding the same bootstrap dimension
records. The consumer stops after ``max_events`` messages; its rate is measured
from its first message to its last successful ingest, so neither JVM start-up
nor the Butler's import time counts against it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from ingestd.kafka import make_admin
from ingestd.log import get_logger

from ._campaign import FACILITY_UNDER_TEST, RSES, STORAGE_CLASSES
from ._chain import Chain, ChainError
from ._processes import ServiceProcess, free_port
from ._reconcile import database_url, plain_url

__all__ = ["AnchorResult", "run_anchor_path"]

logger = get_logger(__name__)

_FALLBACK_FORMATTER = "lsst.daf.butler.formatters.json.JsonFormatter"
"""Formatter recorded for the generated storage classes (their usual ones need lsst.obs.base)."""


@dataclass
class AnchorResult:
    """Figures of the anchor path."""

    events_offered: int
    messages: int
    ingested_events: dict[str, int]
    failed_events: dict[str, int]
    datasets_in_butler: int
    events_per_s: float | None
    steady_datasets_per_s: float | None
    elapsed_s: float | None
    mm2_records_per_s: float | None
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def _butler_repo(chain: Chain, bootstrap: Path, database: str) -> Path:
    from lsst.daf.butler import Butler

    from butler_registry.daf import create_butler_repo

    url = database_url(chain.testbed.postgres_url, database)
    root = chain.workdir / "butler-repo"
    create_butler_repo(
        root,
        registry_db=url.replace("postgresql://", "postgresql+psycopg://", 1),
        formatters=dict.fromkeys(STORAGE_CLASSES, _FALLBACK_FORMATTER),
    )
    butler = Butler.from_config(str(root), writeable=True)
    try:
        butler.import_(filename=str(bootstrap))
    finally:
        butler.close()
    return root


def _steady_rate(url: str, low: float = 0.1, high: float = 0.9) -> float | None:
    """Datasets per second between the ``low`` and ``high`` quantiles of the Butler's ``ingest_date``.

    Recent daf_butler schemas store ``ingest_date`` as TAI nanoseconds (``bigint``), older ones as a
    timestamp; only differences matter here.
    """
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=5) as connection:
        kind = connection.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'dataset' AND column_name = 'ingest_date'"
        ).fetchone()
        seconds = (
            "ingest_date::float8 / 1e9" if kind and kind[0] == "bigint" else "extract(epoch FROM ingest_date)"
        )
        query = (
            f"SELECT count(*), percentile_cont(%s) WITHIN GROUP (ORDER BY {seconds}), "
            f"percentile_cont(%s) WITHIN GROUP (ORDER BY {seconds}) FROM dataset"
        )
        row = connection.execute(query, (low, high)).fetchone()
        if row and row[0] and row[2] is not None and row[2] > row[1]:
            return float(row[0]) * (high - low) / (float(row[2]) - float(row[1]))
    return None


def _count_datasets(url: str) -> int:
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=5) as connection:
        row = connection.execute("SELECT count(*) FROM dataset").fetchone()
        return int(row[0]) if row else 0
    return 0


def _mm2_process(chain: Chain, alias: str, target_alias: str) -> tuple[ServiceProcess, list[str]]:
    from mirror import MirrorSettings, ReplicationPolicy
    from mirror.mm2 import Mm2Options, render_mm2_properties

    if chain.testbed.kafka_lib is None:
        raise ChainError("the anchor path needs MirrorMaker 2's jars: set INGESTD_TESTBED_KAFKA_LIB")
    settings = MirrorSettings(
        source=chain.testbed.central,
        target=chain.testbed.local,
        source_alias=alias,
        target_alias=target_alias,
        policy=ReplicationPolicy.prefix,
        selection={"facility": FACILITY_UNDER_TEST, "site_map": chain.site_map},
        instance=f"anchor-{chain.run_id}",
        target_replication_factor=1,
        discovery_interval_s=2.0,
    )
    options = Mm2Options(internal_replication_factor=1, rest_listener=f"http://127.0.0.1:{free_port()}")
    properties = chain.workdir / "mm2.properties"
    properties.write_text(render_mm2_properties(settings, options))
    log4j = chain.workdir / "mm2-log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=WARN, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    argv = [
        "java",
        "-Xms256m",
        "-Xmx1g",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        f"{chain.testbed.kafka_lib}/*",
        "org.apache.kafka.connect.mirror.MirrorMaker",
        str(properties),
    ]
    targets = [settings.naming().target_topic(topic) for topic in chain.facility_topics]
    return ServiceProcess("mirrormaker2", argv, chain.workdir, chain.child_environment()), targets


def run_anchor_path(
    chain: Chain,
    bootstrap: Path,
    *,
    max_events: int,
    mirrored_records: int,
    timeout_s: float,
    progress: Any = None,
) -> AnchorResult:
    """MirrorMaker 2 + the anchor consumer over the run's central topics; see the module docstring.

    Parameters
    ----------
    chain
        A chain whose publisher has filled the central topics.
    bootstrap
        The bootstrap export (imported into the Butler before the clock starts).
    max_events
        Messages the anchor consumer handles before it stops.
    mirrored_records
        Records MirrorMaker 2 has to copy (the facility's events), to time its copy.
    timeout_s
        Longest time the consumer may take.
    progress
        Called with a line of text now and then (progress on standard error).
    """
    run = chain.run_id
    alias, target_alias = f"anchor{run}", f"local{run}"
    database = f"e2e_butler_{run}"
    admin_url = plain_url(chain.testbed.postgres_url)
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    butler_url = database_url(admin_url, database)
    mm2: ServiceProcess | None = None
    consumer: ServiceProcess | None = None
    try:
        repo = _butler_repo(chain, bootstrap, database)
        mm2, targets = _mm2_process(chain, alias, target_alias)
        prefixes = {}
        for topic, target in zip(chain.facility_topics, targets, strict=True):
            rse = next(r for r in RSES if chain.site_map.topic_for(r.name, r.scope) == topic)
            prefixes[target] = {
                "rucio_prefix": rse.rucio_prefix,
                "fs_prefix": str(chain.storage / rse.name) + "/",
            }
        config = {
            "brokers": chain.testbed.local.bootstrap_servers,
            "group_id": f"anchor-{run}",
            "client_id": f"anchor-{run}",
            "num_messages": 50,
            "timeout": 1,
            "butler_repo": str(repo),
            "topics": prefixes,
        }
        config_path = chain.workdir / "anchor.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        summary_path = chain.workdir / "anchor-summary.json"
        consumer = ServiceProcess(
            "anchor",
            [
                *chain.services["daemon"].argv[:1],
                "-m",
                "ingestd.e2e.anchor",
                str(config_path),
                "--max-events",
                str(max_events),
                "--summary",
                str(summary_path),
            ],
            chain.workdir,
            chain.child_environment(),
        )
        mm2.start()
        consumer.start()
        began = time.monotonic()
        last_report = began
        copy_began: float | None = None
        copy_done: float | None = None
        while consumer.alive() or copy_done is None:
            mm2.sample()
            consumer.sample()
            if copy_done is None:
                copied = _target_records(chain, targets)
                now = time.monotonic()
                copy_began = copy_began or (now if copied else None)
                if copied >= mirrored_records:
                    copy_done = now
            if not mm2.alive():
                raise ChainError(f"MirrorMaker 2 exited:\n{mm2.tail()}")
            if time.monotonic() - began > timeout_s:
                raise ChainError(
                    f"the anchor consumer did not finish {max_events} events in {timeout_s:.0f} s"
                )
            if progress is not None and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                progress(f"anchor: {_count_datasets(butler_url)} datasets in the Butler")
            time.sleep(0.5)
        mm2.sample()
        mm2_rate = (
            round(mirrored_records / (copy_done - copy_began), 1)
            if copy_began is not None and copy_done is not None and copy_done > copy_began
            else None
        )
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if consumer.process is not None and consumer.process.returncode not in (0, None):
            raise ChainError(f"the anchor consumer failed:\n{consumer.tail()}")
        ingested = dict(summary.get("ingested_events", {}))
        first, last = summary.get("first_message_at"), summary.get("last_ingest_at")
        elapsed = (last - first) if first and last and last > first else None
        rate = sum(ingested.values()) / elapsed if elapsed else None
        steady = _steady_rate(butler_url)
        return AnchorResult(
            events_offered=max_events,
            messages=int(summary.get("messages", 0)),
            ingested_events=ingested,
            failed_events=dict(summary.get("failed_events", {})),
            datasets_in_butler=_count_datasets(butler_url),
            events_per_s=round(rate, 1) if rate else None,
            steady_datasets_per_s=round(steady, 1) if steady else None,
            elapsed_s=round(elapsed, 2) if elapsed else None,
            mm2_records_per_s=mm2_rate,
            peak_rss_mb={s.name: round(s.peak_rss_bytes / 2**20, 1) for s in (mm2, consumer)},
            cpu_s={s.name: round(s.cpu_s, 2) for s in (mm2, consumer)},
            failures=list(summary.get("failures", []))[:5],
            config={
                "mirrormaker2": "Kafka 3.9.2 MirrorMaker 2, dedicated mode, exactly-once as rendered by "
                "mirror.mm2 (prefix policy), 1 task",
                "consumer": "enable.auto.commit=True, consume(num_messages=50), DatasetRef.from_json + "
                "Butler.ingest(transfer='direct'), ingest_zip, import_ (lsst-daf-butler)",
            },
        )
    finally:
        for service in (consumer, mm2):
            if service is not None:
                service.stop(30)
        if not chain.keep:
            with contextlib.suppress(Exception):
                admin = make_admin(chain.testbed.local)
                doomed = [t for t in admin.list_topics(timeout=10).topics if run in t]
                if doomed:
                    for future in admin.delete_topics(doomed, operation_timeout=30).values():
                        with contextlib.suppress(Exception):
                            future.result(timeout=30)
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(admin_url, autocommit=True) as connection,
            ):
                connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _target_records(chain: Chain, targets: list[str]) -> int:
    """Offsets written to MirrorMaker 2's target topics (records plus transaction markers)."""
    from confluent_kafka import TopicPartition

    from ingestd.kafka import make_consumer

    consumer = make_consumer(chain.testbed.local, None, read_committed=True)
    try:
        metadata = consumer.list_topics(timeout=10).topics
        total = 0
        for topic in targets:
            if topic in metadata:
                for partition in metadata[topic].partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                    total += max(0, high - low)
        return total
    finally:
        consumer.close()
