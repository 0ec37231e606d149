"""Hostile input: well over a thousand malformed events while the daemon runs; it never dies, each one is
dead-lettered with its reason, and the good events between them are registered.

The daemon (``ingestd run``, a real process, file verification on) consumes one
topic on the local Kafka and registers into a fresh PostgreSQL registry holding the
run's dimension records. The corpus (``_corpus.py``) mixes hand-written cases —
truncated, wrong types, huge, path traversal, unknown RSE, bad UTF-8, sidecars and
files that do not match the payload, missing kinds, garbage dimension and zip files —
with hypothesis-drawn variants of each malformation; good events (real-format data
products whose files exist) are interleaved. Conflicting events (an id or data ID
already registered under other content) go in a second burst, once the datasets they
contradict are registered.

Checked: the process stays alive and ``/healthz`` answers throughout; every bad
event's key appears in the dead-letter topic with non-empty ``ingestd.error_class``
and ``ingestd.reason`` headers (and the expected class where one is certain); no
good event is dead-lettered; every good dataset is in the registry.

``INGESTD_TEST_HOSTILE_PER_STRATEGY`` sets the hypothesis examples per malformation
(default 100: ~1,200 bad events in all).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import yaml
from confluent_kafka import TopicPartition

from butler_registry import open_registry
from ingestd.e2e import Campaign, GeneratedEvent, ServiceProcess, free_port, site_map_for
from ingestd.e2e._processes import ingestd_argv
from ingestd.kafka import KafkaConnection, ensure_topics, make_admin, make_consumer, make_producer
from ingestd.work import ButlerKind

from ._corpus import Corpus, conflicts, encode, envelope, generated, hand_written

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

H_ERROR_CLASS = "ingestd.error_class"
H_REASON = "ingestd.reason"


@dataclass
class HostileDaemon:
    """The daemon process of the test, its topics, registry and storage."""

    process: ServiceProcess
    kafka: KafkaConnection
    topic: str
    dead_letters: str
    registry_url: str
    storage: Path
    rucio_prefix: str
    deaths: list[str] = field(default_factory=list)
    health_failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> threading.Thread:
        """Check the process is alive and /healthz answers, every 200 ms, until :meth:`unwatch`."""

        def run() -> None:
            while not self._stop.wait(0.2):
                if not self.process.alive():
                    self.deaths.append(self.process.tail(30))
                    return
                try:
                    status, _ = self.process.get("/healthz", timeout_s=5.0)
                except OSError:
                    status = 0
                if status != 200:
                    self.health_failures += 1

        thread = threading.Thread(target=run, name="hostile-watch", daemon=True)
        thread.start()
        return thread

    def unwatch(self) -> None:
        self._stop.set()

    def registered_ids(self) -> set[str]:
        with psycopg.connect(
            self.registry_url.replace("postgresql+psycopg://", "postgresql://")
        ) as connection:
            return {str(row[0]) for row in connection.execute("SELECT id FROM dataset")}


@pytest.fixture
def hostile_daemon(
    kafka_local: KafkaConnection, unique_name: Callable[[str], str], postgres_database: str, tmp_path: Path
) -> Iterator[tuple[HostileDaemon, Campaign]]:
    """A running ``ingestd run`` on a fresh topic and registry, with a campaign's records and files."""
    prefix = unique_name("hostile").replace("_", "-")
    storage = tmp_path / "storage"
    campaign = Campaign(storage=storage, events=400, seed=7, tag=uuid.uuid4().hex[:8], detectors=20)
    campaign.write_bootstrap_export(tmp_path / "bootstrap.yaml")
    registry = open_registry(postgres_database, create=True)
    try:
        registry.import_dimensions(tmp_path / "bootstrap.yaml")
    finally:
        registry.close()
    site = site_map_for(prefix, storage)
    topic = f"{prefix}.IN2P3_BUTLER_DISK-dp2_prep"
    ensure_topics(make_admin(kafka_local), [topic], partitions=3, config={"max.message.bytes": "20000000"})
    dead_letters = f"{prefix}.dead-letters"
    port = free_port()
    config = {
        "kafka": {"bootstrap_servers": kafka_local.bootstrap_servers, "client_id": "hostile"},
        "consumer": {
            "group_id": f"{prefix}.group",
            "topics": [topic],
            "source_aliases": [],
            "session_timeout_s": 6,
        },
        "site": site.model_dump(mode="json"),
        "planning": {"facility": "FrDF"},
        "registry": {"url": postgres_database},
        "dead_letters": {
            "topic": dead_letters,
            "park_delay_s": 0.5,
            "park_delay_max_s": 1,
            "park_max_age_s": 2,
        },
        "verification": {"enabled": True, "checksum": True, "not_visible_timeout_s": 0},
        "batching": {"max_events": 300, "max_wait_s": 0.2},
        "retry": {"initial_backoff_s": 0.2, "max_backoff_s": 2},
        "http": {"host": "127.0.0.1", "port": port},
        "logging": {"format": "json", "level": "WARNING"},
    }
    (tmp_path / "daemon.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("INGESTD_") or k.startswith("INGESTD_TEST")
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    process = ServiceProcess(
        "daemon", ingestd_argv("run", "--config", str(tmp_path / "daemon.yaml")), tmp_path, env, port
    )
    process.start()
    process.wait_ready(90)
    rse = campaign.rse("IN2P3_BUTLER_DISK")
    daemon = HostileDaemon(
        process, kafka_local, topic, dead_letters, postgres_database, storage, rse.rucio_prefix
    )
    try:
        yield daemon, campaign
    finally:
        daemon.unwatch()
        process.stop(30)
        admin = make_admin(kafka_local)
        doomed = [name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)]
        if doomed:
            for future in admin.delete_topics(doomed, operation_timeout=30).values():
                future.exception(30)


