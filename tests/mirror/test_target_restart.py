"""The target (facility) broker restarted under a running mirror: recovery without an outside restart.

What the chaos suite used to need a supervisor restart for (librdkafka#5456: a
transactional call waiting forever for a coordinator that went away with the
broker; or timeouts on a coordinator connection that never recovers). Here a
private single-node target cluster is restarted several times -- SIGTERM, a
``kill -9`` and one outage longer than the stall limit -- while records are
produced to the source and ``ingestd mirror`` runs as a process. Checked:

* exactly-once: a ``read_committed`` reader of the target sees every source record
  once (:func:`assert_exactly_once`);
* the process recovered by itself: it never exited and was never restarted by the test;
* ``/healthz`` failed (503) during the long outage, when records waited and nothing could
  be committed for longer than the stall limit, ``/readyz`` named the stall, and both were
  200 again once mirroring resumed.

The source is the shared central cluster (only read and written, never restarted).
The CI size (two restarts, one kill -9) runs in about a minute and a half; the
``slow`` variant restarts the broker five times with more records.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploy.local import private_kafka
from deploy.local._base import free_port
from deploy.local.kafka_node import KafkaNode
from ingestd.kafka import KafkaConnection, make_producer

from ._support import (
    MirrorProcess,
    assert_exactly_once,
    committed_positions,
    create_topic,
    produce,
    read_all,
    settings_for,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 3
CALL_TIMEOUT_S = 5.0
STALL_LIMIT_S = 15.0


@pytest.fixture(scope="module")
def private_target() -> Iterator[KafkaNode]:
    """A single-node Kafka cluster of this module alone: the facility's cluster, which the tests restart."""
    with private_kafka("mirror-target") as node:
        yield node


def _restart(node: KafkaNode, *, down_s: float, kill: bool) -> None:
    """Stop the node (SIGTERM, or SIGKILL to its process group), keep it down ``down_s``, start it again."""
    if kill:
        node.kill()
    else:
        node.stop()
    time.sleep(down_s)
    node.start()
    node.wait_ready()


@dataclass
class HealthWatch:
    """Probe ``/healthz`` and ``/readyz`` twice a second in the background; keep what was seen."""

    port: int
    healthz: list[tuple[float, int]] = field(default_factory=list)
    stalled_reasons: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        except OSError:
            return 0, {}

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            status, _ = self._get("/healthz")
            self.healthz.append((time.monotonic(), status))
            _, ready = self._get("/readyz")
            reason = ready.get("not_ready", {}).get("stalled")
            if reason:
                self.stalled_reasons.append(reason)

    def __enter__(self) -> HealthWatch:
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def status_now(self) -> int:
        return self._get("/healthz")[0]


class Feed(threading.Thread):
    """Produce known records to the source in small chunks until told to stop; remembers how many."""

    def __init__(self, connection: KafkaConnection, topic: str, per_chunk: int, pause_s: float) -> None:
        super().__init__(name="feed", daemon=True)
        self.connection, self.topic, self.per_chunk, self.pause_s = connection, topic, per_chunk, pause_s
        self.produced = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            producer = make_producer(self.connection)
            while not self._halt.is_set():
                produce(
                    self.connection,
                    self.topic,
                    self.per_chunk,
                    partitions=PARTITIONS,
                    start=self.produced,
                    producer=producer,
                )
                assert producer.flush(60) == 0
                self.produced += self.per_chunk
                self._halt.wait(self.pause_s)
        except BaseException as error:  # reported by the test
            self.error = error

    def finish(self) -> int:
        self._halt.set()
        self.join(120)
        assert not self.is_alive(), "the feed did not stop"
        assert self.error is None, self.error
        return self.produced


def _mirrored(target: KafkaConnection, group: str, topic: str) -> int:
    """Source records the mirror committed so far (sum of stored positions; -1001 counts as 0)."""
    try:
        positions = committed_positions(target, group, topic, PARTITIONS)
    except Exception:  # the target may be down
        return -1
    return sum(max(offset, 0) for offset in positions.values())


