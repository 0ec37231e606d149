"""The local broker restarted under a running daemon: it carries on without an outside restart.

What the chaos suite used to need a restart of the daemon for (``restart_kafka_local``):
after a broker restart the daemon was assigned its partitions again and then consumed
nothing, ``/healthz`` and ``/readyz`` both 200. ``py-spy`` showed why: the loop was
inside a synchronous offset commit whose reply never came (librdkafka waits for it
without a bound), so it never polled again. The source now gives a commit a deadline
and replaces a consumer wedged in one; liveness follows progress, not the loop.

The real engine and runner (``build_pipeline``, :class:`KafkaGroupSource`,
:class:`Runner`) run in-process against a private single-node broker and a fresh
registry database, as ``ingestd run`` wires them. Checked each time: every event is
registered exactly once and every offset committed within a bounded time, by the same
runner (never restarted), and readiness carries no ``stalled`` reason at the end.

* a commit held until the broker is killed, so it backs off for longer than the
  session timeout: the partitions are lost and reassigned (now and then the commit
  itself is left unanswered, and the consumer is replaced instead);
* the broker frozen (SIGSTOP) while a commit is in flight, so the commit gets no
  answer: the consumer is replaced, deterministically;
* the broker restarted (SIGTERM) four times while events flow, as in the chaos suite
  (a longer variant, six restarts, left the runner hung before the fix).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from butler_registry import open_registry
from deploy.local import private_kafka
from deploy.local.kafka_node import KafkaNode
from ingestd.engine import Runner, StopToken
from ingestd.engine._assembly import build_pipeline, subscription, wait_for_topics
from ingestd.kafka import KafkaConnection, make_producer
from ingestd.sources import KafkaGroupSource, RawRecord
from ingestd.work import Outcome
from monitoring.http_server import HealthState

from .events import SAMPLES, synthetic_datasets
from .harness import IngestSetup, make_setup
from .kafka_helpers import committed_offsets, produce
from .processes import dataset_count

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

SESSION_TIMEOUT_S = 6.0
COMMIT_TIMEOUT_S = 8.0
OUTAGE_S = 15.0
"""Longer than the session timeout: the consumer's partitions are lost while the broker is away."""
RECOVERY_S = 90.0


@pytest.fixture
def broker() -> Iterator[KafkaNode]:
    """A single-node Kafka cluster of this test alone (the facility's local cluster), which it restarts."""
    with private_kafka("daemon-restart") as node:
        yield node


def _start(node: KafkaNode) -> None:
    node.start()
    node.wait_ready()


class HeldCommitSource(KafkaGroupSource):
    """The real group source, whose next offset commit can be held at a gate by the test.

    Only the timing is controlled: the commit itself is the real one, against the
    real broker, so it fails for real when the broker is gone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = threading.Event()
        self.reached = threading.Event()
        self.release = threading.Event()

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        if self.armed.is_set():
            self.armed.clear()
            self.reached.set()
            self.release.wait(60)
        super().acknowledge(records)


class RunningDaemon:
    """The daemon's engine and runner in a thread, as ``ingestd run`` wires them."""

    def __init__(self, ingest: IngestSetup) -> None:
        self.settings = ingest.settings(
            consumer={"session_timeout_s": SESSION_TIMEOUT_S},
            batching={"max_events": 100, "max_wait_s": 0.3},
            retry={"initial_backoff_s": 0.5, "max_backoff_s": 2},
            dead_letters={"delivery_timeout_s": 5},
            http={"enabled": False},
        )
        self.stop = StopToken(20)
        self.health = HealthState(liveness_timeout_s=60)
        self.pipeline = build_pipeline(self.settings, stop=self.stop, health=self.health, opensearch=False)
        wait_for_topics(self.settings, self.pipeline.engine.retrier)
        assert self.settings.kafka is not None
        self.source = HeldCommitSource(
            self.settings.kafka,
            self.settings.consumer.group_id,
            subscription(self.settings),
            retry_topic=self.settings.dead_letters.retry_topic_name,
            session_timeout_s=SESSION_TIMEOUT_S,
            commit_timeout_s=COMMIT_TIMEOUT_S,
        )
        self.runner = Runner(
            self.pipeline.engine,
            self.source,
            stop=self.stop,
            max_events=100,
            max_wait_s=0.3,
            observers=self.pipeline.observers,
            health=self.health,
            metrics=self.pipeline.metrics,
            retry_topic=self.settings.dead_letters.retry_topic_name,
            pending=self.pipeline.pending,
            stall_limit_s=30.0,
        )
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="daemon-under-test", daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as error:
            self.error = error
            raise

    def start(self) -> RunningDaemon:
        self._thread.start()
        return self

    def assert_running(self) -> None:
        assert self._thread.is_alive(), f"the runner stopped: {self.error!r}"

    def close(self) -> None:
        self.stop.request("test done")
        self._thread.join(30)
        self.source.close()
        self.pipeline.close(timeout_s=10)
        assert not self._thread.is_alive(), "the runner did not stop"


def _runner_stack(daemon: RunningDaemon) -> str:
    """Where the runner thread is now (what it waits on when it does not progress)."""
    import sys
    import traceback

    frame = sys._current_frames().get(daemon._thread.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(runner not running)"


def _committed_total(ingest: IngestSetup) -> int:
    return sum(max(o, 0) for o in committed_offsets(ingest.kafka, ingest.group, ingest.topic).values())


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, daemon: RunningDaemon) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        daemon.assert_running()
        try:
            if condition():
                return
        except Exception:  # the broker may still be electing leaders or loading the group
            pass
        time.sleep(0.25)
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what}; runner stats {daemon.runner.stats.as_dict()}, "
        f"assignment {daemon.source.assignment}, readiness {daemon.health.ready()[1]}; runner at:\n"
        f"{_runner_stack(daemon)}"
    )


