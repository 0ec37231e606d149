"""The Prometheus metrics catalogue shared by the daemon, the mirror and the publisher.

Every metric of the project is declared here, in one container per service, each
built on the :class:`~prometheus_client.CollectorRegistry` it is given (no global
registry, so tests and several services in one process never collide). The
containers expose the ``prometheus_client`` objects as attributes named after the
metric without the ``ingestd_`` prefix and without the ``_total``/unit suffix, so
callers write ``metrics.stage_duration.labels(stage=Stage.register).time()``.

Cardinality is bounded by construction. Closed label sets come from enums
(:class:`~ingestd.work.Outcome`, :class:`~ingestd.work.ButlerKind`,
:class:`Stage`, ...). Open label sets (facility, topic, error class) are passed
through :class:`BoundedLabel`, which normalises a value to a short identifier and,
once a label has seen :data:`MAX_LABEL_VALUES` distinct values, folds any newer
value into ``other``: a bug that puts ids or messages into a label costs one series,
not a Prometheus outage.

``docs/METRICS.md`` is generated from :func:`catalogue` (a test fails when it
drifts); the alert rules and the Grafana dashboard are checked against the same
catalogue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingestd.work import ButlerKind, EventReport, Outcome

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "END_TO_END_LATENCY_BUCKETS",
    "MAX_LABEL_VALUES",
    "OTHER",
    "REPLICATION_LATENCY_BUCKETS",
    "STAGE_DURATION_BUCKETS",
    "UNKNOWN",
    "BoundedLabel",
    "DocumentResult",
    "IngestMetrics",
    "MetricSpec",
    "MirrorMetrics",
    "PublishOutcome",
    "PublisherMetrics",
    "Stage",
    "TransactionResult",
    "catalogue",
    "error_label",
    "kind_label",
]

NAMESPACE: Final = "ingestd"

OTHER: Final = "other"
"""Label value for a kind outside :class:`~ingestd.work.ButlerKind`, or an open label past its cap."""
UNKNOWN: Final = "unknown"
"""Label value when the event could not be decoded far enough to know it (e.g. no facility)."""

MAX_LABEL_VALUES: Final = 64
"""Distinct values an open label (facility, topic, error class) may take before folding into ``other``."""

DEAD_LETTER_OUTCOMES: Final = frozenset({Outcome.conflict, Outcome.rejected})
"""Outcomes whose event is written to the dead-letter topic."""
SUCCESS_OUTCOMES: Final = frozenset({Outcome.registered, Outcome.already_present})
"""Outcomes that count as a successful ingest for ``ingestd_last_success_timestamp_seconds``."""

# Buckets: chosen for the quantity each histogram measures, roughly x2-x2.5 apart.
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""Events per batch: single events up to the largest batch a daemon is configured for (10k)."""
STAGE_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""One stage of one batch: a decode of a few events (~1 ms) up to a slow registry commit (~1 min)."""
END_TO_END_LATENCY_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
    1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
)  # fmt: skip
"""Rucio transfer end to registry commit: ~10 ms on a quiet path to an hour of backlog; the 2 h, 6 h
(USDF retention) and 1 d buckets keep quantiles above an hour honest during backfills and outages."""
REPLICATION_LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
)  # fmt: skip
"""Central record timestamp to local commit: milliseconds on a healthy WAN, up to an hour after an outage."""


class Stage(StrEnum):
    """The timed stages of the ingest engine (``stage`` label)."""

    decode = "decode"
    """Parse raw records into planned work."""
    verify = "verify"
    """Check the files exist with the announced size and checksum."""
    register = "register"
    """Write the batch to the registry, one transaction."""
    dead_letter = "dead_letter"
    """Deliver failed events to the dead-letter topic."""
    commit = "commit"
    """Commit the consumer offsets of the batch."""
    batch = "batch"
    """The whole batch, from first record polled to offsets committed."""


class DocumentResult(StrEnum):
    """What became of one OpenSearch event document (``result`` label)."""

    indexed = "indexed"
    """Accepted by OpenSearch (created or, on a retry, already there)."""
    failed = "failed"
    """Rejected by OpenSearch, or still failing after the last retry."""
    dropped = "dropped"
    """Never sent: the in-memory buffer was full (OpenSearch slow or away)."""


class TransactionResult(StrEnum):
    """How a mirror transaction ended (``result`` label)."""

    committed = "committed"
    aborted = "aborted"


class PublishOutcome(StrEnum):
    """How one publisher message ended (``outcome`` label)."""

    delivered = "delivered"
    """Acknowledged by the central Kafka."""
    failed = "failed"
    """Delivery failed permanently (the row is kept for the next attempt or the operator)."""


_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.:\-]+")
_MAX_LABEL_LENGTH: Final = 64


class BoundedLabel:
    """Normalise values of one open label and cap how many distinct values it takes.

    Parameters
    ----------
    limit
        Distinct values accepted; later new values become :data:`OTHER`.

    Notes
    -----
    Thread-safe: the daemon, its OpenSearch sink and the HTTP scrape run in
    different threads.
    """

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        """Return the label value to use for ``value``."""
        if value is None:
            return UNKNOWN
        text = _LABEL_CHARS.sub("_", str(value)).strip("_")[:_MAX_LABEL_LENGTH] or UNKNOWN
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(text)
            return text


def kind_label(kind: ButlerKind | str | None) -> str:
    """Return the ``kind`` label: a :class:`~ingestd.work.ButlerKind` value, or ``other``."""
    if kind is None:
        return OTHER
    try:
        return ButlerKind(kind).value
    except ValueError:
        return OTHER


def error_label(error: BaseException | type[BaseException] | str) -> str:
    """Return the bounded ``error`` label for an exception: its type name (never its message)."""
    if isinstance(error, str):
        return error
    if isinstance(error, BaseException):
        return type(error).__name__
    return error.__name__


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One row of the catalogue: what ``docs/METRICS.md`` documents."""

    service: str
    name: str
    """Full exposed name (with ``_total`` for counters)."""
    type: str
    labels: tuple[str, ...]
    help: str
    label_values: str = ""
    """Human description of the label values, for the table."""


