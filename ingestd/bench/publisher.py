"""``ingestd bench publisher``: messages/s from Rucio's table to Kafka, ours against a HermesK-style loop.

Both run on the same PostgreSQL server (a scratch database with Rucio's
``messages``/``messages_history`` tables, filled with real-format transfer-done
rows) and the same Kafka cluster:

* **ours** — the table publisher: claimed batches (``FOR UPDATE SKIP LOCKED``),
  one DID-metadata query per batch, ``scope:name`` keys, compressed batches,
  delivery reports awaited, confirmed rows moved to history per batch;
* **hermesk_style** — what Rubin's HermesK does: read up to 1000 rows, then for each
  message ``produce`` with key ``"message"`` and ``flush()``, then move the rows to
  history. (HermesK also made one REST call per message for DID metadata; that
  cost is left out here, so the comparison flatters the baseline.)

Prints one JSON document. Targets are stated in it, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["register", "run"]

TARGET_MESSAGES_PER_S = 5_000
"""What ours should sustain on a 2-core machine (Rubin's peak transfer rate is far below it)."""
TARGET_RATIO = 2.0
"""How much faster than one-flush-per-message ours should be against one broker on the loopback.

Each HermesK flush waits one broker round trip (with ``acks=all``, the replication
too); ours waits one per batch. On the loopback a round trip costs ~0.3 ms, so this
is the floor of the ratio: over a real network to a replicated cluster it grows
with the round-trip time (at 2 ms, one flush per message caps HermesK near 500/s).
"""


def register(subparsers: Any) -> None:
    """Add ``bench publisher``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "publisher",
        help="Rucio messages table -> Kafka: ours vs a HermesK-style flush-per-message loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000, help="rows published by ours (default 20000)")
    parser.add_argument(
        "--baseline-messages",
        type=int,
        default=None,
        help="rows published by the HermesK-style loop (default: min(messages, 5000); it is slow)",
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="ours: rows per claimed batch")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("INGESTD_TEST_POSTGRES_URL"),
        help="superuser URL of a PostgreSQL server to create the scratch database on "
        "(default: $INGESTD_TEST_POSTGRES_URL)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("INGESTD_TEST_KAFKA_CENTRAL"),
        help="Kafka bootstrap servers (default: $INGESTD_TEST_KAFKA_CENTRAL)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON only (the default output is JSON too)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and topics")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        default=None,
        help="run ours under cProfile and write the statistics to FILE (read with python -m pstats)",
    )
    parser.set_defaults(func=run)


def _process_cpu_s() -> float:
    """CPU seconds of this process so far, every thread (librdkafka's included), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _payload(index: int, rses: list[str]) -> dict[str, Any]:
    name = f"bench/run_{index // 100}/visitSummary_{index}.fits"
    sidecar = {
        "id": str(uuid.uuid4()),
        "datasetType": {"name": "visitSummary", "storageClass": "ExposureCatalog", "dimensions": ["visit"]},
        "dataId": {"dataId": {"instrument": "HSC", "visit": index, "band": "y", "physical_filter": "HSC-Y"}},
        "run": "HSC/runs/RC2/w_2023_32/DM-40356/20230814T170253Z",
    }
    return {
        "activity": "User Subscriptions",
        "request-id": uuid.uuid4().hex,
        "duration": 4,
        "checksum-adler": "3210cb3f",
        "checksum-md5": "7018315389da34f8e4d1d2d3c57b014a",
        "file-size": 1365120,
        "bytes": 1365120,
        "guid": "None",
        "previous-request-id": "None",
        "protocol": "root",
        "scope": "dp2_prep",
        "name": name,
        "dataset": "rubin_dataset",
        "datasetScope": "dp2_prep",
        "src-type": "DISK",
        "src-rse": "SLAC_BUTLER_DISK",
        "src-url": f"root://sdfdtn.slac.stanford.edu:1094//rucio/dp2_prep/{name}",
        "dst-type": "DISK",
        "dst-rse": rses[index % len(rses)],
        "dst-url": f"root://ccxrootd.in2p3.fr:1094//pnfs/in2p3.fr/data/lsst/rucio/dp2_prep/{name}",
        "reason": "",
        "transfer-endpoint": "https://fts.example.org:8446",
        "transfer-id": str(uuid.uuid4()),
        "transfer-link": "None",
        "created_at": "2025-03-19 20:58:08.892187",
        "submitted_at": "2025-03-19 20:58:37.963536",
        "started_at": "2025-03-19 20:58:42",
        "transferred_at": "2025-03-19 20:58:46",
        "tool-id": "rucio-conveyor",
        "account": "root",
        "datatype": "None",
        "rubin_butler": "data_product",
        "rubin_sidecar": json.dumps(sidecar),
    }


def _fill(engine: Any, tables: Any, count: int, rses: list[str]) -> None:
    """Insert ``count`` transfer-done rows the way Rucio's add_messages writes them."""
    start = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "id": uuid.uuid4(),
            "event_type": "transfer-done",
            "payload": json.dumps(_payload(i, rses)),
            "payload_nolimit": None,
            "services": "kafka",
            "created_at": start + timedelta(microseconds=i),
            "updated_at": start + timedelta(microseconds=i),
        }
        for i in range(count)
    ]
    with engine.begin() as connection:
        for begin in range(0, len(rows), 5000):
            connection.execute(tables.messages.insert(), rows[begin : begin + 5000])


