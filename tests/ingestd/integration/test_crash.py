"""Crash tests: the daemon process SIGKILLed and restarted; nothing lost, nothing registered twice.

* Random moments: events flow while ``python -m ingestd run`` is killed at random
  moments mid-stream (acceptance size: 10,000 events, 5 kills; about 45 s here;
  ``INGESTD_CRASH_EVENTS`` / ``INGESTD_CRASH_KILLS`` / ``INGESTD_CRASH_SEED`` change it).
* The narrowest window: killed after the registry committed a batch and before its
  offsets were committed (fault injection, see ``faults/``): the restarted daemon
  reads the batch again and finds every dataset already present.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence

import psycopg
import pytest
from confluent_kafka import TopicPartition

from butler_registry import open_registry
from ingestd.kafka import make_consumer

from .events import SAMPLES, SyntheticDataset, synthetic_datasets
from .harness import IngestSetup
from .kafka_helpers import committed_offsets, produce
from .processes import DaemonProcess, dataset_count, sql_url

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

EVENTS = int(os.environ.get("INGESTD_CRASH_EVENTS", "10000"))
KILLS = int(os.environ.get("INGESTD_CRASH_KILLS", "5"))
SEED = int(os.environ.get("INGESTD_CRASH_SEED", "4242"))


def _end_offsets(ingest: IngestSetup) -> dict[int, int]:
    consumer = make_consumer(ingest.kafka, None)
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(ingest.topic, p), timeout=10)[1]
            for p in range(3)
        }
    finally:
        consumer.close()


def _prepare(ingest: IngestSetup, count: int) -> tuple[list[SyntheticDataset], list[bytes], list[bytes]]:
    with open_registry(ingest.registry_url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    datasets = list(synthetic_datasets(count, seed=ingest.topic))
    return datasets, [d.event() for d in datasets], [d.dataset_id.bytes for d in datasets]


def _drain(ingest: IngestSetup, daemon: DaemonProcess, expected: int, timeout_s: float = 120) -> None:
    """Run ``daemon`` until the registry holds ``expected`` datasets and every offset is committed."""
    daemon.start()
    daemon.port()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if dataset_count(ingest.registry_url) >= expected and committed_offsets(
            ingest.kafka, ingest.group, ingest.topic
        ) == _end_offsets(ingest):
            break
        daemon.assert_running()
        time.sleep(0.25)
    assert daemon.terminate() == 0, daemon.tail()


def _assert_exactly(ingest: IngestSetup, datasets: Sequence[SyntheticDataset]) -> None:
    with psycopg.connect(sql_url(ingest.registry_url)) as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM dataset")}
        twice = conn.execute("SELECT id, count(*) FROM dataset GROUP BY id HAVING count(*) > 1").fetchall()
        same_data_id = conn.execute(
            "SELECT run_id, dataset_type_id, data_id_hash FROM dataset "
            "GROUP BY run_id, dataset_type_id, data_id_hash HAVING count(*) > 1"
        ).fetchall()
        files = conn.execute("SELECT count(*), count(DISTINCT dataset_id) FROM dataset_file").fetchone()
        total = conn.execute("SELECT count(*) FROM dataset").fetchone()
    assert not twice
    assert not same_data_id
    assert total == (len(datasets),)
    assert ids == {dataset.dataset_id for dataset in datasets}, (
        "the registry must hold exactly the events' datasets"
    )
    assert files == (len(datasets), len(datasets))


def test_sigkill_at_random_moments_loses_nothing_and_registers_nothing_twice(ingest: IngestSetup) -> None:
    rng = random.Random(SEED)
    datasets, events, keys = _prepare(ingest, EVENTS)

    # Events keep flowing while the daemon is killed: the producer feeds them in chunks.
    chunk = max(EVENTS // 40, 1)

    def producer() -> None:
        for start in range(0, EVENTS, chunk):
            produce(
                ingest.kafka, ingest.topic, events[start : start + chunk], keys=keys[start : start + chunk]
            )
            time.sleep(0.15)

    feeding = threading.Thread(target=producer, name="producer", daemon=True)
    # Small batches keep the daemon busy through many commits, so kills land mid-batch.
    daemon = DaemonProcess(
        ingest.write_config(batching={"max_events": 250, "max_wait_s": 0.2}), ingest.workdir
    )
    feeding.start()
    counts_at_kill = []
    try:
        for _ in range(KILLS):
            before = dataset_count(ingest.registry_url)
            daemon.start()
            daemon.port()
            deadline = time.monotonic() + 60
            while dataset_count(ingest.registry_url) <= before and time.monotonic() < deadline:
                daemon.assert_running()
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            daemon.kill()
            counts_at_kill.append(dataset_count(ingest.registry_url))
        feeding.join(180)
        assert not feeding.is_alive(), "producer did not finish"
        _drain(ingest, daemon, EVENTS)
    finally:
        daemon.stop_quietly()

    assert len(counts_at_kill) == KILLS
    assert counts_at_kill[0] > 0, f"kills were not mid-stream: {counts_at_kill}"
    assert counts_at_kill[-1] < EVENTS, f"kills were not mid-stream: {counts_at_kill}"
    _assert_exactly(ingest, datasets)
    log = daemon.log.read_text()
    assert log.count("=== start") == KILLS + 1
    assert "daemon_stopped" in log


def test_killed_between_registry_commit_and_offset_commit(ingest: IngestSetup) -> None:
    """The batch is registered but its offsets are not committed: the restart finds it all already present."""
    datasets, events, keys = _prepare(ingest, 600)
    produce(ingest.kafka, ingest.topic, events, keys=keys)
    config = ingest.write_config(batching={"max_events": 200, "max_wait_s": 0.5})
    crashing = DaemonProcess(
        config, ingest.workdir, name="crashing", faults=True, env={"INGESTD_FAULT_KILL_AT_ACK": "2"}
    )
    crashing.start()
    assert crashing.wait(90) == -9, crashing.tail()
    registered = dataset_count(ingest.registry_url)
    committed = sum(
        max(offset, 0) for offset in committed_offsets(ingest.kafka, ingest.group, ingest.topic).values()
    )
    assert registered > committed, (
        "the crash must fall after the registry commit and before the offset commit"
    )

    daemon = DaemonProcess(config, ingest.workdir)
    _drain(ingest, daemon, len(datasets))
    _assert_exactly(ingest, datasets)
    stopped = [line for line in daemon.log.read_text().splitlines() if "daemon_stopped" in line]
    assert stopped
    assert '"already_present": 0' not in stopped[-1], "re-read events must be reported already present"