def _run(
    private_target: KafkaNode,
    kafka_central: KafkaConnection,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    restarts: list[tuple[float, bool]],
) -> None:
    """Mirror while the target restarts as in ``restarts`` ((seconds down, kill -9?)...), then check."""
    target = KafkaConnection(bootstrap_servers=f"127.0.0.1:{private_target.port}", client_id="restart-test")
    topic = unique_name("tgtrestart")
    alias = "tr" + unique_name("a").rsplit(".", 1)[1]
    group = f"ingestd-mirror.{alias}"
    create_topic(kafka_central, topic, partitions=PARTITIONS)
    http_port = free_port()
    settings = settings_for(
        kafka_central,
        target,
        alias=alias,
        selection={"topics": [topic]},
        http_port=http_port,
        transaction_call_timeout_s=CALL_TIMEOUT_S,
        stall_limit_s=STALL_LIMIT_S,
        transaction_timeout_ms=10_000,
    )
    mirror = MirrorProcess(write_config(tmp_path / "mirror.yaml", settings), tmp_path / "mirror.log").start()
    feed = Feed(kafka_central, topic, per_chunk=60, pause_s=0.2)
    stall_expected = any(down_s > STALL_LIMIT_S for down_s, _ in restarts)
    try:
        with HealthWatch(http_port) as health:
            feed.start()
            for down_s, kill in restarts:
                before = max(_mirrored(target, group, topic), 0)
                wait_until(
                    lambda before=before: _mirrored(target, group, topic) > before + 200,
                    90,
                    f"the mirror to make progress before the next restart; log:\n{mirror.log_text()[-3000:]}",
                )
                _restart(private_target, down_s=down_s, kill=kill)
                assert mirror.alive(), f"the mirror exited:\n{mirror.log_text()[-3000:]}"
            produced = feed.finish()
            wait_until(
                lambda: _mirrored(target, group, topic) >= produced,
                120,
                f"the mirror to catch up with {produced} records; log:\n{mirror.log_text()[-3000:]}",
            )
            wait_until(lambda: health.status_now() == 200, 30, "/healthz 200 again after recovery")
        assert mirror.alive(), f"the mirror exited:\n{mirror.log_text()[-3000:]}"
        source = read_all(kafka_central, topic, expected=produced)
        mirrored = read_all(target, topic, expected=produced, timeout_s=120)
        assert_exactly_once(source, mirrored, source_alias=alias, target_topic=topic)
        if stall_expected:
            unhealthy = [status for _, status in health.healthz if status == 503]
            assert unhealthy, "/healthz never failed although nothing could be committed past the stall limit"
            assert health.stalled_reasons, "/readyz never named the stall"
            assert "no transaction committed" in health.stalled_reasons[0]
        assert mirror.stop() == 0, mirror.log_text()[-3000:]
    finally:
        with contextlib.suppress(Exception):
            feed.finish()
        if mirror.alive():
            mirror.kill()
    log = mirror.log_text()
    assert '"mirror.fatal"' not in log


def test_target_broker_restarts_recovered_exactly_once(
    private_target: KafkaNode,
    kafka_central: KafkaConnection,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """CI size: a kill -9 with a short outage, then an outage longer than the stall limit."""
    _run(private_target, kafka_central, unique_name, tmp_path, [(2.0, True), (STALL_LIMIT_S + 8.0, False)])


@pytest.mark.slow
def test_target_broker_restarted_repeatedly(
    private_target: KafkaNode,
    kafka_central: KafkaConnection,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """Five restarts (three kill -9) with outages of 1 to 25 s."""
    _run(
        private_target,
        kafka_central,
        unique_name,
        tmp_path,
        [(1.0, True), (3.0, False), (STALL_LIMIT_S + 10.0, True), (0.5, False), (5.0, True)],
    )