def _hermesk_style(engine: Any, tables: Any, bootstrap: str, prefix: str) -> tuple[int, float]:
    """HermesK's loop: bulk read, produce + flush per message with key "message", then move to history."""
    import sqlalchemy as sa
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "bench-hermesk-style"})
    messages, history = tables.messages, tables.messages_history
    published = 0
    began = time.perf_counter()
    while True:
        with engine.begin() as connection:
            rows = connection.execute(
                sa.select(messages).order_by(messages.c.created_at).limit(1000).with_for_update(nowait=True)
            ).all()
            if not rows:
                break
            for row in rows:
                payload = json.loads(row.payload)
                envelope = json.dumps(
                    {"event_type": row.event_type, "payload": payload, "created_at": str(row.created_at)}
                )
                producer.produce(
                    f"{prefix}{payload['dst-rse']}-{payload['scope']}", key="message", value=envelope
                )
                producer.flush()  # per message, no delivery report read: what HermesK does
            ids = [row.id for row in rows]
            connection.execute(
                history.insert(),
                [{**row._mapping, "updated_at": datetime.now(UTC).replace(tzinfo=None)} for row in rows],
            )
            connection.execute(messages.delete().where(messages.c.id.in_(ids)))
            published += len(rows)
    return published, time.perf_counter() - began


