"""Stopping and retrying: the two pieces of control flow every stage shares.

:class:`StopToken` carries a stop request (SIGTERM, SIGINT, end of a replay) and
the deadline by which the process must be gone. :class:`Retrier` runs one stage
call until it succeeds, backing off exponentially on the transient errors the
caller names, pausing the source meanwhile (a consumer keeps polling, so its group
membership survives a long outage), reporting not-ready with the reason (liveness is
kept during a back-off; a long one is reported on readiness as a stall), and
giving up with :class:`BatchAbandonedError` only when a stop was requested and its
deadline passed: nothing is acknowledged then, so nothing is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from ingestd.log import get_logger
from monitoring.http_server import HealthState
from monitoring.metrics import IngestMetrics, Stage

from ._backoff import Backoff
from ._errors import BatchAbandonedError

__all__ = ["Pausable", "Retrier", "StopToken"]

logger = get_logger(__name__)

T = TypeVar("T")


class StopToken:
    """A stop request and the time by which the process must have stopped.

    Parameters
    ----------
    grace_s
        Time allowed, from the request, to finish the batch in hand and close.
    """

    def __init__(self, grace_s: float = 30.0) -> None:
        self.grace_s = grace_s
        self._event = threading.Event()
        self._deadline: float | None = None
        self.reason: str | None = None

    def request(self, reason: str = "requested") -> None:
        """Ask the engine to stop after the batch in hand (idempotent; the first deadline holds)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_s
            self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def remaining(self) -> float | None:
        """Seconds left before the deadline, None while no stop was requested."""
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def expired(self) -> bool:
        """A stop was requested and its deadline passed."""
        remaining = self.remaining()
        return remaining is not None and remaining <= 0.0

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, waking early on a stop request; returns whether one came."""
        return self._event.wait(timeout_s)


class Pausable(Protocol):
    """What the retrier needs of a source: pause, keep alive while paused, resume."""

    def pause(self) -> None:
        """Stop fetching."""

    def resume(self) -> None:
        """Fetch again."""

    def keepalive(self, timeout_s: float) -> None:
        """Wait while paused."""


class Retrier:
    """Run a stage call until it succeeds, backing off on transient errors.

    Parameters
    ----------
    stop
        Stop request and deadline.
    initial_backoff_s, max_backoff_s, jitter
        Back-off shape (:class:`~ingestd.config.RetrySettings`).
    health
        Readiness is cleared, with the reason, while a stage keeps failing.
    metrics
        ``ingestd_retries_total{stage}``.

    Attributes
    ----------
    during_backoff
        Called between the slices of each back-off (the runner's stall check), so
        readiness can tell a long back-off from progress.
    """

    def __init__(
        self,
        stop: StopToken,
        *,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        jitter: float = 0.2,
        health: HealthState | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.stop = stop
        self._initial = initial_backoff_s
        self._max = max_backoff_s
        self._jitter = jitter
        self.health = health
        self.metrics = metrics
        self.during_backoff: Callable[[], None] | None = None

    def call(
        self,
        stage: Stage,
        attempt: Callable[[], T],
        *,
        transient: tuple[type[BaseException], ...],
        source: Pausable,
        health_key: str,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Return ``attempt()``, retried on ``transient`` errors (see module notes).

        Raises
        ------
        BatchAbandonedError
            A stop was requested and its deadline passed while still failing.
        """
        backoff = Backoff(self._initial, self._max, self._jitter)
        paused = False
        try:
            while True:
                try:
                    result = attempt()
                except transient as error:
                    if on_error is not None:
                        on_error(error)
                    if self.metrics is not None:
                        self.metrics.retries.labels(stage=stage.value).inc()
                    message = f"{stage.value} failing ({type(error).__name__}: {error}); retrying"
                    if self.health is not None:
                        self.health.set_not_ready(health_key, message)
                    if self.stop.expired():
                        raise BatchAbandonedError(
                            f"stop requested and the {stage.value} stage still fails: {error}"
                        ) from error
                    delay = backoff.next_delay()
                    remaining = self.stop.remaining()
                    if remaining is not None:
                        delay = min(delay, max(remaining, 0.05))
                    log = (
                        logger.warning if backoff.attempts <= 3 or backoff.attempts % 10 == 0 else logger.info
                    )
                    log(
                        "stage_retry",
                        stage=stage.value,
                        attempt=backoff.attempts,
                        delay_s=round(delay, 3),
                        error=str(error),
                        error_type=type(error).__name__,
                    )
                    if not paused:
                        source.pause()
                        paused = True
                    self._keepalive(source, delay)
                    continue
                if backoff.attempts and self.health is not None:
                    self.health.set_ready(health_key)
                    logger.info("stage_recovered", stage=stage.value, attempts=backoff.attempts)
                return result
        finally:
            if paused:
                source.resume()

    def _keepalive(self, source: Pausable, delay: float) -> None:
        """Wait ``delay`` seconds in short slices, keeping the group membership and liveness alive.

        A back-off is the process doing its job while a dependency is away: it beats
        liveness, so a supervisor does not restart a daemon for a registry or broker
        outage (``/readyz`` says what is away, and ``during_backoff`` reports a long one
        as a stall). A call that never returns makes no slices and stops the beat.
        """
        deadline = time.monotonic() + delay
        while True:
            if self.health is not None:
                self.health.beat()
            if self.during_backoff is not None:
                self.during_backoff()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            source.keepalive(min(remaining, 1.0))
