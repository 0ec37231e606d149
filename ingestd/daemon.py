"""The processes ingestd runs: the daemon, a replay, a dead-letter re-drive, a dead-letter listing.

Each is a plain function taking validated settings and returning an exit code,
so it works without the CLI (tests call them directly):

==============================  ====================================================
exit code                        meaning
==============================  ====================================================
0 (:attr:`ExitCode.ok`)          done, or stopped cleanly by a signal
1 (:attr:`ExitCode.failure`)     a fatal error (registry schema, Kafka credentials, ...)
2 (:attr:`ExitCode.config`)      the settings cannot work; the message says which field
3 (:attr:`ExitCode.forced`)      the shutdown bound passed and the process was ended; nothing
                                 unfinished was acknowledged, so nothing is lost
==============================  ====================================================
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from confluent_kafka import KafkaException

from ingestd.config import ConfigurationError, IngestdSettings
from ingestd.deadletter import DeadLetterInfo, Destination, read_dead_letter_file
from ingestd.engine import (
    Admission,
    BatchAbandonedError,
    FatalEngineError,
    Observer,
    Runner,
    RunStats,
    StopToken,
)
from ingestd.engine._assembly import Pipeline, build_pipeline, subscription, wait_for_topics
from ingestd.engine._progress import ProgressReporter, format_summary
from ingestd.gc_tuning import tune_gc
from ingestd.log import get_logger
from ingestd.sources import (
    FatalSourceError,
    JsonlFileSource,
    KafkaGroupSource,
    KafkaRangeSource,
    RangeBound,
    RawRecord,
    Source,
    TopicSelection,
)
from monitoring.http_server import HealthServer, HealthState

__all__ = [
    "DeadLetterFilter",
    "ExitCode",
    "finite_run",
    "list_dead_letters",
    "load_for_command",
    "parse_time",
    "redrive_group",
    "run_daemon",
    "run_redrive",
    "run_replay",
]

logger = get_logger(__name__)


class ExitCode(IntEnum):
    """Process exit codes (see the module table)."""

    ok = 0
    failure = 1
    config = 2
    forced = 3


# -- command helpers ----------------------------------------------------------------------------


def load_for_command(
    config_file: Path | None, *, service: str = "ingestd", **overrides: Any
) -> IngestdSettings:
    """Load settings for a command and configure logging from them.

    Raises
    ------
    ConfigurationError
        The message names the file, the field and the problem.
    """
    from ingestd.config import load_settings
    from ingestd.log import configure_logging

    settings = load_settings(config_file, **overrides)
    configure_logging(settings.logging, service=service)
    return settings


_RELATIVE_TIME = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """Parse ``2025-03-20T12:00:00Z``, ``2025-03-20 12:00`` (UTC) or a relative ``30m``/``6h``/``2d`` (ago).

    Raises
    ------
    ValueError
        With the accepted forms.
    """
    value = text.strip()
    match = _RELATIVE_TIME.match(value)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return (now or datetime.now(UTC)) - timedelta(seconds=amount * _UNITS[unit])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2025-03-20T12:00:00Z; no zone means UTC) "
            "or an age such as 30m, 6h, 2d"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- signals and the shutdown bound -------------------------------------------------------------


@contextmanager
def _stop_on_signals(stop: StopToken, *, forced_exit_after_s: float | None) -> Iterator[None]:
    """SIGTERM/SIGINT request a stop; a second one, or the bound passing, ends the process at once.

    Ending the process at once is safe: the source is acknowledged only after
    everything of a batch is durable, so whatever was unfinished is read again.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            logger.warning("second_signal_exiting_now", signal=name)
            os._exit(ExitCode.forced)
        received.append(signum)
        logger.info("stop_requested", signal=name, grace_s=stop.grace_s)
        stop.request(name)
        if forced_exit_after_s is not None:
            _start_watchdog(forced_exit_after_s)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_watchdog(after_s: float) -> None:
    def watch() -> None:
        threading.Event().wait(after_s)
        logger.error("shutdown_bound_passed_exiting", after_s=after_s)
        sys.stderr.flush()
        os._exit(ExitCode.forced)

    threading.Thread(target=watch, name="shutdown-watchdog", daemon=True).start()


# -- the daemon -----------------------------------------------------------------------------------


