"""Events that arrive before the dimension records they need (issue 10), on real Kafka and Postgres.

Each test runs ``python -m ingestd run`` as a real process. The registry starts
with HSC, its detectors, filters and exposures but *not* visit 330, so every
synthetic data product (a calexp of visit 330) waits for ``visit:HSC/330`` until
a ``dim_file`` event carrying prep.yaml arrives.

* 1,000 data products published before their ``dim_file``: all parked, then all
  registered within seconds of the ``dim_file`` (the measured seconds are printed).
* ``kill -9`` while events are parked: after the restart they are still parked,
  and register when the records arrive.
* Records that never come: dead-lettered after the (shortened) horizon, with a
  reason naming them.
* A parked event replayed from Kafka is parked once and registered once.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from butler_registry import open_registry
from ingestd.daemon import run_replay

from .base_export import write_base_export
from .events import dim_event, synthetic_datasets
from .harness import IngestSetup
from .kafka_helpers import produce, read_all
from .processes import DaemonProcess, clean_environment, dataset_count, ingestd_command, sql_url

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

FAST_PARKING = {"park_poll_interval_s": 1.0, "park_delay_s": 30, "park_delay_max_s": 60}


def _parked(ingest: IngestSetup) -> int:
    with psycopg.connect(sql_url(ingest.registry_url), connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM ingestd_pending").fetchone()
        assert row is not None
        return int(row[0])


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, daemon: DaemonProcess) -> float:
    """Wait for ``condition``; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        daemon.assert_running()
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; log:\n{daemon.tail()}")


def _prepare(ingest: IngestSetup, count: int) -> list[bytes]:
    """The registry without visit 330, and ``count`` data products of visit 330."""
    with open_registry(ingest.registry_url) as registry:
        registry.import_dimensions(write_base_export(ingest.workdir / "base.yaml"))
    return [dataset.event() for dataset in synthetic_datasets(count, seed=ingest.topic)]


