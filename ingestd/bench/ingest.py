"""``ingestd bench ingest``: events per second end to end, Kafka -> registry -> offset commit.

For each batch size: a fresh topic (3 partitions) on the given Kafka and a fresh
PostgreSQL database for the registry; N distinct real-format ``data_product``
events are produced first (HSC calexps: one per detector and run, so each is a
new dataset), then the daemon's own engine and Kafka group source consume,
decode, register and commit them, exactly as ``ingestd run`` does (no HTTP port,
no OpenSearch). The figure is N divided by the time from the first record read
to the last offset commit. The registry is checked to hold exactly N datasets.

The target (issue 4) is 5,000 events/s on a 2-core machine with batches of
~1,000-5,000. Standard output carries one JSON document; nothing is asserted.
Progress goes to standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import uuid
from typing import Any, Final

from ingestd.bench._sidecars import HSC_DETECTORS, hsc_calexp_sidecar

TARGET_EVENTS_PER_S: Final = 5_000
"""Issue 4: end-to-end throughput on a 2-core machine with PostgreSQL."""

_PREFIX: Final = "root://xrd5:1098//rucio/bench/"
"""HSC detectors in the bundled dimension records: data IDs per run."""


def register(subparsers: Any) -> None:
    """Add ``ingestd bench ingest``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ingest",
        help="events/s end to end: Kafka -> decode -> registry -> commit (target 5k/s); prints JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=20_000, metavar="N", help="events per run")
    parser.add_argument(
        "--batch",
        default="2000",
        metavar="B[,B...]",
        help="batch sizes (batching.max_events), comma-separated",
    )
    parser.add_argument(
        "--kafka",
        default=os.environ.get("INGESTD_TEST_KAFKA_LOCAL", "127.0.0.1:29092"),
        metavar="HOST:PORT",
        help="Kafka bootstrap server (default: $INGESTD_TEST_KAFKA_LOCAL)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("INGESTD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:15432/postgres"),
        metavar="URL",
        help="PostgreSQL server (superuser) where a scratch database is created per run and dropped",
    )
    parser.add_argument("--keep", action="store_true", help="keep the topics and databases afterwards")
    parser.add_argument(
        "--no-read-ahead",
        dest="read_ahead",
        action="store_false",
        help="decode each batch only after the previous one is committed (for comparison)",
    )
    parser.add_argument("--json", action="store_true", help="compact JSON (default: indented)")
    parser.set_defaults(func=run)


def synthetic_events(count: int, *, seed: str) -> list[tuple[bytes, bytes]]:
    """``count`` distinct calexp ``data_product`` events (key, value) in the real HermesK format."""
    from ingestd.samples import events_file

    template: dict[str, Any] | None = None
    for line in events_file().read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("payload", {}).get("rubin_butler") == "data_product":
            template = event
            break
    if template is None:
        raise LookupError("no data_product event in the bundled sample")
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, seed)
    events = []
    for index in range(count):
        dataset_id = uuid.uuid5(namespace, str(index))
        detector, run = index % HSC_DETECTORS, f"bench/{seed}/run{index // HSC_DETECTORS:05d}"
        payload = dict(template["payload"])
        name = f"bench/{run}/calexp_{detector}_{dataset_id.hex[:12]}.fits"
        payload.update(
            {
                "name": name,
                "dst-url": _PREFIX + name,
                "transfer-id": str(dataset_id),
                "file-size": 10_000 + index,
                "bytes": 10_000 + index,
                "rubin_sidecar": hsc_calexp_sidecar(dataset_id, detector, run),
            }
        )
        value = json.dumps({**template, "payload": payload}, separators=(",", ":")).encode()
        events.append((dataset_id.bytes, value))
    return events


def _progress(message: str) -> None:
    print(f"[bench ingest] {message}", file=sys.stderr, flush=True)


def _produce(kafka: Any, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    from ingestd.kafka import make_producer

    producer = make_producer(kafka, overrides={"linger.ms": 20, "batch.num.messages": 10_000})
    errors: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    started = time.perf_counter()
    for key, value in events:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"producing the events failed: {left} undelivered, errors {errors[:3]}")
    return time.perf_counter() - started


