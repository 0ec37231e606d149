"""Pure logic of the engine's parts: dead-letter headers, parking, back-off, retries, time parsing."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingestd.daemon import DeadLetterFilter, parse_time
from ingestd.deadletter import (
    DeadLetter,
    DeadLetterInfo,
    Destination,
    FileDeadLetterWriter,
    read_dead_letter_file,
)
from ingestd.engine import Backoff, BatchAbandonedError, ParkingPolicy, Retrier, StopToken
from ingestd.engine._progress import ProgressReporter
from ingestd.sources import JsonlFileSource, Progress, RawRecord
from ingestd.work import EventReport, EventSummary, Outcome, Position
from monitoring.metrics import Stage

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _record(value: bytes = b"{}", headers: tuple[tuple[str, bytes], ...] = ()) -> RawRecord:
    position = Position(source="kafka", topic="XRD5-test", partition=2, offset=41)
    return RawRecord(value=value, position=position, origin=position, key=b"k", headers=headers)


class TestDeadLetterHeaders:
    def test_round_trip(self) -> None:
        info = DeadLetterInfo(
            error_class="invalid_json",
            reason="line 1: Expecting ','",
            outcome=Outcome.rejected,
            origin=Position(source="kafka", topic="XRD5-test", partition=2, offset=41),
            failed_at=NOW,
            attempts=3,
            first_failed_at=NOW - timedelta(hours=1),
            not_before=NOW + timedelta(minutes=5),
        )
        back = DeadLetterInfo.from_headers(info.to_headers())
        assert back == info
        names = {name for name, _ in info.to_headers()}
        assert {
            "ingestd.error_class",
            "ingestd.reason",
            "ingestd.source.topic",
            "ingestd.source.partition",
            "ingestd.source.offset",
            "ingestd.outcome",
            "ingestd.failed_at",
            "ingestd.attempts",
        } <= names

    def test_foreign_headers_kept_and_ours_replaced(self) -> None:
        old = DeadLetterInfo("a", "r", Outcome.parked, Position("kafka", "T", 0, 1), NOW).to_headers()
        letter = DeadLetter(
            Destination.dead_letter,
            b"v",
            DeadLetterInfo("b", "r2", Outcome.rejected, Position("kafka", "T", 0, 1), NOW),
            headers=(("trace", b"x"), *old),
        )
        headers = letter.all_headers()
        assert headers[0] == ("trace", b"x")
        assert [v for n, v in headers if n == "ingestd.error_class"] == [b"b"]

    def test_not_ours_and_garbage(self) -> None:
        assert DeadLetterInfo.from_headers([("x", b"y")]) is None
        info = DeadLetterInfo.from_headers([("ingestd.error_class", b"c"), ("ingestd.attempts", b"many")])
        assert info is not None
        assert info.attempts == 1
        assert info.outcome is Outcome.rejected

    def test_long_reason_cut(self) -> None:
        info = DeadLetterInfo("c", "é" * 10_000, Outcome.rejected, Position("file", line=3), NOW)
        reason = dict(info.to_headers())["ingestd.reason"]
        assert len(reason) <= 4_000
        reason.decode()  # still valid UTF-8

    def test_file_writer_round_trip(self, tmp_path: Path) -> None:
        path = tmp_path / "dl.jsonl"
        writer = FileDeadLetterWriter(path)
        info = DeadLetterInfo("too_large", "big", Outcome.rejected, Position("file", line=7), NOW)
        writer.write([DeadLetter(Destination.dead_letter, b"\xff\xfe not utf-8", info)])
        writer.write([DeadLetter(Destination.retry, b'{"a": 1}', info)])
        rows = read_dead_letter_file(path)
        assert [(r[1], r[2]) for r in rows] == [
            (b"\xff\xfe not utf-8", Destination.dead_letter),
            (b'{"a": 1}', Destination.retry),
        ]
        assert rows[0][0].origin.line == 7


class TestParking:
    def policy(self, now: datetime) -> ParkingPolicy:
        return ParkingPolicy(
            delay_s=60, delay_max_s=600, max_age_s=3_600, not_visible_timeout_s=120, clock=lambda: now
        )

    def test_first_park_goes_to_retry_with_not_before(self) -> None:
        verdict = self.policy(NOW).park(_record(), error_class="missing_dimensions", reason="visit:HSC/1")
        assert verdict.outcome is Outcome.parked
        assert verdict.letter.destination is Destination.retry
        info = verdict.letter.info
        assert info.attempts == 1
        assert info.first_failed_at == NOW
        assert info.not_before == NOW + timedelta(seconds=60)
        assert info.origin.offset == 41

    def test_delay_doubles_and_caps_then_dead_letters(self) -> None:
        record = _record()
        moment = NOW
        delays = []
        for _ in range(6):
            verdict = self.policy(moment).park(record, error_class="missing_dimensions", reason="r")
            assert verdict.outcome is Outcome.parked
            info = verdict.letter.info
            assert info.not_before is not None
            delays.append((info.not_before - moment).total_seconds())
            record = _record(headers=tuple(verdict.letter.all_headers()))
            moment = info.not_before
        assert delays == [60, 120, 240, 480, 600, 600]
        late = self.policy(NOW + timedelta(hours=2)).park(
            record, error_class="missing_dimensions", reason="r"
        )
        assert late.outcome is Outcome.rejected
        assert late.letter.destination is Destination.dead_letter
        assert late.letter.info.attempts == 7
        assert "still waiting" in late.reason

    def test_file_wait_has_its_own_limit(self) -> None:
        first = self.policy(NOW).park(
            _record(), error_class="file_not_visible", reason="r", waiting_for_file=True
        )
        record = _record(headers=tuple(first.letter.all_headers()))
        later = self.policy(NOW + timedelta(seconds=200)).park(
            record, error_class="file_not_visible", reason="r", waiting_for_file=True
        )
        assert later.outcome is Outcome.rejected

    def test_redriven_dead_letter_starts_a_fresh_wait(self) -> None:
        old = DeadLetterInfo(
            "conflict", "x", Outcome.rejected, Position("kafka", "T", 0, 1), NOW - timedelta(days=9)
        )
        record = _record(headers=tuple(old.to_headers()))
        verdict = self.policy(NOW).park(record, error_class="missing_dimensions", reason="r")
        assert verdict.outcome is Outcome.parked
        assert verdict.letter.info.attempts == 2


def test_backoff_doubles_caps_and_jitters() -> None:
    import random

    backoff = Backoff(initial_s=1, max_s=8, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next_delay() == 1
    jittered = Backoff(initial_s=10, max_s=10, jitter=0.2, rng=random.Random(1))
    values = [jittered.next_delay() for _ in range(50)]
    assert all(8 <= v <= 12 for v in values)
    assert len(set(values)) > 1


class _Idle:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.waited = 0.0

    def pause(self) -> None:
        self.paused += 1

    def resume(self) -> None:
        self.resumed += 1

    def keepalive(self, timeout_s: float) -> None:
        self.waited += timeout_s


class TestRetrier:
    def test_retries_transient_until_success_pausing_once(self) -> None:
        calls = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) < 4:
                raise ConnectionError("database away")
            return "done"

        from monitoring.http_server import HealthState

        health = HealthState()
        health.set_ready()
        source = _Idle()
        retrier = Retrier(StopToken(), initial_backoff_s=0.001, max_backoff_s=0.002, health=health)
        assert (
            retrier.call(
                Stage.register, flaky, transient=(ConnectionError,), source=source, health_key="registry"
            )
            == "done"
        )
        assert len(calls) == 4
        assert (source.paused, source.resumed) == (1, 1)
        assert health.ready()[0]

    def test_not_ready_while_failing_and_abandon_after_stop_deadline(self) -> None:
        from monitoring.http_server import HealthState

        health = HealthState()
        health.set_ready()
        stop = StopToken(grace_s=0.05)
        seen: list[bool] = []

        def failing() -> None:
            seen.append(health.ready()[0])
            if len(seen) == 3:
                stop.request("test")
            raise ConnectionError("broker away")

        with pytest.raises(BatchAbandonedError):
            Retrier(stop, initial_backoff_s=0.01, max_backoff_s=0.02, health=health).call(
                Stage.dead_letter,
                failing,
                transient=(ConnectionError,),
                source=_Idle(),
                health_key="dead_letters",
            )
        assert seen[0] is True
        assert seen[1] is False
        ready, body = health.ready()
        assert not ready
        assert "broker away" in body["not_ready"]["dead_letters"]

    def test_other_errors_propagate(self) -> None:
        def broken() -> None:
            raise KeyError("bug")

        with pytest.raises(KeyError):
            Retrier(StopToken()).call(
                Stage.register, broken, transient=(ConnectionError,), source=_Idle(), health_key="r"
            )


def test_parse_time_forms() -> None:
    assert parse_time("2025-03-20T12:00:00Z") == datetime(2025, 3, 20, 12, tzinfo=UTC)
    assert parse_time("2025-03-20 12:00") == datetime(2025, 3, 20, 12, tzinfo=UTC)
    assert parse_time("6h", now=NOW) == NOW - timedelta(hours=6)
    assert parse_time("30m", now=NOW) == NOW - timedelta(minutes=30)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_dead_letter_filter() -> None:
    info = DeadLetterInfo("conflict", "r", Outcome.conflict, Position("kafka", "T", 0, 1), NOW)
    assert DeadLetterFilter().accepts(info)
    assert DeadLetterFilter(error_classes=frozenset({"conflict"})).accepts(info)
    assert not DeadLetterFilter(error_classes=frozenset({"invalid_json"})).accepts(info)
    assert not DeadLetterFilter(since=NOW + timedelta(seconds=1)).accepts(info)
    assert not DeadLetterFilter(since=NOW).accepts(None)


class TestJsonlSource:
    def test_lines_positions_blank_lines_and_resume(self, tmp_path: Path) -> None:
        events = tmp_path / "events.jsonl"
        events.write_bytes(b'{"a": 1}\n\n{"b": 2}\r\nnot json\n{"c": 3}')
        marker = tmp_path / "marker.json"
        source = JsonlFileSource(events, resume_marker=marker)
        first = source.poll(2, 0)
        assert [r.value for r in first] == [b'{"a": 1}', b'{"b": 2}']
        assert [r.position.line for r in first] == [1, 3]
        source.acknowledge(first)
        source.close()
        assert json.loads(marker.read_text())["line"] == 3

        again = JsonlFileSource(events, resume_marker=marker)
        rest = again.poll(10, 0)
        assert [r.position.line for r in rest] == [4, 5]
        assert again.exhausted

    def test_marker_of_another_file_refused(self, tmp_path: Path) -> None:
        from ingestd.sources import FatalSourceError

        one, two = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
        one.write_text('{"x": 1}\n')
        two.write_text('{"y": 2}\n')
        marker = tmp_path / "m.json"
        source = JsonlFileSource(one, resume_marker=marker)
        source.acknowledge(source.poll(5, 0))
        with pytest.raises(FatalSourceError, match="belongs to"):
            JsonlFileSource(two, resume_marker=marker).poll(5, 0)

    def test_overlong_line_is_cut_not_held(self, tmp_path: Path) -> None:
        events = tmp_path / "big.jsonl"
        events.write_bytes(b"x" * 5_000 + b"\n" + b'{"ok": 1}\n')
        records = JsonlFileSource(events, max_line_bytes=1_024).poll(10, 0)
        assert len(records) == 2
        assert len(records[0].value) == 1_025  # enough for the decoder to reject it as too large
        assert records[1].value == b'{"ok": 1}'


def test_progress_reporter_plain_lines() -> None:
    stream = io.StringIO()
    reporter = ProgressReporter(lambda: Progress(done=50, total=100), stream=stream, tty=False, interval_s=0)
    summary = EventSummary()
    reporter([EventReport(Position("file", line=1), Outcome.registered, summary)] * 3)
    reporter.finish()
    text = stream.getvalue()
    assert "50.0%" in text
    assert "3 events" in text
    assert "registered 3" in text
