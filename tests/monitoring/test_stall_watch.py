"""``StallWatch``: liveness beaten only by progress, ``stalled`` on readiness once per stall."""

from __future__ import annotations

import time

from monitoring.http_server import HealthState, StallWatch


def test_a_stall_is_reported_once_past_the_limit_and_ended_by_progress() -> None:
    health = HealthState(liveness_timeout_s=60)
    health.set_ready()
    watch = StallWatch(health, limit_s=0.05)
    assert watch.check(lambda s: f"stuck {s:.2f}") is None  # within the limit
    assert health.ready()[0]
    time.sleep(0.08)
    stalled_s = watch.check(lambda s: "no commit while records wait")
    assert stalled_s is not None
    assert stalled_s > 0.05
    assert health.ready()[1]["not_ready"] == {"stalled": "no commit while records wait"}
    assert watch.check(lambda s: "again") is None  # reported once per stall
    assert health.ready()[1]["not_ready"]["stalled"] == "no commit while records wait"
    assert watch.progress() is True  # ends the stall
    assert health.ready()[0]
    assert watch.progress() is False
    assert health.live()[0]