def _pending_cli(config: Path, *args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        ingestd_command("pending", "--config", str(config), "--json", *args),
        capture_output=True,
        timeout=60,
        env=clean_environment(),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def _metric(daemon: DaemonProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port()}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


def test_a_thousand_data_products_before_their_dim_file_register_within_seconds_of_it(
    ingest: IngestSetup,
) -> None:
    events = _prepare(ingest, 1_000)
    produce(ingest.kafka, ingest.topic, events)
    config = ingest.write_config(dead_letters=FAST_PARKING)
    daemon = DaemonProcess(config, ingest.workdir).start()
    try:
        daemon.port()
        _wait(lambda: _parked(ingest) == 1_000, 120, "1,000 events parked", daemon)
        assert dataset_count(ingest.registry_url) == 0
        groups = _pending_cli(config)
        assert groups[0]["wait"] == "visit:HSC/330"
        assert groups[0]["events"] == 1_000
        _wait(lambda: _metric(daemon, "ingestd_parked_events") == 1_000, 30, "the parked gauge", daemon)
        assert _metric(daemon, "ingestd_parked_oldest_age_seconds") > 0

        produce(ingest.kafka, ingest.topic, [dim_event("prep.yaml")], partition=1)
        seconds = _wait(
            lambda: dataset_count(ingest.registry_url) == 1_000, 120, "1,000 registrations", daemon
        )
        print(
            json.dumps(
                {"measure": "dim_file published -> 1,000 parked events registered", "seconds": seconds}
            )
        )
        _wait(lambda: _parked(ingest) == 0, 30, "the parked rows to be released", daemon)
        _wait(
            lambda: _metric(daemon, 'ingestd_redriven_total{result="registered"}') == 1_000,
            30,
            "the re-driven counter",
            daemon,
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.stop_quietly()
    assert read_all(ingest.kafka, ingest.dead_letter_topic, timeout_s=2) == []


def test_parked_events_survive_kill_9_and_register_when_their_records_arrive(ingest: IngestSetup) -> None:
    events = _prepare(ingest, 200)
    produce(ingest.kafka, ingest.topic, events)
    config = ingest.write_config(dead_letters=FAST_PARKING)
    daemon = DaemonProcess(config, ingest.workdir).start()
    try:
        daemon.port()
        _wait(lambda: _parked(ingest) == 200, 90, "200 events parked", daemon)
        daemon.kill()
        assert _parked(ingest) == 200, "parked events are durable"
        assert dataset_count(ingest.registry_url) == 0

        daemon.start()
        daemon.port()
        time.sleep(2.0)  # a poll interval or two: nothing to re-drive yet
        assert _parked(ingest) == 200
        produce(ingest.kafka, ingest.topic, [dim_event("prep.yaml")], partition=2)
        seconds = _wait(
            lambda: dataset_count(ingest.registry_url) == 200 and _parked(ingest) == 0,
            90,
            "the parked events to register after the restart",
            daemon,
        )
        print(json.dumps({"measure": "after kill -9: dim_file -> 200 registered", "seconds": seconds}))
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.stop_quietly()


def test_an_event_whose_records_never_come_is_dead_lettered_after_the_horizon(ingest: IngestSetup) -> None:
    [event] = _prepare(ingest, 1)
    produce(ingest.kafka, ingest.topic, [event], partition=0)
    config = ingest.write_config(
        dead_letters={
            "park_max_age_s": 3,
            "park_delay_s": 0.5,
            "park_delay_max_s": 1,
            "park_poll_interval_s": 0.5,
        }
    )
    daemon = DaemonProcess(config, ingest.workdir).start()
    try:
        daemon.port()
        _wait(
            lambda: bool(read_all(ingest.kafka, ingest.dead_letter_topic, timeout_s=1)),
            60,
            "the dead letter",
            daemon,
        )
        assert _parked(ingest) == 0
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.stop_quietly()
    [(value, headers)] = read_all(ingest.kafka, ingest.dead_letter_topic)
    assert value == event
    reason = headers["ingestd.reason"].decode()
    assert "visit:HSC/330" in reason, reason
    assert reason.startswith("still waiting after"), reason
    assert headers["ingestd.error_class"] == b"missing_dimensions"
    assert headers["ingestd.outcome"] == b"rejected"
    assert headers["ingestd.source.topic"].decode() == ingest.topic
    assert int(headers["ingestd.attempts"]) >= 2
    assert dataset_count(ingest.registry_url) == 0


def test_a_parked_event_replayed_from_kafka_is_parked_once_and_registered_once(ingest: IngestSetup) -> None:
    events = _prepare(ingest, 50)
    produce(ingest.kafka, ingest.topic, events)
    config = ingest.write_config(dead_letters=FAST_PARKING)
    daemon = DaemonProcess(config, ingest.workdir).start()
    try:
        daemon.port()
        _wait(lambda: _parked(ingest) == 50, 90, "50 events parked", daemon)

        # An operator replays the topic while the events are parked: they are parked again, once each.
        out = io.StringIO()
        assert run_replay(ingest.settings(), topics=[ingest.topic], summary_json=True, out=out) == 0
        assert json.loads(out.getvalue())["outcomes"]["parked"] == 50
        assert _parked(ingest) == 50
        with psycopg.connect(sql_url(ingest.registry_url)) as conn:
            assert conn.execute("SELECT min(attempts) FROM ingestd_pending").fetchone() == (2,)

        produce(ingest.kafka, ingest.topic, [dim_event("prep.yaml")], partition=0)
        _wait(
            lambda: dataset_count(ingest.registry_url) == 50 and _parked(ingest) == 0,
            60,
            "the parked events to register",
            daemon,
        )
        # Replayed again once registered: already there, nothing parked, nothing twice.
        out = io.StringIO()
        assert run_replay(ingest.settings(), topics=[ingest.topic], summary_json=True, out=out) == 0
        outcomes = json.loads(out.getvalue())["outcomes"]
        assert outcomes["already_present"] == 51, outcomes  # the 50 datasets and the dim_file
        assert outcomes["parked"] == 0
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.stop_quietly()
    assert _parked(ingest) == 0
    assert dataset_count(ingest.registry_url) == 50
    with psycopg.connect(sql_url(ingest.registry_url)) as conn:
        assert conn.execute("SELECT count(DISTINCT id) FROM dataset").fetchone() == (50,)
    assert read_all(ingest.kafka, ingest.dead_letter_topic, timeout_s=2) == []