def _name(metric: str) -> str:
    return f"{NAMESPACE}_{metric}"


def _values(enum: type[StrEnum]) -> str:
    return ", ".join(member.value for member in enum)


_KIND_VALUES = f"{_values(ButlerKind)}, {OTHER}"
_OUTCOME_VALUES = _values(Outcome)


def _spec_row(name: str, type_: str, labels: tuple[str, ...], help_: str, values: str = "") -> MetricSpec:
    return MetricSpec(
        service="", name=_name(name), type=type_, labels=labels, help=help_, label_values=values
    )


def _for_service(service: str, rows: tuple[MetricSpec, ...]) -> tuple[MetricSpec, ...]:
    return tuple(dataclasses.replace(row, service=service) for row in rows)


INGEST_SPECS: Final = _for_service(
    "daemon",
    (
        _spec_row(
            "events_total", "counter", ("outcome", "facility", "kind"),
            "Events that reached a final outcome, by outcome, destination facility and rubin_butler kind.",
            f"outcome: {_OUTCOME_VALUES}; kind: {_KIND_VALUES}; facility: site-map name or unknown",
        ),
        _spec_row(
            "dead_letters_total", "counter", ("error_class",),
            "Events written to the dead-letter topic, by error class (conflict, invalid_json, ...).",
            "error_class: bounded identifier from the decoder or registry, never a message",
        ),
        _spec_row(
            "registered_bytes_total", "counter", ("facility",),
            "Bytes of files newly registered (outcome registered), by facility.",
            "facility: site-map name",
        ),
        _spec_row(
            "batch_size", "histogram", (),
            "Events per engine batch.",
            "buckets 1 .. 10000 events",
        ),
        _spec_row(
            "stage_duration_seconds", "histogram", ("stage",),
            "Wall time of one engine stage for one batch.",
            f"stage: {_values(Stage)}; buckets 1 ms .. 60 s",
        ),
        _spec_row(
            "end_to_end_latency_seconds", "histogram", ("facility",),
            "From Rucio's transfer end (transferred_at) to the registry commit, for registered events.",
            "buckets 10 ms .. 1 h, then 2 h, 6 h, 1 d",
        ),
        _spec_row(
            "consumer_lag_records", "gauge", ("topic", "partition"),
            "Records between the committed offset and the end of each assigned partition.",
        ),
        _spec_row(
            "last_success_timestamp_seconds", "gauge", (),
            "Unix time of the last event registered or found already present.",
        ),
        _spec_row(
            "registry_errors_total", "counter", ("error",),
            "Registry calls that raised, by exception type (transient ones are retried).",
            "error: exception type name",
        ),
        _spec_row(
            "kafka_errors_total", "counter", ("error",),
            "Kafka client errors, by error class or exception type.",
            "error: error class or type name",
        ),
        _spec_row(
            "retries_total", "counter", ("stage",),
            "Retries of a stage after a transient failure.",
            f"stage: {_values(Stage)}",
        ),
        _spec_row(
            "parked_events", "gauge", (),
            "Events parked, waiting for dimension records or a file not yet visible.",
        ),
        _spec_row(
            "parked_oldest_age_seconds", "gauge", (),
            "Age of the longest-waiting event parked in the registry database (0 when none is parked).",
        ),
        _spec_row(
            "redriven_total", "counter", ("result",),
            "Parked events re-driven from the registry database, by the outcome of the re-drive.",
            f"result: {_OUTCOME_VALUES}",
        ),
        _spec_row(
            "opensearch_documents_total", "counter", ("result",),
            "Event documents for OpenSearch, by what became of them.",
            f"result: {_values(DocumentResult)}",
        ),
        _spec_row(
            "opensearch_buffered_documents", "gauge", (),
            "Event documents waiting in the sink's memory buffer for OpenSearch.",
        ),
        _spec_row(
            "build_info", "gauge", ("version",),
            "Always 1; the version label tells which ingestd is running.",
            "version: package version",
        ),
    ),
)  # fmt: skip