def run_daemon(
    settings: IngestdSettings,
    *,
    ready_file: Path | None = None,
    stop: StopToken | None = None,
    observers: Sequence[Observer] = (),
) -> int:
    """Run the ingest daemon until SIGTERM/SIGINT, ``stop``, or a fatal error.

    Parameters
    ----------
    settings
        Validated settings; ``kafka`` is required.
    ready_file
        Written with the health port once serving (tests and scripts use it to find the port).
    stop
        A stop token to share with the caller (a daemon embedded in a thread); signals
        also use it when running in the main thread.
    observers
        Further observers of each batch's reports.
    """
    try:
        kafka = settings.require_kafka("run")
        selection = subscription(settings)
    except ConfigurationError as error:
        print(f"ingestd run: {error}", file=sys.stderr)
        return ExitCode.config
    stop = stop or StopToken(settings.lifecycle.shutdown_timeout_s)
    health = HealthState(liveness_timeout_s=settings.lifecycle.liveness_timeout_s)
    from prometheus_client import CollectorRegistry

    prometheus = CollectorRegistry()
    server: HealthServer | None = None
    if settings.http.enabled:
        try:
            server = HealthServer(
                health, prometheus, host=settings.http.host, port=settings.http.port
            ).start()
        except OSError as error:
            print(
                f"ingestd run: cannot serve the health port on {settings.http.host}:{settings.http.port}: "
                f"{error.strerror or error}; set http.port (INGESTD_HTTP_PORT) or http.host",
                file=sys.stderr,
            )
            return ExitCode.config
        logger.info("health_server_listening", host=settings.http.host, port=server.port)
    if ready_file is not None:
        ready_file.write_text(json.dumps({"port": server.port if server else None, "pid": os.getpid()}))
    pipeline: Pipeline | None = None
    source: KafkaGroupSource | None = None
    # The watchdog leaves room for the batch in hand and closing the clients.
    with _stop_on_signals(stop, forced_exit_after_s=settings.lifecycle.shutdown_timeout_s + 5.0):
        try:
            health.set_not_ready("starting", "connecting to the registry and Kafka")
            pipeline = build_pipeline(
                settings, stop=stop, health=health, prometheus=prometheus, extra_observers=observers
            )
            if settings.dead_letters.create_topics:
                wait_for_topics(settings, pipeline.engine.retrier)
            source = KafkaGroupSource(
                kafka,
                settings.consumer.group_id,
                selection,
                retry_topic=settings.dead_letters.retry_topic_name,
                max_poll_interval_s=settings.consumer.max_poll_interval_s,
                session_timeout_s=settings.consumer.session_timeout_s,
            )
            health.set_ready("starting")
            health.set_not_ready("kafka", "joining the consumer group")
            logger.info(
                "daemon_started",
                group_id=settings.consumer.group_id,
                subscription=selection.regex,
                registry=settings.registry.display_url() if not settings.uses_daf_butler else "daf_butler",
                dead_letters=pipeline.dead_letters.description,
                batch=settings.batching.max_events,
            )
            runner = Runner(
                pipeline.engine,
                source,
                stop=stop,
                max_events=settings.batching.max_events,
                max_wait_s=settings.batching.max_wait_s,
                observers=pipeline.observers,
                health=health,
                metrics=pipeline.metrics,
                retry_topic=settings.dead_letters.retry_topic_name,
                pending=pipeline.pending,
                stall_limit_s=settings.lifecycle.stall_limit_s,
            )
            tune_gc()
            stats = runner.run()
            logger.info("daemon_stopped", reason=stop.reason, **stats.as_dict())
            return ExitCode.ok
        except BatchAbandonedError as error:
            logger.warning("daemon_stopped_batch_unfinished", error=str(error))
            return ExitCode.ok
        except ConfigurationError as error:
            logger.error("daemon_configuration_error", error=str(error))
            print(f"ingestd run: {error}", file=sys.stderr)
            return ExitCode.config
        except (FatalEngineError, FatalSourceError, KafkaException) as error:
            logger.error("daemon_fatal_error", error=str(error), error_type=type(error).__name__)
            print(f"ingestd run: {type(error).__name__}: {error}", file=sys.stderr)
            return ExitCode.failure
        finally:
            health.set_not_ready("stopping", "shutting down")
            if source is not None:
                source.close()
            if pipeline is not None:
                pipeline.close(timeout_s=min(settings.lifecycle.shutdown_timeout_s, 10.0))
            if server is not None:
                server.stop()


# -- replay ---------------------------------------------------------------------------------------


