"""Liveness follows progress: an acknowledged batch, a truly idle turn or a back-off beats ``/healthz``.

No server: the engine runs on the embedded SQLite registry with the bundled demo
settings, and the source is a scripted in-memory one that says how many records
wait on it (as a consumer group's lag does). What is checked is the runner's own
logic: a loop that turns while records wait and nothing is returned (the daemon's
stall after a broker restart) stops beating liveness and, after ``stall_limit_s``,
reports ``stalled`` on readiness; an outage of the commit keeps liveness (the retrier
is doing its job: a supervisor must not restart the daemon for a broker or registry
outage) and reports the stall on readiness; progress ends the stall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from butler_registry import open_registry
from ingestd.config import IngestdSettings, load_settings
from ingestd.deadletter import FileDeadLetterWriter
from ingestd.engine import Engine, ParkingPolicy, Retrier, Runner, StopToken
from ingestd.engine._assembly import make_planner, make_rules, make_verifier
from ingestd.engine._runner import Lagging
from ingestd.samples import demo_config, events_file
from ingestd.sources import JsonlFileSource, Progress, RawRecord, TransientSourceError
from monitoring.http_server import HealthState

STALL_LIMIT_S = 0.4
LIVENESS_S = 0.4


class ScriptedSource:
    """Records handed out on demand, a settable number of records "waiting", a commit that can fail."""

    name = "scripted"

    def __init__(self) -> None:
        self.pending: list[RawRecord] = []
        self.lagging = 0
        self.acknowledged: list[RawRecord] = []
        self.commit_fails = False
        self.paused = False
        self._lock = threading.Lock()

    def give(self, records: Sequence[RawRecord]) -> None:
        with self._lock:
            self.pending.extend(records)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        with self._lock:
            taken, self.pending = self.pending[:max_records], self.pending[max_records:]
        if not taken:
            time.sleep(min(timeout_s, 0.02))
        return taken

    @property
    def exhausted(self) -> bool:
        return False

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        if self.commit_fails:
            raise TransientSourceError("coordinator away")
        self.acknowledged.extend(records)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def keepalive(self, timeout_s: float) -> None:
        time.sleep(min(timeout_s, 0.02))

    def readiness(self) -> tuple[bool, str]:
        return True, "scripted"

    def progress(self) -> Progress:
        return Progress(done=len(self.acknowledged), total=None, unit="records")

    def close(self) -> None:
        """Nothing to release."""

    def waiting(self) -> int:
        with self._lock:
            return len(self.pending) + self.lagging


@pytest.fixture
def settings(tmp_path: Path) -> IngestdSettings:
    return load_settings(
        demo_config(),
        registry={"url": f"sqlite:///{tmp_path / 'r.sqlite3'}"},
        dead_letters={"file": str(tmp_path / "dead.jsonl")},
    )


class Running:
    """A runner on the scripted source, in a thread."""

    def __init__(self, settings: IngestdSettings, source: ScriptedSource) -> None:
        self.source = source
        self.stop = StopToken(5)
        self.health = HealthState(liveness_timeout_s=LIVENESS_S)
        self._registry = open_registry(settings.registry.url, create=True)
        rules = make_rules(settings)
        engine = Engine(
            registry=self._registry,
            planner=make_planner(rules),
            dead_letters=FileDeadLetterWriter(settings.dead_letters.file),
            retrier=Retrier(self.stop, initial_backoff_s=0.01, max_backoff_s=0.05, health=self.health),
            parking=ParkingPolicy(delay_s=1, delay_max_s=1, not_visible_timeout_s=0),
            verifier=make_verifier(settings, rules),
        )
        self.runner = Runner(
            engine,
            source,
            stop=self.stop,
            max_events=100,
            max_wait_s=0.05,
            health=self.health,
            stall_limit_s=STALL_LIMIT_S,
        )
        self._thread = threading.Thread(target=self.runner.run, name="runner-under-test", daemon=True)

    def __enter__(self) -> Running:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.request("test done")
        self._thread.join(10)
        self._registry.close()
        assert not self._thread.is_alive()

    def live(self) -> bool:
        return self.health.live()[0]

    def stalled(self) -> str | None:
        reasons: dict[str, str] = self.health.ready()[1]["not_ready"]
        return reasons.get("stalled")


def _eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _holds(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def records() -> list[RawRecord]:
    return JsonlFileSource(events_file()).poll(100, 0)


def test_the_source_implements_lagging() -> None:
    assert isinstance(ScriptedSource(), Lagging)


def test_idle_with_nothing_waiting_stays_live(settings: IngestdSettings) -> None:
    with Running(settings, ScriptedSource()) as running:
        assert _holds(running.live, 3 * LIVENESS_S)
        assert running.stalled() is None


def test_records_waiting_but_none_returned_is_a_stall_until_a_batch_commits(
    settings: IngestdSettings, records: list[RawRecord]
) -> None:
    source = ScriptedSource()
    source.lagging = 7  # assigned partitions with records, none fetched: the stall after a broker restart
    with Running(settings, source) as running:
        _eventually(lambda: not running.live(), "liveness to fail while records wait")
        _eventually(lambda: running.stalled() is not None, "readiness to report the stall")
        reason = running.stalled()
        assert reason is not None
        assert reason.startswith("no commit for ")
        assert "with 7 records lagging" in reason
        source.lagging = 0
        source.give(records)
        _eventually(lambda: len(source.acknowledged) == len(records), "the batch to be acknowledged")
        _eventually(running.live, "liveness to return")
        assert running.stalled() is None
        assert _holds(running.live, 2 * LIVENESS_S)


def test_a_failing_commit_keeps_liveness_and_reports_the_stall(
    settings: IngestdSettings, records: list[RawRecord]
) -> None:
    source = ScriptedSource()
    with Running(settings, source) as running:
        source.commit_fails = True
        source.give(records)
        _eventually(lambda: source.paused, "the back-off to pause the source")
        _eventually(
            lambda: running.stalled() is not None, "readiness to report the stall during the back-off"
        )
        assert _holds(running.live, 2 * LIVENESS_S)
        not_ready = running.health.ready()[1]["not_ready"]
        assert "kafka" in not_ready  # the retrier names the failing stage as well
        source.commit_fails = False
        _eventually(lambda: len(source.acknowledged) == len(records), "the batch to be acknowledged")
        _eventually(running.live, "liveness to return")
        _eventually(lambda: running.stalled() is None, "the stall to end")
        assert not source.paused
