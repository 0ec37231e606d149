"""The host yardstick the end-to-end benchmark records: pure logic, no server."""

from __future__ import annotations

from ingestd.bench._host import host_speed


def test_host_speed_reports_both_yardsticks_as_positive_figures() -> None:
    speed = host_speed()
    assert set(speed) == {"python_loop_ms", "stat_us"}
    assert speed["python_loop_ms"] > 0
    assert speed["stat_us"] > 0