def finite_run(
    settings: IngestdSettings,
    source: Source,
    *,
    what: str,
    show_progress: bool | None,
    summary_json: bool,
    out: TextIO,
    ensure_topics: bool,
    admit: Admission | None = None,
    describe: Callable[[], Mapping[str, object]] | None = None,
) -> int:
    """Run a finite source to its end with the shared engine; print progress and a summary.

    ``describe`` adds the source's own figures to the summary (a backfill's listing counts).
    """
    stop = StopToken(settings.lifecycle.shutdown_timeout_s)
    pipeline: Pipeline | None = None
    reporter = ProgressReporter(source.progress, tty=show_progress) if show_progress is not False else None
    with _stop_on_signals(stop, forced_exit_after_s=settings.lifecycle.shutdown_timeout_s + 5.0):
        try:
            pipeline = build_pipeline(
                settings,
                stop=stop,
                extra_observers=[reporter] if reporter is not None else [],
                admit=admit,
            )
            if ensure_topics and settings.kafka is not None and settings.dead_letters.create_topics:
                wait_for_topics(settings, pipeline.engine.retrier)
            runner = Runner(
                pipeline.engine,
                source,
                stop=stop,
                max_events=settings.batching.max_events,
                max_wait_s=settings.batching.max_wait_s,
                observers=pipeline.observers,
                metrics=pipeline.metrics,
            )
            tune_gc()
            stats: RunStats = runner.run()
        except BatchAbandonedError as error:
            print(
                f"{what} stopped with a batch unfinished (it was not acknowledged): {error}", file=sys.stderr
            )
            return ExitCode.ok
        except ConfigurationError as error:
            print(f"{what}: {error}", file=sys.stderr)
            return ExitCode.config
        except (FatalEngineError, FatalSourceError, KafkaException) as error:
            print(f"{what} failed: {type(error).__name__}: {error}", file=sys.stderr)
            return ExitCode.failure
        finally:
            if reporter is not None:
                reporter.finish()
            source.close()
            if pipeline is not None:
                pipeline.close()
    assert pipeline is not None
    extra = dict(describe()) if describe is not None else {}
    if summary_json:
        out.write(
            json.dumps(
                {"what": what, **stats.as_dict(), "dead_letters": pipeline.dead_letters.description, **extra}
            )
        )
        out.write("\n")
    else:
        out.write(format_summary(stats, what=what, dead_letters=pipeline.dead_letters.description) + "\n")
        for key, value in extra.items():
            out.write(f"  {key:16} {value}\n")
    if stop.requested:
        print(
            f"{what} interrupted ({stop.reason}); what was done is kept, run it again to finish",
            file=sys.stderr,
        )
    return ExitCode.ok