def _one_run(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    import psycopg

    from butler_registry import open_registry
    from ingestd.config import load_settings
    from ingestd.engine import Runner, StopToken
    from ingestd.engine._assembly import build_pipeline, subscription, wait_for_topics
    from ingestd.kafka import KafkaConnection, ensure_topics, make_admin
    from ingestd.samples import files_dir
    from ingestd.sources import KafkaGroupSource

    tag = uuid.uuid4().hex[:8]
    kafka = KafkaConnection(bootstrap_servers=args.kafka, client_id="ingestd-bench")
    topic, dead_letters, group = f"bench.ingest.{tag}", f"bench.ingest.{tag}.dlq", f"bench.ingest.{tag}"
    database = f"bench_ingest_{tag}"
    admin_url = args.postgres.replace("postgresql+psycopg://", "postgresql://")
    base = admin_url.rsplit("/", 1)[0]
    registry_url = f"postgresql+psycopg://{base.split('://', 1)[1]}/{database}"
    admin = make_admin(kafka)
    ensure_topics(admin, [topic], partitions=3)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        with open_registry(registry_url, create=True) as registry:
            registry.import_dimensions(files_dir() / "dimensions.yaml")
        events = synthetic_events(args.events, seed=tag)
        _progress(f"batch {batch}: producing {len(events)} events to {topic}")
        produce_s = _produce(kafka, topic, events)

        settings = load_settings(
            None,
            kafka=kafka.model_dump(),
            consumer={"group_id": group, "topics": [topic], "session_timeout_s": 10},
            topic_prefixes={topic: {"rucio_prefix": _PREFIX, "fs_prefix": "/bench"}},
            registry={"url": registry_url},
            dead_letters={"topic": dead_letters},
            batching={"max_events": batch, "max_wait_s": 0.5},
            http={"enabled": False},
        )
        stop = StopToken(30)
        pipeline = build_pipeline(settings, stop=stop, opensearch=False)
        wait_for_topics(settings, pipeline.engine.retrier)
        source = KafkaGroupSource(kafka, group, subscription(settings), session_timeout_s=10)
        runner = Runner(
            pipeline.engine,
            source,
            stop=stop,
            max_events=batch,
            max_wait_s=0.5,
            observers=pipeline.observers,
            metrics=pipeline.metrics,
            read_ahead=args.read_ahead,
        )
        thread = threading.Thread(target=runner.run, name="bench-runner", daemon=True)
        thread.start()
        deadline = time.monotonic() + max(120.0, args.events / 200)
        while runner.stats.events < args.events and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        stop.request("bench done")
        thread.join(30)
        source.close()
        pipeline.close()
        with open_registry(registry_url) as registry:
            registered = registry.stats().datasets
        stats = runner.stats
        elapsed = (stats.last_ack_at or 0.0) - (stats.first_batch_at or 0.0)
        rate = stats.flowing_rate
        outcomes = {outcome.value: count for outcome, count in stats.outcomes.items()}
        _progress(f"batch {batch}: {stats.events} events in {elapsed:.2f} s = {rate:,.0f} events/s")
        return {
            "batch": batch,
            "read_ahead": args.read_ahead,
            "events": stats.events,
            "batches": stats.batches,
            "seconds": round(elapsed, 3),
            "events_per_s": round(rate, 1),
            "registered_in_registry": registered,
            "outcomes": outcomes,
            "stage_seconds": {name: round(value, 3) for name, value in sorted(stats.stage_s.items())},
            "poll_and_wait_seconds": round(max(elapsed - stats.busy_s, 0.0), 3),
            "produce_seconds": round(produce_s, 3),
        }
    finally:
        if not args.keep:
            admin.delete_topics([topic, dead_letters, f"{dead_letters}.retry"], operation_timeout=30)
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for each batch size and print the JSON document."""
    from ingestd.log import LoggingSettings, configure_logging

    configure_logging(LoggingSettings(level="WARNING"), service="bench")
    batches = [int(part) for part in str(args.batch).split(",") if part.strip()]
    runs = [_one_run(args, batch) for batch in batches]
    best = max((r["events_per_s"] for r in runs), default=0.0)
    document = {
        "benchmark": "ingest end to end (Kafka -> decode -> registry -> offset commit)",
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "best_events_per_s": best,
        "meets_target": best >= TARGET_EVENTS_PER_S,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "kafka": args.kafka,
        "postgres": args.postgres.split("@")[-1],
    }
    print(json.dumps(document, separators=(",", ":")) if args.json else json.dumps(document, indent=2))
    return 0
