"""The host yardstick the end-to-end benchmark records: pure logic, no server."""

from __future__ import annotations

import time

from ingestd.bench._host import HostSpeedProbe, host_speed


def test_host_speed_reports_both_yardsticks_as_positive_figures() -> None:
    speed = host_speed()
    assert set(speed) == {"python_loop_ms", "stat_us"}
    assert speed["python_loop_ms"] > 0
    assert speed["stat_us"] > 0


def test_the_probe_samples_while_open_and_summarises() -> None:
    with HostSpeedProbe(interval_s=0.01, iterations=2_000) as probe:
        deadline = time.monotonic() + 5
        while len(probe.samples_ms) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = probe.summary()
    assert summary is not None
    assert summary["samples"] >= 3
    assert summary["fastest_ms"] <= summary["python_loop_ms"] <= summary["slowest_ms"]
    assert HostSpeedProbe().summary() is None  # never started: no samples, no figure