MIRROR_SPECS: Final = _for_service(
    "mirror",
    (
        _spec_row(
            "mirror_records_total", "counter", ("topic",),
            "Records copied from the central to the local Kafka, by topic.",
            "topic: mirrored topic",
        ),
        _spec_row(
            "mirror_bytes_total", "counter", ("topic",),
            "Bytes of record keys and values copied, by topic.",
            "topic: mirrored topic",
        ),
        _spec_row(
            "mirror_lag_records", "gauge", ("topic", "partition"),
            "Source end offset minus the last mirrored offset, per source partition.",
        ),
        _spec_row(
            "mirror_replication_latency_seconds", "histogram", (),
            "From the source record timestamp to the commit of the target transaction.",
            "buckets 5 ms .. 1 h",
        ),
        _spec_row(
            "mirror_transactions_total", "counter", ("result",),
            "Target transactions, by how they ended.",
            f"result: {_values(TransactionResult)}",
        ),
        _spec_row(
            "mirror_errors_total", "counter", ("error",),
            "Mirror errors, by error class or exception type.",
            "error: error class or type name",
        ),
    ),
)  # fmt: skip

PUBLISHER_SPECS: Final = _for_service(
    "publisher",
    (
        _spec_row(
            "publisher_messages_total", "counter", ("facility", "outcome"),
            "Transfer events published to the central Kafka, by facility and outcome.",
            f"outcome: {_values(PublishOutcome)}",
        ),
        _spec_row(
            "publisher_backlog_messages", "gauge", (),
            "Messages waiting in the publisher's outbox.",
        ),
        _spec_row(
            "publisher_oldest_message_age_seconds", "gauge", (),
            "Age of the oldest message waiting in the outbox (0 when empty).",
        ),
        _spec_row(
            "publisher_batch_duration_seconds", "histogram", (),
            "Wall time of one publish batch, from read to delivery reports.",
            "buckets 1 ms .. 60 s",
        ),
        _spec_row(
            "publisher_errors_total", "counter", ("error",),
            "Publisher errors, by error class or exception type.",
            "error: error class or type name",
        ),
    ),
)  # fmt: skip


def catalogue() -> tuple[MetricSpec, ...]:
    """Every metric of the project, in documentation order."""
    return INGEST_SPECS + MIRROR_SPECS + PUBLISHER_SPECS


def _spec(specs: Sequence[MetricSpec], name: str) -> MetricSpec:
    full = _name(name)
    for spec in specs:
        if spec.name in (full, f"{full}_total"):
            return spec
    raise KeyError(name)


def _counter(registry: CollectorRegistry, specs: Sequence[MetricSpec], name: str) -> Counter:
    spec = _spec(specs, name)
    return Counter(_name(name), spec.help, spec.labels, registry=registry)


def _gauge(registry: CollectorRegistry, specs: Sequence[MetricSpec], name: str) -> Gauge:
    spec = _spec(specs, name)
    return Gauge(_name(name), spec.help, spec.labels, registry=registry)


def _histogram(
    registry: CollectorRegistry, specs: Sequence[MetricSpec], name: str, buckets: Sequence[float]
) -> Histogram:
    spec = _spec(specs, name)
    return Histogram(_name(name), spec.help, spec.labels, registry=registry, buckets=buckets)


