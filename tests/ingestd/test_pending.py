"""Events parked in the registry database: the store, and the engine re-driving them when records arrive.

Fast tests on the embedded SQLite registry (the store is also exercised on
PostgreSQL); the daemon-level acceptance tests on real Kafka and Postgres are in
``integration/test_pending.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from butler_registry import SqlRegistry, open_registry
from butler_registry._pending import (
    TIMER_ONLY,
    UNPARSED_ELEMENT,
    PendingEvent,
    PendingStore,
    WaitKey,
    wait_key,
)
from butler_registry.universe import default_universe
from ingestd.config import IngestdSettings, load_settings
from ingestd.deadletter import FileDeadLetterWriter
from ingestd.engine import Engine, ParkingPolicy, PendingQueue, Retrier, StopToken
from ingestd.engine._assembly import make_planner, make_rules
from ingestd.sources import RawRecord
from ingestd.work import Outcome, Position

from .integration.base_export import write_base_export
from .integration.events import RUCIO_PREFIX, SAMPLES, dim_event, synthetic_datasets

TOPIC = "XRD5-test"
VISIT_330 = WaitKey("visit", '["HSC",330]')


class _Idle:
    def pause(self) -> None:
        """Nothing to pause."""

    def resume(self) -> None:
        """Nothing to resume."""

    def keepalive(self, timeout_s: float) -> None:
        """No group to keep."""


def _is_due(queue: PendingQueue) -> bool:
    """Whether the queue would look at the store now (a function: the property changes under our feet)."""
    return queue.due


# -- wait keys ------------------------------------------------------------------------------------


def test_missing_record_names_read_back_as_dimension_record_keys() -> None:
    universe = default_universe()
    assert wait_key(universe, "visit:HSC/330") == VISIT_330
    assert wait_key(universe, "instrument:HSC") == WaitKey("instrument", '["HSC"]')
    assert str(wait_key(universe, "detector:HSC/50")) == "detector:HSC/50"
    for unreadable in ("visit:HSC/x", "visit:HSC", "nonsense", "galaxy:1"):
        key = wait_key(universe, unreadable)
        assert key.element == UNPARSED_ELEMENT, unreadable
        assert str(key) == unreadable


# -- the store ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlRegistry]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_database")
    with open_registry(url, create=True) as opened:
        yield opened


def _event(
    key: str,
    *,
    parked_at: datetime,
    waits: tuple[WaitKey, ...] = (VISIT_330,),
    offset: int = 0,
    next_attempt_at: datetime | None = None,
) -> PendingEvent:
    return PendingEvent(
        key=key,
        value=f"event {key}".encode(),
        source="kafka",
        topic=TOPIC,
        partition=0,
        offset=offset,
        error_class="missing_dimensions",
        reason="missing dimension records visit:HSC/330",
        first_parked_at=parked_at,
        last_parked_at=parked_at,
        next_attempt_at=next_attempt_at or parked_at + timedelta(minutes=1),
        waits=waits,
    )


def test_parking_again_updates_one_row_and_keeps_the_first_time(registry: SqlRegistry) -> None:
    store = PendingStore(registry.engine)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    store.park([_event("dataset:a", parked_at=first)])
    store.park([_event("dataset:a", parked_at=first + timedelta(hours=1), offset=7)])
    [event] = store.events()
    assert event.attempts == 2
    assert event.first_parked_at == first
    assert event.offset == 7
    assert event.waits == (VISIT_330,)
    summary = store.summary()
    assert summary.events == 1
    assert summary.oldest == first


def test_ready_only_once_every_awaited_record_exists_and_leases_are_exclusive(
    registry: SqlRegistry, tmp_path: Path
) -> None:
    store = PendingStore(registry.engine)
    now = datetime.now(UTC)
    other = WaitKey("visit", '["HSC",328]')
    store.park(
        [
            _event("dataset:330", parked_at=now),
            _event("dataset:both", parked_at=now, waits=(VISIT_330, other)),
            _event("dataset:none", parked_at=now, waits=()),
        ]
    )
    assert store.claim_ready(10, lease_s=60) == []
    groups = {group.wait: group.events for group in store.groups()}
    assert groups == {"visit:HSC/330": 2, "visit:HSC/328": 1, TIMER_ONLY: 1}

    registry.import_dimensions(write_base_export(tmp_path / "base.yaml"))
    assert store.claim_ready(10, lease_s=60) == []
    registry.import_dimensions(SAMPLES / "prep.yaml")
    [ready] = store.claim_ready(10, lease_s=60)
    assert ready.key == "dataset:330"
    assert store.claim_ready(10, lease_s=60) == [], "a leased event is not taken twice"
    assert [e.key for e in store.claim_ready(10, lease_s=60, now=now + timedelta(minutes=5))] == [
        "dataset:330"
    ], "an expired lease frees the event"

    # Released only if not parked again since it was read.
    store.park([_event("dataset:330", parked_at=now)])
    assert store.release([(ready.key, ready.attempts)]) == 0
    assert store.release([(ready.key, ready.attempts + 1)]) == 1
    assert {e.key for e in store.events()} == {"dataset:both", "dataset:none"}


def test_due_events_come_oldest_retry_first(registry: SqlRegistry) -> None:
    store = PendingStore(registry.engine)
    now = datetime.now(UTC)
    store.park(
        [
            _event("dataset:later", parked_at=now, next_attempt_at=now + timedelta(hours=1)),
            _event("dataset:b", parked_at=now, next_attempt_at=now - timedelta(seconds=5)),
            _event("dataset:a", parked_at=now, next_attempt_at=now - timedelta(seconds=10)),
        ]
    )
    assert [e.key for e in store.claim_due(10, lease_s=60, now=now)] == ["dataset:a", "dataset:b"]
    assert store.make_due(now=now + timedelta(seconds=1)) == 3
    assert [e.key for e in store.claim_due(10, lease_s=60, now=now + timedelta(seconds=2))] == [
        "dataset:a",
        "dataset:b",
        "dataset:later",
    ]


# -- the engine -----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    folder = tmp_path / "storage"
    folder.mkdir()
    shutil.copy(SAMPLES / "prep.yaml", folder / "prep.yaml")
    return folder


def _settings(tmp_path: Path, storage: Path) -> IngestdSettings:
    return load_settings(
        None,
        registry={"url": f"sqlite:///{tmp_path / 'r.sqlite3'}"},
        dead_letters={"file": str(tmp_path / "dead.jsonl")},
        topic_prefixes={TOPIC: {"rucio_prefix": RUCIO_PREFIX, "fs_prefix": str(storage)}},
    )


def _records(values: list[bytes], first_offset: int = 0) -> list[RawRecord]:
    return [
        RawRecord(value=value, position=p, origin=p)
        for offset, value in enumerate(values, start=first_offset)
        for p in [Position(source="kafka", topic=TOPIC, partition=0, offset=offset)]
    ]


def _setup(
    tmp_path: Path, storage: Path, clock: _Clock, max_age_s: float = 86_400.0
) -> tuple[Engine, PendingQueue, SqlRegistry]:
    settings = _settings(tmp_path, storage)
    registry = open_registry(settings.registry.resolved_url(), create=True)
    registry.import_dimensions(write_base_export(tmp_path / "base.yaml"))
    queue = PendingQueue(PendingStore(registry.engine), registry.universe, poll_interval_s=3_600)
    engine = Engine(
        registry=registry,
        planner=make_planner(make_rules(settings)),
        dead_letters=FileDeadLetterWriter(settings.dead_letters.file),
        retrier=Retrier(StopToken(), initial_backoff_s=0.001, max_backoff_s=0.002),
        parking=ParkingPolicy(delay_s=60, delay_max_s=600, max_age_s=max_age_s, clock=clock),
        pending=queue,
    )
    return engine, queue, registry


def test_parked_datasets_are_redriven_as_soon_as_an_import_brings_their_records(
    tmp_path: Path, storage: Path
) -> None:
    clock = _Clock()
    engine, queue, registry = _setup(tmp_path, storage, clock)
    with registry:
        events = [dataset.event() for dataset in synthetic_datasets(30)]
        result = engine.process(_records(events), _Idle())
        assert result.count(Outcome.parked) == 30
        assert result.letters == 0, "parked in the registry, not in the retry topic"
        assert queue.summary().events == 30
        [group] = queue.store.groups()
        assert (group.wait, group.events) == ("visit:HSC/330", 30)
        queue.collect(1_000)  # the first poll: nothing is ready
        assert not _is_due(queue)

        # The same events replayed: still one row each.
        engine.process(_records(events), _Idle())
        assert queue.summary().events == 30

        result = engine.process(_records([dim_event("prep.yaml")], 100), _Idle())
        assert result.count(Outcome.registered) == 1
        assert _is_due(queue), "an import that added records asks for a re-drive at once"
        redriven = queue.collect(1_000)
        assert len(redriven) == 30
        assert all(record.origin.topic == TOPIC for record in redriven)
        result = engine.process(redriven, _Idle())
        assert result.count(Outcome.registered) == 30
        assert queue.acknowledge(redriven) == 30
        assert queue.summary().events == 0
        assert registry.stats().datasets == 30

        # Replayed once more from Kafka: already there, nothing parked, nothing registered twice.
        result = engine.process(_records(events), _Idle())
        assert result.count(Outcome.already_present) == 30
        assert queue.summary().events == 0
        assert registry.stats().datasets == 30


def test_an_event_whose_records_never_come_is_dead_lettered_after_the_horizon_naming_them(
    tmp_path: Path, storage: Path
) -> None:
    clock = _Clock()
    engine, queue, registry = _setup(tmp_path, storage, clock, max_age_s=3_600)
    with registry:
        [dataset] = synthetic_datasets(1)
        engine.process(_records([dataset.event()]), _Idle())
        assert queue.summary().events == 1

        clock.now += timedelta(minutes=30)
        queue.store.make_due(now=datetime.now(UTC))
        queue.records_arrived()
        again = queue.collect(10)
        assert engine.process(again, _Idle()).count(Outcome.parked) == 1
        queue.acknowledge(again)
        [event] = queue.store.events()
        assert event.attempts == 2, "still parked, one more attempt"

        clock.now += timedelta(hours=1)
        queue.store.make_due(now=datetime.now(UTC))
        queue.records_arrived()
        last = queue.collect(10)
        result = engine.process(last, _Idle())
        assert result.count(Outcome.rejected) == 1
        queue.acknowledge(last)
        assert queue.summary().events == 0
    [letter] = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    headers = letter["headers"]
    assert headers["ingestd.error_class"] == "missing_dimensions"
    assert "visit:HSC/330" in headers["ingestd.reason"]
    assert headers["ingestd.reason"].startswith("still waiting after")
    assert headers["ingestd.source.topic"] == TOPIC


# -- ingestd pending ------------------------------------------------------------------------------


def test_pending_command_groups_events_by_the_records_they_wait_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingestd.cli import main

    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    config = tmp_path / "ingestd.yaml"
    config.write_text(f"registry:\n  url: {url}\nlogging:\n  format: json\n")
    other = WaitKey("visit", '["HSC",328]')
    with open_registry(url, create=True) as registry:
        store = PendingStore(registry.engine)
        then = datetime.now(UTC) - timedelta(hours=3)
        store.park([_event(f"dataset:{n}", parked_at=then + timedelta(minutes=n)) for n in range(3)])
        store.park([_event("dataset:x", parked_at=then, waits=(VISIT_330, other))])
    capsys.readouterr()

    assert main(["pending", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("visit:HSC/330")
    assert "4 events" in lines[0]
    assert "oldest    3.0 h" in lines[0]
    assert lines[1].startswith("visit:HSC/328")
    assert "4 events parked, oldest 3.0 h" in err

    assert main(["pending", "--config", str(config), "--json", "--limit", "1"]) == 0
    [group] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (group["wait"], group["events"]) == ("visit:HSC/330", 4)
    assert group["oldest_age_s"] >= 3 * 3_600

    assert main(["pending", "--config", str(config), "--events", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["key"] for e in events][:2] == ["dataset:0", "dataset:x"]
    assert events[1]["waits"] == ["visit:HSC/328", "visit:HSC/330"]

    assert main(["pending", "--config", str(config), "--redrive"]) == 0
    assert capsys.readouterr().out.strip() == "4 parked events made due"