def _produce(kafka: KafkaConnection, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(kafka, overrides={"message.max.bytes": 20_000_000, "linger.ms": 5})
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]


def _dead_letters(
    kafka: KafkaConnection, topic: str, wanted: set[bytes], timeout_s: float
) -> dict[bytes, list[dict[str, str]]]:
    """Dead letters by key (each with its headers), read until every wanted key was seen or time ran out."""
    consumer = make_consumer(kafka, None)
    found: dict[bytes, list[dict[str, str]]] = {}
    try:
        deadline = time.monotonic() + timeout_s
        assigned = False
        while time.monotonic() < deadline and not wanted <= set(found):
            if not assigned:
                metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if metadata is None or not metadata.partitions:
                    time.sleep(0.5)
                    continue
                consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
                assigned = True
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                raw = message.headers() or []
                items = raw.items() if isinstance(raw, dict) else raw
                headers = {
                    name: value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
                    for name, value in items
                }
                found.setdefault(message.key() or b"", []).append(headers)
    finally:
        consumer.close()
    return found


def _good_events(campaign: Campaign) -> list[GeneratedEvent]:
    return [e for e in campaign.events_iter() if e.facility == "FrDF" and e.kind is ButlerKind.data_product]


def _garbage_files(daemon: HostileDaemon) -> dict[str, str]:
    folder = daemon.storage / "IN2P3_BUTLER_DISK" / "dp2_prep" / "hostile"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.yaml").write_text("description: [unterminated\n: : :\n")
    (folder / "garbage.zip").write_bytes(b"PK\x03\x04 this is no zip at all" * 10)
    return {
        "garbage_yaml": f"{daemon.rucio_prefix}dp2_prep/hostile/garbage.yaml",
        "garbage_zip": f"{daemon.rucio_prefix}dp2_prep/hostile/garbage.zip",
    }


def test_malformed_events_are_dead_lettered_and_the_daemon_survives(
    hostile_daemon: tuple[HostileDaemon, Campaign],
) -> None:
    daemon, campaign = hostile_daemon
    per_strategy = int(os.environ.get("INGESTD_TEST_HOSTILE_PER_STRATEGY", "100"))
    good = _good_events(campaign)
    corpus = Corpus()
    hand_written(corpus, good, _garbage_files(daemon))
    generated(corpus, good[0].payload, per_strategy)
    first_burst = list(corpus.events)
    assert len(first_burst) >= 1000, f"only {len(first_burst)} malformed events generated"

    interleaved = good[22:]
    records: list[tuple[bytes, bytes]] = [(bad.key, bad.value) for bad in first_burst]
    records += [(f"good-{e.index}".encode(), encode(envelope(e.payload))) for e in interleaved]
    random.Random(11).shuffle(records)

    watcher = daemon.watch()
    for start in range(0, len(records), 250):  # bursts, the daemon busy all along
        _produce(daemon.kafka, daemon.topic, records[start : start + 250])
        assert not daemon.deaths, f"the daemon died:\n{daemon.deaths[0]}"

    expected_good = {str(e.dataset_ids[0]) for e in interleaved}
    deadline = time.monotonic() + 120
    while not expected_good <= daemon.registered_ids():
        assert not daemon.deaths, f"the daemon died:\n{daemon.deaths[0]}"
        assert time.monotonic() < deadline, "good events interleaved with bad ones were not all registered"
        time.sleep(0.5)

    conflicts(corpus, interleaved)
    second_burst = corpus.events[len(first_burst) :]
    _produce(daemon.kafka, daemon.topic, [(bad.key, bad.value) for bad in second_burst])

    found = _dead_letters(
        daemon.kafka, daemon.dead_letters, {bad.key for bad in corpus.events}, timeout_s=120
    )
    daemon.unwatch()
    watcher.join(5)
    assert not daemon.deaths, f"the daemon died:\n{daemon.deaths[0]}"
    assert daemon.process.alive()
    assert daemon.health_failures == 0, f"/healthz failed {daemon.health_failures} times"

    missing = [bad for bad in corpus.events if bad.key not in found]
    assert not missing, f"{len(missing)} malformed events never dead-lettered, e.g. " + ", ".join(
        f"{bad.category}:{bad.value[:120]!r}" for bad in missing[:5]
    )
    wrong: list[str] = []
    classes: Counter[str] = Counter()
    for bad in corpus.events:
        headers = found[bad.key][0]
        error_class, reason = headers.get(H_ERROR_CLASS, ""), headers.get(H_REASON, "")
        classes[error_class] += 1
        if not error_class or not reason:
            wrong.append(f"{bad.category}: no error class or reason ({headers})")
        elif bad.expected is not None and error_class not in bad.expected:
            wrong.append(
                f"{bad.category}: {error_class} ({reason[:150]}), expected one of {sorted(bad.expected)}"
            )
    assert not wrong, f"{len(wrong)} dead letters with a wrong or missing reason:\n  " + "\n  ".join(
        wrong[:15]
    )

    good_dead = [key for key in found if key.startswith(b"good-")]
    assert not good_dead, f"good events dead-lettered: {good_dead[:5]}"
    assert expected_good <= daemon.registered_ids()
    print(f"hostile: {len(corpus.events)} malformed events dead-lettered by class {dict(classes)}")