class IngestMetrics:
    """The ingest daemon's metrics.

    Parameters
    ----------
    registry
        Where to register the metrics (the one the service's ``/metrics`` serves).
    version
        Package version for ``ingestd_build_info``; defaults to the installed one.
    facilities
        Facility names from the site map. Their per-outcome event series are
        created at zero, so ``rate()`` and alerts see the first event too.

    Notes
    -----
    :meth:`observe_reports` is the one place final outcomes become metrics, so the
    counts always equal what the engine reported. Timing and lag metrics are
    updated by the engine directly through the attributes.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        version: str | None = None,
        facilities: Iterable[str] = (),
    ) -> None:
        specs = INGEST_SPECS
        self.facility_label = BoundedLabel()
        self.error_class_label = BoundedLabel()
        self.topic_label = BoundedLabel()
        self.error_label = BoundedLabel()

        self.events = _counter(registry, specs, "events")
        self.dead_letters = _counter(registry, specs, "dead_letters")
        self.registered_bytes = _counter(registry, specs, "registered_bytes")
        self.batch_size = _histogram(registry, specs, "batch_size", BATCH_SIZE_BUCKETS)
        self.stage_duration = _histogram(registry, specs, "stage_duration_seconds", STAGE_DURATION_BUCKETS)
        self.end_to_end_latency = _histogram(
            registry, specs, "end_to_end_latency_seconds", END_TO_END_LATENCY_BUCKETS
        )
        self.consumer_lag = _gauge(registry, specs, "consumer_lag_records")
        self.last_success = _gauge(registry, specs, "last_success_timestamp_seconds")
        self.registry_errors = _counter(registry, specs, "registry_errors")
        self.kafka_errors = _counter(registry, specs, "kafka_errors")
        self.retries = _counter(registry, specs, "retries")
        self.parked = _gauge(registry, specs, "parked_events")
        self.parked_oldest_age = _gauge(registry, specs, "parked_oldest_age_seconds")
        self.redriven = _counter(registry, specs, "redriven")
        self.opensearch_documents = _counter(registry, specs, "opensearch_documents")
        self.opensearch_buffered = _gauge(registry, specs, "opensearch_buffered_documents")
        self.build_info = _gauge(registry, specs, "build_info")

        self._last_success_ts = 0.0
        self._last_success_lock = threading.Lock()
        self.build_info.labels(version=version or _installed_version()).set(1)
        for stage in Stage:
            self.stage_duration.labels(stage=stage.value)
            self.retries.labels(stage=stage.value)
        for result in DocumentResult:
            self.opensearch_documents.labels(result=result.value)
        for outcome in Outcome:
            self.redriven.labels(result=outcome.value)
        for facility in facilities:
            label = self.facility_label(facility)
            self.registered_bytes.labels(facility=label)
            for outcome in Outcome:
                for kind in ButlerKind:
                    self.events.labels(outcome=outcome.value, facility=label, kind=kind.value)

    def observe_reports(self, reports: Sequence[EventReport]) -> None:
        """Count final event reports: events, dead letters, registered bytes, latency, last success.

        Parameters
        ----------
        reports
            Final reports of one batch, after its offsets were committed (so a
            crash before the commit never counts an event twice in one process).
        """
        # Counted per batch and label set, then added once each: a labelled child lookup
        # takes a lock and hashes its labels, which per event was most of this method.
        latest_success: datetime | None = None
        facilities: dict[str | None, str] = {}
        kinds: dict[object, str] = {}
        events: dict[tuple[str, str, str], int] = {}
        dead_letters: dict[str, int] = {}
        registered_bytes: dict[str, int] = {}
        latencies: dict[str, list[float]] = {}
        for report in reports:
            summary = report.summary
            outcome = Outcome(report.outcome)
            facility = facilities.get(summary.facility)
            if facility is None:
                facility = facilities[summary.facility] = self.facility_label(summary.facility)
            kind = kinds.get(summary.kind)
            if kind is None:
                kind = kinds[summary.kind] = kind_label(summary.kind)
            key = (outcome.value, facility, kind)
            events[key] = events.get(key, 0) + 1
            if outcome in DEAD_LETTER_OUTCOMES:
                error_class = report.error_class or outcome.value
                dead_letters[error_class] = dead_letters.get(error_class, 0) + 1
            if outcome is Outcome.registered:
                if summary.size is not None and summary.size > 0:
                    registered_bytes[facility] = registered_bytes.get(facility, 0) + summary.size
                if summary.transferred_at is not None and report.committed_at is not None:
                    latency = (report.committed_at - summary.transferred_at).total_seconds()
                    latencies.setdefault(facility, []).append(max(latency, 0.0))
            committed_at = report.committed_at
            if (
                outcome in SUCCESS_OUTCOMES
                and committed_at is not None
                and (latest_success is None or committed_at > latest_success)
            ):
                latest_success = committed_at
        for (outcome_value, facility, kind), count in events.items():
            self.events.labels(outcome=outcome_value, facility=facility, kind=kind).inc(count)
        for error_class, count in dead_letters.items():
            self.dead_letters.labels(error_class=self.error_class_label(error_class)).inc(count)
        for facility, size in registered_bytes.items():
            self.registered_bytes.labels(facility=facility).inc(size)
        for facility, values in latencies.items():
            histogram = self.end_to_end_latency.labels(facility=facility)
            for value in values:
                histogram.observe(value)
        if latest_success is not None:
            with self._last_success_lock:
                self._last_success_ts = max(self._last_success_ts, latest_success.timestamp())
                self.last_success.set(self._last_success_ts)

    def observe_error(self, which: Counter, error: BaseException | str) -> None:
        """Count one error on ``registry_errors``, ``kafka_errors`` with a bounded label."""
        which.labels(error=self.error_label(error_label(error))).inc()

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the lag of one assigned partition (negative values, from racing offsets, read as 0)."""
        self.consumer_lag.labels(topic=self.topic_label(topic), partition=str(partition)).set(max(lag, 0))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition that was revoked, so stale lag does not alert."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(self.topic_label(topic), str(partition))