def run_replay(
    settings: IngestdSettings,
    *,
    from_file: Path | None = None,
    resume_marker: Path | None = None,
    topics: Sequence[str] = (),
    start: RangeBound | None = None,
    end: RangeBound | None = None,
    show_progress: bool | None = None,
    summary_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Replay events through the engine: from a JSON-lines file, or a Kafka range without a group.

    Idempotent: events already registered come out ``already_present``.
    """
    out = out or sys.stdout
    source: Source
    try:
        if from_file is not None:
            source = JsonlFileSource(
                from_file, resume_marker=resume_marker, max_line_bytes=settings.planning.max_event_bytes
            )
            what = f"replay of {from_file}"
        else:
            kafka = settings.require_kafka("replay --from-kafka")
            selection = (
                TopicSelection(topics=tuple(topics), aliases=tuple(settings.consumer.source_aliases))
                if topics
                else subscription(settings, with_retry_topic=False)
            )
            source = KafkaRangeSource(kafka, selection, start=start, end=end)
            what = f"replay of Kafka {', '.join(topics) or selection.regex}"
    except ConfigurationError as error:
        print(f"ingestd replay: {error}", file=sys.stderr)
        return ExitCode.config
    return finite_run(
        settings,
        source,
        what=what,
        show_progress=show_progress,
        summary_json=summary_json,
        out=out,
        ensure_topics=True,
    )


# -- dead letters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a listing or re-drive takes."""

    error_classes: frozenset[str] = frozenset()
    since: datetime | None = None
    """Only dead letters that failed at or after this time."""

    def accepts(self, info: DeadLetterInfo | None) -> bool:
        """Whether a dead letter with ``info`` passes the filter."""
        if info is None:
            return not self.error_classes and self.since is None
        if self.error_classes and info.error_class not in self.error_classes:
            return False
        return self.since is None or info.failed_at >= self.since

    @property
    def empty(self) -> bool:
        """No condition at all."""
        return not self.error_classes and self.since is None


def redrive_group(settings: IngestdSettings, chosen: DeadLetterFilter, group: str | None) -> str:
    """The re-drive consumer group: given, or ``<redrive_group>[.<error classes>]``.

    Each filter by error class keeps its own progress, so re-driving one class
    after a fix does not pass over the dead letters of the others for a later
    unfiltered re-drive.
    """
    if group:
        return group
    base = settings.redrive_group
    if chosen.error_classes:
        return f"{base}.{'+'.join(sorted(chosen.error_classes))}"
    return base


def run_redrive(
    settings: IngestdSettings,
    *,
    chosen: DeadLetterFilter | None = None,
    group: str | None = None,
    show_progress: bool | None = None,
    summary_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Feed dead letters back through the engine after a fix, from this group's position to the current end.

    The re-drive has its own consumer group on the dead-letter topic, so running
    it twice does not re-drive the same dead letter twice; dead letters outside
    the filter are passed over for that group. Events that fail again are
    dead-lettered again with one more attempt (beyond the end this run stops at).
    """
    out = out or sys.stdout
    chosen = chosen or DeadLetterFilter()
    try:
        kafka = settings.require_kafka("dlq redrive")
    except ConfigurationError as error:
        print(f"ingestd dlq redrive: {error}", file=sys.stderr)
        return ExitCode.config
    group_id = redrive_group(settings, chosen, group)

    def admit(record: RawRecord) -> str | None:
        if chosen.accepts(DeadLetterInfo.from_headers(record.headers)):
            return None
        return "outside the re-drive filter (passed over for this re-drive group)"

    source = KafkaGroupSource(
        kafka,
        group_id,
        TopicSelection(extra_topics=(settings.dead_letters.topic,), aliases=()),
        origin_kind="dlq",
        stop_at_end=True,
        max_poll_interval_s=settings.consumer.max_poll_interval_s,
        session_timeout_s=min(settings.consumer.session_timeout_s, 10.0),
    )
    return finite_run(
        settings,
        source,
        what=f"re-drive of {settings.dead_letters.topic} (group {group_id})",
        show_progress=show_progress,
        summary_json=summary_json,
        out=out,
        ensure_topics=True,
        admit=None if chosen.empty else admit,
    )


def list_dead_letters(
    settings: IngestdSettings,
    *,
    chosen: DeadLetterFilter | None = None,
    retry_topic: bool = False,
    from_file: Path | None = None,
    limit: int | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print dead letters (or parked events, with ``retry_topic``), oldest first, without consuming them."""
    out = out or sys.stdout
    chosen = chosen or DeadLetterFilter()
    shown = 0
    entries: Iterator[tuple[DeadLetterInfo | None, bytes, str]]
    if from_file is not None:
        try:
            rows = read_dead_letter_file(from_file)
        except (OSError, ValueError) as error:
            print(f"ingestd dlq list: cannot read {from_file}: {error}", file=sys.stderr)
            return ExitCode.config
        wanted = Destination.retry if retry_topic else Destination.dead_letter
        entries = ((info, value, str(from_file)) for info, value, where in rows if where is wanted)
    else:
        try:
            kafka = settings.require_kafka("dlq list")
        except ConfigurationError as error:
            print(f"ingestd dlq list: {error}", file=sys.stderr)
            return ExitCode.config
        topic = settings.dead_letters.retry_topic_name if retry_topic else settings.dead_letters.topic
        source = KafkaRangeSource(
            kafka,
            TopicSelection(extra_topics=(topic,), aliases=()),
            start=RangeBound(time=chosen.since) if chosen.since else None,
            origin_kind="dlq",
        )
        entries = _kafka_entries(source)
    try:
        for info, value, where in entries:
            if not chosen.accepts(info):
                continue
            out.write(_format_dead_letter(info, value, where, as_json=as_json) + "\n")
            shown += 1
            if limit is not None and shown >= limit:
                break
    except FatalSourceError as error:
        print(f"ingestd dlq list: {error}", file=sys.stderr)
        return ExitCode.failure
    if not as_json:
        print(f"{shown} dead letters shown", file=sys.stderr)
    return ExitCode.ok


def _kafka_entries(source: KafkaRangeSource) -> Iterator[tuple[DeadLetterInfo | None, bytes, str]]:
    try:
        while not source.exhausted:
            for record in source.poll(500, 1.0):
                yield DeadLetterInfo.from_headers(record.headers), record.value, str(record.position)
    finally:
        source.close()


def _format_dead_letter(info: DeadLetterInfo | None, value: bytes, where: str, *, as_json: bool) -> str:
    if as_json:
        entry: dict[str, object] = {"at": where, "bytes": len(value)}
        if info is not None:
            entry.update(
                error_class=info.error_class,
                reason=info.reason,
                outcome=info.outcome.value,
                origin=str(info.origin),
                failed_at=info.failed_at.isoformat(),
                attempts=info.attempts,
                not_before=info.not_before.isoformat() if info.not_before else None,
            )
        entry["value"] = value[:2_000].decode(errors="replace")
        return json.dumps(entry)
    if info is None:
        return f"{where}  (no ingestd headers)  {len(value)} bytes"
    reason = info.reason if len(info.reason) <= 160 else info.reason[:157] + "..."
    return (
        f"{info.failed_at.isoformat(timespec='seconds')}  {info.error_class:20}  {info.outcome.value:9}"
        f"  from {info.origin}  attempts={info.attempts}  at {where}\n    {reason}"
    )
