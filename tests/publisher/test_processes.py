"""``ingestd publish`` as real processes: killed with SIGKILL mid-flow, and two of them on one table.

Sizes (environment): ``INGESTD_TEST_PUBLISHER_CRASH_MESSAGES`` (default 20,000, the
acceptance size; it runs in well under a minute here) and
``INGESTD_TEST_PUBLISHER_CRASH_KILLS`` (default 6).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from ingestd.kafka import KafkaConnection
from ingestd.log import get_logger
from publisher import HEADER_MESSAGE_ID, HEADER_PUBLISHER

from .support import (
    RucioDatabase,
    TestTopics,
    events,
    publisher_command,
    publisher_env,
    read_topics,
    transfer_done,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

logger = get_logger(__name__)

RSES = ["IN2P3_BUTLER_DISK", "IN2P3_TAPE", "RAL_BUTLER_DISK", "LANCS_BUTLER_DISK", "CERN_DISK"]


def _payloads(count: int) -> list[dict[str, object]]:
    return [
        transfer_done(f"crash/f{i % (count // 2 or 1)}.fits", dst_rse=RSES[i % len(RSES)])
        for i in range(count)
    ]


def _wait_for(condition: object, timeout_s: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_and_deletes_nothing_undelivered(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics, tmp_path: Path
) -> None:
    total = int(os.environ.get("INGESTD_TEST_PUBLISHER_CRASH_MESSAGES", "20000"))
    kills_wanted = int(os.environ.get("INGESTD_TEST_PUBLISHER_CRASH_KILLS", "6"))
    seed = int(os.environ.get("INGESTD_TEST_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    rucio_db.rucio.add_messages(events(_payloads(total)))
    expected = rucio_db.message_ids()
    assert len(expected) == total

    env = publisher_env(
        database_url=rucio_db.url,
        kafka=kafka_central,
        site_map=test_topics.site_map,
        instance_id="crash",
        batch_size=250,
    )
    kills_mid_flow = 0
    runs = 0
    with open(tmp_path / "publisher.log", "ab") as log:
        while kills_mid_flow < kills_wanted:
            runs += 1
            assert runs <= 4 * kills_wanted, "publisher never got far enough to be killed mid-flow"
            moved_before = rucio_db.scalar("SELECT count(*) FROM messages_history")
            process = subprocess.Popen(publisher_command(), env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                # Kill at a random moment once rows flow: inside a claim, during delivery, at commit.
                _wait_for(
                    lambda before=moved_before: (
                        rucio_db.scalar("SELECT count(*) FROM messages_history") > before
                    ),
                    60,
                    "the publisher to move rows",
                )
                time.sleep(rng.uniform(0.0, 0.3))
            finally:
                process.kill()
                process.wait(timeout=30)
            left = rucio_db.scalar("SELECT count(*) FROM messages")
            if left == 0:
                break
            kills_mid_flow += 1
        final = subprocess.run(
            publisher_command("--drain"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
    assert final.returncode == 0, (tmp_path / "publisher.log").read_text()[-3000:]
    assert kills_mid_flow == kills_wanted, f"only {kills_mid_flow} kills hit a running flow (seed {seed})"

    assert rucio_db.scalar("SELECT count(*) FROM messages") == 0
    history = rucio_db.history_ids()
    assert len(history) == total
    assert set(history) == expected  # every row moved exactly once

    records = read_topics(kafka_central, test_topics.prefix, expected=total, timeout_s=120, settle_s=3.0)
    delivered = Counter(r.headers[HEADER_MESSAGE_ID].decode() for r in records)
    assert set(delivered) == expected  # every message reached Kafka (and nothing else did)
    duplicates = sum(delivered.values()) - len(delivered)
    logger.info(
        "crash_test_done",
        messages=total,
        kills_mid_flow=kills_mid_flow,
        runs=runs + 1,
        duplicates=duplicates,
        seed=seed,
    )
    # At-least-once: a kill between Kafka's confirmation and the commit re-sends at most one batch per kill.
    assert duplicates <= kills_mid_flow * 250


def test_two_publishers_on_one_table_deliver_each_row_once(
    rucio_db: RucioDatabase, kafka_central: KafkaConnection, test_topics: TestTopics, tmp_path: Path
) -> None:
    total = 8000
    rucio_db.rucio.add_messages(events(_payloads(total)))
    expected = rucio_db.message_ids()
    processes = []
    logs = []
    for instance in ("one", "two"):
        env = publisher_env(
            database_url=rucio_db.url,
            kafka=kafka_central,
            site_map=test_topics.site_map,
            instance_id=instance,
            batch_size=100,
        )
        log = open(tmp_path / f"{instance}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        processes.append(
            subprocess.Popen(publisher_command("--drain"), env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    try:
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for log in logs:
            log.close()
    assert codes == [0, 0], [(tmp_path / f"{i}.log").read_text()[-2000:] for i in ("one", "two")]

    assert rucio_db.scalar("SELECT count(*) FROM messages") == 0
    history = rucio_db.history_ids()
    assert sorted(history) == sorted(expected)
    records = read_topics(kafka_central, test_topics.prefix, expected=total, timeout_s=120, settle_s=3.0)
    delivered = Counter(r.headers[HEADER_MESSAGE_ID].decode() for r in records)
    assert set(delivered) == expected
    assert max(delivered.values()) == 1  # each row exactly once: no two publishers ever held the same row
    by_instance = Counter(r.headers[HEADER_PUBLISHER].decode() for r in records)
    assert set(by_instance) == {"one", "two"}, by_instance  # both really worked the table at once