def run(args: argparse.Namespace) -> int:
    """Run both publishers on fresh rows; print the figures as JSON."""
    import sqlalchemy as sa
    from prometheus_client import CollectorRegistry

    from ingestd.gc_tuning import tune_gc
    from ingestd.kafka import KafkaConnection, make_admin
    from ingestd.log import LoggingSettings, configure_logging
    from ingestd.sitemap import SiteMap
    from monitoring.metrics import PublisherMetrics
    from publisher import (
        DatabaseMetadata,
        Enricher,
        KafkaDelivery,
        MessageTable,
        Router,
        TablePublisher,
        TopicSettings,
        create_rucio_tables,
        rucio_tables,
    )

    # Figures go to standard output; only warnings (and worse) to standard error.
    configure_logging(LoggingSettings(level=os.environ.get("INGESTD_LOG_LEVEL", "WARNING")), service="bench")
    if not args.postgres_url or not args.bootstrap_servers:
        print(
            "bench publisher: give --postgres-url and --bootstrap-servers (or the test-bed env)",
            file=sys.stderr,
        )
        return 2
    baseline_count = (
        args.baseline_messages if args.baseline_messages is not None else min(args.messages, 5000)
    )
    token = uuid.uuid4().hex[:8]
    database = f"ingestd_bench_publisher_{token}"
    prefix = f"bench.publisher.{token}."
    rses = ["IN2P3_BUTLER_DISK", "RAL_BUTLER_DISK", "LANCS_BUTLER_DISK", "IN2P3_TAPE"]
    admin_url = sa.make_url(args.postgres_url)
    if admin_url.drivername in ("postgresql", "postgres"):
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    admin_engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    engine = sa.create_engine(admin_url.set(database=database), pool_size=2)
    kafka = KafkaConnection(bootstrap_servers=args.bootstrap_servers, client_id="ingestd-bench")
    site_map = SiteMap.model_validate(
        {
            "topic_template": prefix + "{dst_rse}-{scope}",
            "catch_all_topic": prefix + "unrouted",
            "facilities": [
                {"name": "FrDF", "rses": ["IN2P3_.*"]},
                {"name": "UKDF", "rses": ["RAL_.*", "LANCS_.*"]},
            ],
        }
    )
    try:
        tables = rucio_tables()
        create_rucio_tables(engine, tables)

        # Ours.
        _fill(engine, tables, args.messages, rses)
        delivery = KafkaDelivery(kafka, TopicSettings(), delivery_timeout_s=60, instance_id=f"bench-{token}")
        worker = TablePublisher(
            MessageTable(engine, tables, ["transfer-done"], ["kafka"]),
            Enricher(DatabaseMetadata(tables), ["rubin_butler", "rubin_sidecar"]),
            Router(site_map),
            delivery,
            PublisherMetrics(CollectorRegistry()),
            batch_size=args.batch_size,
            instance_id=f"bench-{token}",
        )
        worker.delivery._ensure_topics(
            site_map.topic_template.format(dst_rse=r, scope="dp2_prep") for r in rses
        )
        tune_gc()  # as `ingestd publish` does once started
        profile = cProfile.Profile() if args.profile else None
        began = time.perf_counter()
        cpu_began = _process_cpu_s()
        if profile is not None:
            profile.enable()
        ours = 0
        batches = 0
        while (result := worker.publish_batch()).taken:
            ours += result.delivered
            batches += 1
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        ours_cpu_s = _process_cpu_s() - cpu_began
        ours_s = time.perf_counter() - began
        delivery.close()

        # HermesK-style, on the same (now empty) table and the same topics.
        _fill(engine, tables, baseline_count, rses)
        baseline, baseline_s = _hermesk_style(engine, tables, args.bootstrap_servers, prefix)

        ours_rate = ours / ours_s if ours_s else 0.0
        baseline_rate = baseline / baseline_s if baseline_s else 0.0
        report = {
            "benchmark": "publisher",
            "machine": {"cpus": os.cpu_count()},
            "ours": {
                "messages": ours,
                "seconds": round(ours_s, 3),
                "messages_per_s": round(ours_rate, 1),
                # The publisher's own CPU (PostgreSQL's and the broker's are not in it): what it
                # costs on a shared host, whatever the wall-clock rate there.
                "cpu_s": round(ours_cpu_s, 3),
                "cpu_us_per_message": round(ours_cpu_s / ours * 1e6, 1) if ours else None,
                "profiled": bool(args.profile),
                "batch_size": args.batch_size,
                "batches": batches,
                "keys": "scope:name",
                "delivery_reports_checked": True,
            },
            "hermesk_style": {
                "messages": baseline,
                "seconds": round(baseline_s, 3),
                "messages_per_s": round(baseline_rate, 1),
                "keys": "message",
                "delivery_reports_checked": False,
            },
            "ratio": round(ours_rate / baseline_rate, 1) if baseline_rate else None,
            "targets": {
                "ours_messages_per_s": TARGET_MESSAGES_PER_S,
                "ratio": TARGET_RATIO,
                "note": "one local broker and replica: the floor of the ratio, which grows with round trips",
                "met": bool(
                    ours_rate >= TARGET_MESSAGES_PER_S
                    and baseline_rate
                    and ours_rate / baseline_rate >= TARGET_RATIO
                ),
            },
        }
        print(json.dumps(report, indent=None if args.json else 2))
    finally:
        engine.dispose()
        if not args.keep:
            with admin_engine.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            admin = make_admin(kafka)
            names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
            if names:
                for future in admin.delete_topics(names, operation_timeout=30).values():
                    try:
                        future.result(timeout=30)
                    except Exception as error:  # clean-up only: report, do not fail the benchmark
                        print(f"bench publisher: could not delete a topic: {error}", file=sys.stderr)
        admin_engine.dispose()
    return 0