class MirrorMetrics:
    """The mirror's metrics (central Kafka → facility Kafka)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        specs = MIRROR_SPECS
        self.topic_label = BoundedLabel()
        self.error_label = BoundedLabel()
        self.records = _counter(registry, specs, "mirror_records")
        self.bytes = _counter(registry, specs, "mirror_bytes")
        self.lag = _gauge(registry, specs, "mirror_lag_records")
        self.replication_latency = _histogram(
            registry, specs, "mirror_replication_latency_seconds", REPLICATION_LATENCY_BUCKETS
        )
        self.transactions = _counter(registry, specs, "mirror_transactions")
        self.errors = _counter(registry, specs, "mirror_errors")
        for result in TransactionResult:
            self.transactions.labels(result=result.value)

    def observe_copied(self, topic: str, records: int, size_bytes: int) -> None:
        """Count records and bytes copied for ``topic`` in a committed transaction."""
        label = self.topic_label(topic)
        self.records.labels(topic=label).inc(records)
        self.bytes.labels(topic=label).inc(size_bytes)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the lag of one source partition."""
        self.lag.labels(topic=self.topic_label(topic), partition=str(partition)).set(max(lag, 0))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a source partition no longer mirrored here, so stale lag does not alert."""
        with contextlib.suppress(KeyError):
            self.lag.remove(self.topic_label(topic), str(partition))

    def observe_error(self, error: BaseException | str) -> None:
        """Count one mirror error with a bounded label."""
        self.errors.labels(error=self.error_label(error_label(error))).inc()


class PublisherMetrics:
    """The publisher's metrics (Rucio events → central Kafka)."""

    def __init__(self, registry: CollectorRegistry, *, facilities: Iterable[str] = ()) -> None:
        specs = PUBLISHER_SPECS
        self.facility_label = BoundedLabel()
        self.error_label = BoundedLabel()
        self.messages = _counter(registry, specs, "publisher_messages")
        self.backlog = _gauge(registry, specs, "publisher_backlog_messages")
        self.oldest_message_age = _gauge(registry, specs, "publisher_oldest_message_age_seconds")
        self.batch_duration = _histogram(
            registry, specs, "publisher_batch_duration_seconds", STAGE_DURATION_BUCKETS
        )
        self.errors = _counter(registry, specs, "publisher_errors")
        for facility in facilities:
            for outcome in PublishOutcome:
                self.messages.labels(facility=self.facility_label(facility), outcome=outcome.value)

    def observe_message(self, facility: str | None, outcome: PublishOutcome | str, count: int = 1) -> None:
        """Count ``count`` messages for ``facility`` that ended in ``outcome``."""
        self.messages.labels(
            facility=self.facility_label(facility), outcome=PublishOutcome(outcome).value
        ).inc(count)

    def observe_error(self, error: BaseException | str) -> None:
        """Count one publisher error with a bounded label."""
        self.errors.labels(error=self.error_label(error_label(error))).inc()


def _installed_version() -> str:
    from ingestd import __version__

    return __version__