def _setup(broker: KafkaNode, unique_name: Callable[[str], str], registry_url: str, tmp: Path) -> IngestSetup:
    kafka = KafkaConnection(bootstrap_servers=f"127.0.0.1:{broker.port}")
    ingest = make_setup(kafka, unique_name, registry_url, tmp)
    with open_registry(registry_url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    return ingest


def _daemon_at_a_held_commit(ingest: IngestSetup, events: list[bytes]) -> RunningDaemon:
    """A running daemon that committed ``events[:300]`` and holds the commit of ``events[300:600]``."""
    produce(ingest.kafka, ingest.topic, events[:300])
    daemon = RunningDaemon(ingest).start()
    try:
        _wait(lambda: _committed_total(ingest) == 300, 60, "the first 300 committed", daemon)
        daemon.source.armed.set()
        produce(ingest.kafka, ingest.topic, events[300:600])
        assert daemon.source.reached.wait(30), "no further batch reached its commit"
    except BaseException:
        daemon.close()
        raise
    return daemon


def _finish(ingest: IngestSetup, daemon: RunningDaemon, rest: list[bytes], registry_url: str) -> None:
    """Send ``rest``; every event registered once and every offset committed, with no stall reported."""
    produce(ingest.kafka, ingest.topic, rest)
    _wait(lambda: dataset_count(registry_url) == 900, RECOVERY_S, "all 900 registered", daemon)
    _wait(lambda: _committed_total(ingest) == 900, 60, "every offset committed", daemon)
    assert "stalled" not in daemon.health.ready()[1]["not_ready"]


def test_partitions_lost_during_a_commit_backoff(
    broker: KafkaNode, postgres_database: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Broker killed while a commit is held: the commit backs off past the session timeout, partitions
    are lost and reassigned, and the same runner registers everything exactly once afterwards."""
    ingest = _setup(broker, unique_name, postgres_database, tmp_path)
    events = [d.event() for d in synthetic_datasets(900, seed=ingest.topic)]
    daemon = _daemon_at_a_held_commit(ingest, events)
    try:
        broker.kill()
        daemon.source.release.set()
        time.sleep(OUTAGE_S)
        _start(broker)
        _finish(ingest, daemon, events[600:], postgres_database)
    finally:
        daemon.close()
    assert dataset_count(postgres_database) == 900


def test_broker_frozen_during_a_commit(
    broker: KafkaNode, postgres_database: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Broker frozen while a commit is in flight: no answer within the deadline, the consumer is replaced
    (the old one retired), and the new member re-reads the uncommitted batch (``already_present``)."""
    ingest = _setup(broker, unique_name, postgres_database, tmp_path)
    events = [d.event() for d in synthetic_datasets(900, seed=ingest.topic)]
    daemon = _daemon_at_a_held_commit(ingest, events)
    try:
        broker.send_signal(signal.SIGSTOP)
        try:
            daemon.source.release.set()
            _wait(
                lambda: daemon.source.replacements >= 1, 3 * COMMIT_TIMEOUT_S, "the consumer replaced", daemon
            )
        finally:
            broker.send_signal(signal.SIGCONT)
        _finish(ingest, daemon, events[600:], postgres_database)
        assert daemon.runner.stats.outcomes[Outcome.already_present] > 0  # the batch was read again
    finally:
        daemon.close()
    assert dataset_count(postgres_database) == 900


class Feed(threading.Thread):
    """Produce events at a steady rate (the mirror's output) until all are sent."""

    def __init__(self, kafka: KafkaConnection, topic: str, events: list[bytes], per_s: float) -> None:
        super().__init__(name="feed", daemon=True)
        self.kafka, self.topic, self.events, self.per_s = kafka, topic, events, per_s
        self.sent = 0

    def run(self) -> None:
        producer = make_producer(self.kafka)
        for event in self.events:
            while True:
                try:
                    producer.produce(self.topic, event)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            self.sent += 1
            time.sleep(1 / self.per_s)
        while producer.flush(5):
            pass


def test_broker_restarted_repeatedly_while_events_flow(
    broker: KafkaNode, postgres_database: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Four SIGTERM restarts of the broker, 1-3 s down each, while events arrive at 150/s."""
    ingest = _setup(broker, unique_name, postgres_database, tmp_path)
    total = 4_000
    events = [d.event() for d in synthetic_datasets(total, seed=ingest.topic)]
    daemon = RunningDaemon(ingest).start()
    feed = Feed(ingest.kafka, ingest.topic, events, per_s=150.0)
    feed.start()
    rng = random.Random(5)
    try:
        for _ in range(4):
            time.sleep(rng.uniform(2.0, 4.0))
            daemon.assert_running()
            broker.stop()
            time.sleep(rng.uniform(1.0, 3.0))
            _start(broker)
        feed.join(120)
        assert feed.sent == total
        _wait(
            lambda: dataset_count(postgres_database) == total, RECOVERY_S, f"all {total} registered", daemon
        )
        _wait(lambda: _committed_total(ingest) == total, 60, "every offset committed", daemon)
        assert "stalled" not in daemon.health.ready()[1]["not_ready"]
    finally:
        daemon.close()
    assert dataset_count(postgres_database) == total
