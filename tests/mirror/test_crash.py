"""Crash and rebalance tests: ``ingestd mirror`` processes killed, paused and joined while records flow.

Sizes: the CI default is small enough for a couple of minutes; the acceptance
size runs with ``INGESTD_TEST_MIRROR_CRASH_RECORDS=100000`` (and optionally
``INGESTD_TEST_MIRROR_CRASH_KILLS``, ``INGESTD_TEST_MIRROR_CRASH_SEED``).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.kafka import KafkaConnection, make_producer

from ._support import (
    MirrorProcess,
    assert_exactly_once,
    create_topic,
    produce,
    read_all,
    settings_for,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CRASH_RECORDS = int(os.environ.get("INGESTD_TEST_MIRROR_CRASH_RECORDS", "20000"))
CRASH_KILLS = int(os.environ.get("INGESTD_TEST_MIRROR_CRASH_KILLS", "5"))
CRASH_SEED = int(
    os.environ.get("INGESTD_TEST_MIRROR_CRASH_SEED", str(random.SystemRandom().randrange(10**6)))
)


def _alias(unique_name: Callable[[str], str]) -> str:
    return unique_name("a").rsplit(".", 1)[1]


class PacedProducer(threading.Thread):
    """Produce ``total`` known records in ``chunks`` over about ``duration_s`` seconds, in the background."""

    def __init__(
        self, connection: KafkaConnection, topic: str, total: int, partitions: int, duration_s: float
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.connection, self.topic, self.total = connection, topic, total
        self.partitions, self.duration_s = partitions, duration_s
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = make_producer(self.connection)
            chunks = 40
            per_chunk = -(-self.total // chunks)
            for start in range(0, self.total, per_chunk):
                produce(
                    self.connection,
                    self.topic,
                    min(per_chunk, self.total - start),
                    partitions=self.partitions,
                    start=start,
                    producer=producer,
                )
                producer.flush(60)
                time.sleep(self.duration_s / chunks)
            assert producer.flush(60) == 0
        except BaseException as error:  # reported by the test
            self.error = error

    def finish(self) -> None:
        self.join(300)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


def test_kill_9_at_random_moments(
    kafka_central: KafkaConnection,
    kafka_local: KafkaConnection,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """SIGKILL the mirror at random moments while records flow: the target still holds each exactly once."""
    rng = random.Random(CRASH_SEED)
    print(f"crash test: {CRASH_RECORDS} records, {CRASH_KILLS} kills, seed {CRASH_SEED}")
    topic = unique_name("crash")
    create_topic(kafka_central, topic, partitions=3)
    alias = "k" + _alias(unique_name)
    settings = settings_for(
        kafka_central,
        kafka_local,
        alias=alias,
        selection={"topics": [topic]},
        # Small transactions: the mirror spends its time inside them, and a backlog builds up, so
        # the kills find it busy with records in flight.
        batch_max_records=100,
    )
    config = write_config(tmp_path / "mirror.yaml", settings)
    producer = PacedProducer(kafka_central, topic, CRASH_RECORDS, partitions=3, duration_s=0.6 * CRASH_KILLS)
    producer.start()
    mirror = MirrorProcess(config, tmp_path / "mirror-0.log").start()
    try:
        for kill in range(1, CRASH_KILLS + 1):
            # A random moment once the process mirrors.
            wait_until(lambda m=mirror: "mirror.partition_started" in m.log_text(), 60, "no start")
            time.sleep(rng.uniform(0.1, 1.5))
            assert mirror.alive(), mirror.log_text()[-3000:]
            mirror.kill()
            mirror = MirrorProcess(config, tmp_path / f"mirror-{kill}.log").start()
        producer.finish()
        target = read_all(kafka_local, topic, expected=CRASH_RECORDS, timeout_s=180)
    finally:
        exit_code = mirror.stop()
    assert exit_code == 0, mirror.log_text()[-3000:]
    source = read_all(kafka_central, topic, expected=CRASH_RECORDS)
    assert len(source) == CRASH_RECORDS
    assert_exactly_once(source, target, source_alias=alias, target_topic=topic)
    # Evidence that kills hit open transactions: their records are in the log, aborted, invisible above.
    everything = read_all(kafka_local, topic, expected=CRASH_RECORDS, read_committed=False)
    print(f"records of aborted transactions in the target log: {len(everything) - CRASH_RECORDS}")


def test_two_instances_rebalance_and_a_paused_zombie(
    kafka_central: KafkaConnection,
    kafka_local: KafkaConnection,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """Two instances share the partitions; one is frozen past the session timeout and comes back.

    While instance A is stopped (SIGSTOP), B takes all partitions. When A resumes
    it still believes it owns its old partitions and may hold records and an open
    transaction for them: the group coordinator refuses its offset commit (stale
    generation) and A's transaction aborts. Then B leaves and A takes everything.
    """
    total = 12_000
    topic = unique_name("rebalance")
    create_topic(kafka_central, topic, partitions=6)
    alias = "z" + _alias(unique_name)
    configs = {
        name: write_config(
            tmp_path / f"{name}.yaml",
            settings_for(
                kafka_central,
                kafka_local,
                alias=alias,
                instance=name,
                selection={"topics": [topic]},
                batch_max_records=200,
            ),
        )
        for name in ("a", "b")
    }
    producer = PacedProducer(kafka_central, topic, total, partitions=6, duration_s=20)
    producer.start()
    a = MirrorProcess(configs["a"], tmp_path / "a.log").start()
    b: MirrorProcess | None = None
    try:
        wait_until(lambda: "mirror.partition_started" in a.log_text(), 30, "A never started a partition")
        time.sleep(2)
        b = MirrorProcess(configs["b"], tmp_path / "b.log").start()
        wait_until(lambda: "mirror.partition_started" in b.log_text(), 30, "B never got partitions")
        time.sleep(2)

        assert a.process is not None
        a.signal(signal.SIGSTOP)
        time.sleep(6 + 4)  # session timeout (6 s) and the rebalance
        a.signal(signal.SIGCONT)
        time.sleep(5)
        assert b.stop() == 0, b.log_text()[-3000:]

        producer.finish()
        target = read_all(kafka_local, topic, expected=total, timeout_s=120)
        assert a.alive(), a.log_text()[-3000:]
    finally:
        if a.process is not None and a.alive():
            a.signal(signal.SIGCONT)
        exit_code = a.stop()
        if b is not None and b.alive():
            b.stop()
    assert exit_code == 0, a.log_text()[-3000:]
    source = read_all(kafka_central, topic, expected=total)
    assert len(source) == total
    assert_exactly_once(source, target, source_alias=alias, target_topic=topic)
    # The pause cost A its partitions (B took them), and A got them back once B left.
    assert a.log_text().count('"mirror.partitions_revoked"') >= 1
    assert b.log_text().count('"mirror.partition_started"') >= 6
