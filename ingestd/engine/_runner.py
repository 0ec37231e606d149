"""The loop around the engine: collect a batch, process it, acknowledge it, tell the observers.

While the registry writes one batch, the records that have already arrived are
decoded on a second thread (decoding is pure; the registry's wait on the database
releases the interpreter lock), so on two cores the client and the database work
at once. Batches are still processed and acknowledged strictly one after the other.

The same loop serves ``ingestd run`` (a consumer group, until SIGTERM), ``ingestd
replay`` (a file or a Kafka range, until exhausted) and ``ingestd dlq redrive``.
The order inside one turn is the project's first invariant: the source is
acknowledged only after :meth:`Engine.process` returned, i.e. after the registry
committed and every dead letter was confirmed; observers (metrics, OpenSearch,
progress) see the reports only after the acknowledgement, and can neither block
nor fail the loop.

Liveness follows progress, not the loop: ``/healthz`` is beaten when a batch is
acknowledged, on an idle turn with nothing left to read (no records returned and,
for a consumer group, no records waiting on its partitions), and by the retrier's
back-off while a dependency is away. A loop that turns without any of these --
partitions assigned but never fetched, a call that never returns -- stops beating,
so the supervisor restarts the process after the liveness timeout; and once records
have waited for ``stall_limit_s`` without an acknowledgement (back-offs included),
``/readyz`` says ``stalled: no commit for N s with M records lagging``.

Between batches, and while the source is idle, the runner also re-drives events
parked in the registry database (:mod:`ingestd.engine._pending`) through the same
engine: their rows are deleted only after the engine returned, exactly as a
source is acknowledged.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from butler_registry.interface import TransientRegistryError
from ingestd.log import get_logger
from ingestd.sources import KafkaGroupSource, RawRecord, Source, TransientSourceError
from ingestd.work import EventReport, Outcome
from monitoring.http_server import HealthState, StallWatch
from monitoring.metrics import IngestMetrics, Stage

from ._control import Retrier, StopToken
from ._engine import Decoded, Engine
from ._observers import Observer, ObserverDispatcher
from ._pending import PendingQueue

__all__ = ["Lagging", "Observer", "RunStats", "Runner"]

logger = get_logger(__name__)


@runtime_checkable
class Lagging(Protocol):
    """A source that can tell how many records wait to be read (a consumer group)."""

    def waiting(self) -> int:
        """Records readable now and not returned yet, measured without a broker round trip."""


@dataclass(frozen=True, slots=True)
class _Batch:
    """Records in hand and their decoding, possibly still running on the decode thread."""

    records: list[RawRecord]
    decoded: Future[Decoded]


@dataclass
class RunStats:
    """Counts of one run, for the summary line and the exit code."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    events: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    busy_s: float = 0.0
    """Time spent processing batches (excludes waiting for events)."""
    stage_s: dict[str, float] = field(default_factory=dict)
    """Time per engine stage, summed over batches (decode, verify, register, dead_letter, commit)."""
    first_batch_at: float | None = None
    """Monotonic time the first batch was in hand."""
    last_ack_at: float | None = None
    """Monotonic time the last batch was acknowledged."""

    @property
    def elapsed_s(self) -> float:
        """Wall time of the run so far."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Events per second of wall time."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """Plain data for JSON summaries."""
        return {
            "events": self.events,
            "batches": self.batches,
            "outcomes": {outcome.value: self.outcomes.get(outcome, 0) for outcome in Outcome},
            "elapsed_s": round(self.elapsed_s, 3),
            "busy_s": round(self.busy_s, 3),
            "events_per_s": round(self.rate, 1),
            "stage_s": {stage: round(value, 3) for stage, value in sorted(self.stage_s.items())},
        }

    @property
    def flowing_rate(self) -> float:
        """Events per second from the first batch in hand to the last acknowledgement (no idle start)."""
        if self.first_batch_at is None or self.last_ack_at is None or self.last_ack_at <= self.first_batch_at:
            return 0.0
        return self.events / (self.last_ack_at - self.first_batch_at)


class Runner:
    """Drive one source through the engine until it is exhausted or a stop is requested.

    Parameters
    ----------
    engine
        The stages.
    source
        Where records come from.
    stop
        Stop request (signals, end of replay).
    max_events, max_wait_s
        Batch size and how long to wait for a batch to fill.
    observers
        Called with each batch's reports after acknowledgement.
    health
        Liveness beaten on progress (see the module notes); readiness from the
        source, the registry and the stall check.
    metrics
        Batch size and duration, commit duration, lag.
    registry_ping_interval_s
        When idle this long since the last registry success, ping it so readiness
        follows the database even without traffic.
    lag_interval_s
        How often consumer lag is measured (group sources).
    read_ahead
        Decode the records that already arrived while the current batch is written.
    pending
        Events parked in the registry database, re-driven between batches (the daemon).
    redrive_batches
        Most batches of parked events re-driven in one go, so live events keep flowing.
    stall_limit_s
        With ``health``: how long records may wait without an acknowledgement before
        readiness reports the stall.
    """

    def __init__(
        self,
        engine: Engine,
        source: Source,
        *,
        stop: StopToken,
        max_events: int = 2_000,
        max_wait_s: float = 1.0,
        observers: Sequence[Observer] = (),
        health: HealthState | None = None,
        metrics: IngestMetrics | None = None,
        retry_topic: str | None = None,
        registry_ping_interval_s: float = 30.0,
        lag_interval_s: float = 15.0,
        read_ahead: bool = True,
        pending: PendingQueue | None = None,
        redrive_batches: int = 5,
        stall_limit_s: float = 120.0,
    ) -> None:
        self.engine = engine
        self.source = source
        self.stop = stop
        self.max_events = max_events
        self.max_wait_s = max_wait_s
        self.observers = list(observers)
        self._dispatcher = ObserverDispatcher(self.observers)
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self.health = health
        self.metrics = metrics
        self.retry_topic = retry_topic
        self.retrier: Retrier = engine.retrier
        self._ping_interval = registry_ping_interval_s
        self._lag_interval = lag_interval_s
        self._read_ahead = read_ahead
        self._last_lag = 0.0
        self._lag_series: set[tuple[str, int]] = set()
        self.stats = RunStats()
        self.pending = pending
        self._redrive_batches = redrive_batches
        self._last_pending_gauge = 0.0
        self._retry_parked = 0
        self._store_parked = 0
        self._stall = StallWatch(health, stall_limit_s) if health is not None else None
        if health is not None:
            # A back-off keeps liveness (the retrier beats it) but is no progress: a long one is a stall.
            self.retrier.during_backoff = lambda: self._check_stall(self._waiting())

    def run(self) -> RunStats:
        """Process batches until the source is exhausted or a stop is requested.

        Raises
        ------
        FatalEngineError, FatalSourceError
            Exit non-zero; nothing unfinished was acknowledged.
        BatchAbandonedError
            The stop deadline passed during a transient failure.
        """
        self._dispatcher.start()
        self._made_progress()
        ahead: _Batch | None = None
        try:
            while not self.stop.requested:
                if ahead is None:
                    records = self._collect(wait=True)
                    if not records:
                        if self.source.exhausted:
                            break
                        self._check_idle()
                        self._maintain(idle=True)
                        continue
                    ahead = self._decode_ahead(records)
                current, ahead = ahead, None
                # What has already arrived is decoded while the registry writes the current batch.
                if self._read_ahead and not self.source.exhausted and not self.stop.requested:
                    following = self._collect(wait=False)
                    if following:
                        ahead = self._decode_ahead(following)
                self._turn(current)
                self._made_progress()
                self._maintain(idle=False)
        finally:
            # A batch read ahead but not processed is simply not acknowledged: it is read again.
            self.stats.finished = time.monotonic()
            self._decoder.shutdown(wait=True, cancel_futures=True)
            self._dispatcher.close()
        return self.stats

    def _decode_ahead(self, records: list[RawRecord]) -> _Batch:
        return _Batch(records, self._decoder.submit(self.engine.decode, records))

    def _made_progress(self) -> None:
        """A batch was acknowledged, or nothing is left to read: beat liveness, end a stall."""
        if self._stall is not None and self._stall.progress():
            logger.info("ingest_stall_over")

    def _check_idle(self) -> None:
        """An idle turn (no records returned): progress only if nothing waits to be read.

        Records waiting on the assigned partitions while none are returned is the
        failure the stall check exists for (partitions assigned but never fetched).
        """
        if self._stall is None:
            return
        waiting = self._waiting()
        if waiting == 0:
            self._made_progress()
        else:
            self._check_stall(waiting)

    def _waiting(self) -> int:
        """Records the source could deliver now and did not (0 when it cannot tell)."""
        if not isinstance(self.source, Lagging):
            return 0
        try:
            return self.source.waiting()
        except Exception:
            logger.exception("waiting_measure_failed")
            return 0

    def _check_stall(self, waiting: int) -> None:
        """Report the stall on readiness once records waited ``stall_limit_s`` without a commit."""
        if self._stall is None:
            return
        limit_s = self._stall.limit_s
        stalled_s = self._stall.check(
            lambda stalled_s: (
                f"no commit for {stalled_s:.0f} s with {waiting} records lagging "
                f"(stall limit {limit_s:.0f} s)"
            )
        )
        if stalled_s is None:
            return
        if self.metrics is not None:
            self.metrics.observe_error(self.metrics.kafka_errors, "stalled")
        logger.error("ingest_stalled", stalled_s=round(stalled_s), waiting=waiting)

    def _collect(self, *, wait: bool) -> list[RawRecord]:
        """Up to ``max_events`` records, waiting at most ``max_wait_s`` for the batch to fill.

        Without ``wait``, only what the client already holds (a read-ahead that must
        not delay the batch in hand).
        """
        deadline = time.monotonic() + (self.max_wait_s if wait else 0.0)
        records: list[RawRecord] = []
        while len(records) < self.max_events and not self.stop.requested:
            remaining = max(deadline - time.monotonic(), 0.0)
            wanted = self.max_events - len(records)

            # Short polls keep a stop request from waiting out a long max_wait_s.
            def poll(wanted: int = wanted, timeout: float = min(remaining, 0.5)) -> list[RawRecord]:
                return self.source.poll(wanted, timeout)

            got = self.retrier.call(
                Stage.batch,
                poll,
                transient=(TransientSourceError,),
                source=self.source,
                health_key="kafka",
                on_error=self._kafka_error,
            )
            records.extend(got)
            if remaining <= 0.0 or self.source.exhausted:
                break
        return records

    def _turn(self, batch: _Batch) -> None:
        records = batch.records
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.monotonic()
        started = time.perf_counter()
        result = self.engine.process(records, self.source, decoded=batch.decoded.result())
        commit_started = time.perf_counter()
        self.retrier.call(
            Stage.commit,
            lambda: self.source.acknowledge(records),
            transient=(TransientSourceError,),
            source=self.source,
            health_key="kafka",
            on_error=self._kafka_error,
        )
        finished = time.perf_counter()
        if self.metrics is not None:
            self.metrics.stage_duration.labels(stage=Stage.commit.value).observe(finished - commit_started)
            self.metrics.stage_duration.labels(stage=Stage.batch.value).observe(finished - started)
            self.metrics.batch_size.observe(len(records))
        self.stats.batches += 1
        self.stats.events += len(result.reports)
        self.stats.busy_s += finished - started
        for stage, seconds in (*result.durations.items(), ("commit", finished - commit_started)):
            self.stats.stage_s[stage] = self.stats.stage_s.get(stage, 0.0) + seconds
        self.stats.last_ack_at = time.monotonic()
        self.stats.outcomes.update(report.outcome for report in result.reports)
        self._observe(result.reports)
        logger.debug(
            "batch_done",
            events=len(records),
            letters=result.letters,
            seconds=round(finished - started, 4),
            **{f"{stage}_s": round(value, 4) for stage, value in result.durations.items()},
        )

    def _observe(self, reports: Sequence[EventReport]) -> None:
        self._dispatcher.submit(reports)

    def _kafka_error(self, error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.observe_error(self.metrics.kafka_errors, error)

    def _maintain(self, *, idle: bool) -> None:
        """Readiness, lag, an idle registry ping, and the re-drive of parked events.

        Only the re-drive may raise, exactly as a batch would (fatal errors, a stop during a back-off).
        """
        if self.health is not None:
            ready, reason = self.source.readiness()
            if ready:
                self.health.set_ready("kafka")
            else:
                self.health.set_not_ready("kafka", reason)
        now = time.monotonic()
        lag_due = now - self._last_lag >= self._lag_interval
        if self.metrics is not None and isinstance(self.source, KafkaGroupSource) and lag_due:
            self._last_lag = now
            self._report_lag(self.source, self.metrics)
        if self.pending is not None:
            self._redrive(self.pending)
            refresh = max(self.pending.poll_interval_s, 5.0)
            if self.metrics is not None and now - self._last_pending_gauge >= refresh:
                self._last_pending_gauge = now
                self._report_pending(self.pending, self.metrics)
        if idle and now - self.engine.last_registry_success >= self._ping_interval:
            self._ping()

    def _redrive(self, pending: PendingQueue) -> None:
        """Run due parked events through the engine, then delete the rows of those that did not park again.

        The source in hand is kept alive while a stage backs off (it is not
        acknowledged: its records are not part of these batches).
        """
        for _ in range(self._redrive_batches):
            if self.stop.requested or not pending.due:
                return
            records = self.retrier.call(
                Stage.batch,
                lambda: pending.collect(self.max_events),
                transient=(TransientRegistryError,),
                source=self.source,
                health_key="registry",
                on_error=self._registry_error,
            )
            if not records:
                return
            started = time.perf_counter()
            try:
                result = self.engine.process(records, self.source)
            except BaseException:
                pending.forget(records)  # their leases expire; another turn takes them again
                raise
            self.retrier.call(
                Stage.commit,
                functools.partial(pending.acknowledge, records),
                transient=(TransientRegistryError,),
                source=self.source,
                health_key="registry",
                on_error=self._registry_error,
            )
            self.stats.batches += 1
            self.stats.events += len(result.reports)
            self.stats.busy_s += time.perf_counter() - started
            self.stats.outcomes.update(report.outcome for report in result.reports)
            if self.metrics is not None:
                for report in result.reports:
                    self.metrics.redriven.labels(result=report.outcome.value).inc()
            self._observe(result.reports)
            logger.info(
                "parked_batch_redriven",
                events=len(records),
                registered=result.count(Outcome.registered),
                already_present=result.count(Outcome.already_present),
                parked=result.count(Outcome.parked),
                dead_lettered=result.count(Outcome.rejected) + result.count(Outcome.conflict),
                seconds=round(time.perf_counter() - started, 3),
            )

    def _report_pending(self, pending: PendingQueue, metrics: IngestMetrics) -> None:
        try:
            summary = pending.summary()
        except Exception as error:
            logger.warning("parked_count_failed", error=str(error), error_type=type(error).__name__)
            return
        self._store_parked = summary.events
        metrics.parked.set(summary.events + self._retry_parked)
        metrics.parked_oldest_age.set(pending.oldest_age_s(summary))

    def _registry_error(self, error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.observe_error(self.metrics.registry_errors, error)

    def _report_lag(self, source: KafkaGroupSource, metrics: IngestMetrics) -> None:
        try:
            lags = source.lag()
        except Exception:
            logger.exception("lag_measure_failed")
            return
        parked = 0
        reported = set()
        for lag in lags:
            metrics.set_consumer_lag(lag.topic, lag.partition, lag.lag)
            reported.add((lag.topic, lag.partition))
            if lag.topic == self.retry_topic:
                parked += lag.lag
        for topic, partition in self._lag_series - reported:
            metrics.forget_partition(topic, partition)  # revoked: stale lag must not alert
        self._lag_series = reported
        if self.retry_topic is not None:
            # Events waiting in the retry topic for this group (partitions paused until their
            # not-before time count what they held when last fetched), plus those in the registry.
            self._retry_parked = parked
            metrics.parked.set(parked + self._store_parked)

    def _ping(self) -> None:
        try:
            self.engine.registry.ping()
        except Exception as error:
            if self.metrics is not None:
                self.metrics.observe_error(self.metrics.registry_errors, error)
            if self.health is not None:
                self.health.set_not_ready(
                    "registry", f"registry unreachable: {type(error).__name__}: {error}"
                )
            logger.warning("registry_ping_failed", error=str(error), error_type=type(error).__name__)
        else:
            if self.health is not None:
                self.health.set_ready("registry")
        self.engine.last_registry_success = time.monotonic()
