"""Table mode: Rucio's ``messages`` rows → Kafka records → ``messages_history``, one transaction per batch.

For each batch: claim the oldest wanted rows (locked, skipping rows another
publisher holds), complete their payloads from DID metadata in one query, route
each by the site map, produce them all, wait for every delivery report, then move
exactly the confirmed rows to history and commit. Rows whose record failed stay in
``messages``, unlocked by the commit, for a later batch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ingestd.log import get_logger
from monitoring.metrics import PublisherMetrics, PublishOutcome

from ._delivery import KafkaDelivery
from ._errors import SourceUnavailableError
from ._loop import BatchResult, RetryBook
from ._messages import (
    HEADER_EVENT_TYPE,
    HEADER_MESSAGE_ID,
    HEADER_PUBLISHER,
    HEADER_UNROUTED,
    OutgoingRecord,
    RucioMessage,
    encode_envelope,
    parse_payload,
)
from ._metadata import Enricher
from ._routing import Router, did_key
from ._source import MessageTable

__all__ = ["TablePublisher"]

logger = get_logger(__name__)


class TablePublisher:
    """Publishes Rucio's ``messages`` table, one claimed batch at a time.

    Parameters
    ----------
    table
        The shared queue on Rucio's table.
    enricher
        Completes payloads from DID metadata (through the claim's own connection).
    router
        Site-map routing.
    delivery
        The Kafka side.
    metrics
        Publisher metrics.
    batch_size
        Rows per claim.
    instance_id
        Written into every record's ``ingestd-publisher`` header.
    """

    def __init__(
        self,
        table: MessageTable,
        enricher: Enricher,
        router: Router,
        delivery: KafkaDelivery,
        metrics: PublisherMetrics,
        *,
        batch_size: int,
        instance_id: str,
    ) -> None:
        self.table = table
        self.enricher = enricher
        self.router = router
        self.delivery = delivery
        self.metrics = metrics
        self.batch_size = batch_size
        self._publisher_header = instance_id.encode()
        self.retry_book = RetryBook()

    def build_record(
        self, message: RucioMessage, payload: dict[str, Any] | None, changed: bool
    ) -> OutgoingRecord:
        """The Kafka record of one row (its route, key, envelope and headers)."""
        route = self.router.route(payload)
        headers: list[tuple[str, bytes]] = [
            (HEADER_MESSAGE_ID, message.id.hex.encode()),
            (HEADER_EVENT_TYPE, message.event_type.encode()),
            (HEADER_PUBLISHER, self._publisher_header),
        ]
        if route.unrouted is not None:
            headers.append((HEADER_UNROUTED, route.unrouted.value.encode()))
        return OutgoingRecord(
            topic=route.topic,
            key=did_key(payload, message.id.hex),
            value=encode_envelope(message, payload, payload_changed=changed),
            headers=tuple(headers),
            route=route,
        )

    def publish_batch(self) -> BatchResult:
        """Claim, enrich, route, deliver and archive one batch.

        Raises
        ------
        SourceUnavailableError
            When the database failed; the batch was rolled back (records already
            confirmed by Kafka will be published again: at-least-once).
        """
        started = time.monotonic()
        with self.table.claim(self.batch_size, exclude=self.retry_book.waiting()) as claim:
            messages = claim.messages
            if not messages:
                took = time.monotonic() - started
                return BatchResult(duration_s=took, empty_poll_cost_s=took)
            payloads = [parse_payload(message.payload_text) for message in messages]
            enrichment = self.enricher.enrich(payloads, connection=claim.connection)
            records = [
                self.build_record(message, payload, index in enrichment.changed)
                for index, (message, payload) in enumerate(zip(messages, payloads, strict=True))
            ]
            outcome = self.delivery.deliver(records)
            delivered_ids = [messages[index].id for index in outcome.delivered]
            claim.archive(delivered_ids)
        duration = time.monotonic() - started
        failed_ids = [messages[index].id for index in outcome.failed]
        # A record refused for itself is held back alone, so the rows behind it flow;
        # when the cluster is the problem the loop backs off instead.
        held_ids = [messages[index].id for index in outcome.record_failures()]
        if held_ids:
            self.retry_book.failed(held_ids)
        if self.retry_book:
            self.retry_book.delivered(delivered_ids)
        self._observe(records, outcome.delivered, outcome.failed, duration)
        unrouted = sum(1 for record in records if record.route.unrouted is not None)
        result = BatchResult(
            taken=len(messages),
            delivered=len(delivered_ids),
            failed=len(failed_ids),
            held_back=len(held_ids),
            unrouted=unrouted,
            enriched=len(enrichment.changed),
            duration_s=duration,
        )
        self._log(result, records, outcome.failed, enrichment.still_missing)
        return result

    def _observe(
        self, records: Sequence[OutgoingRecord], delivered: list[int], failed: dict[int, str], duration: float
    ) -> None:
        self.metrics.batch_duration.observe(duration)
        for facility, count in Counter(records[index].facility for index in delivered).items():
            self.metrics.observe_message(facility, PublishOutcome.delivered, count)
        for facility, count in Counter(records[index].facility for index in failed).items():
            self.metrics.observe_message(facility, PublishOutcome.failed, count)
        for error, count in Counter(failed.values()).items():
            self.metrics.errors.labels(error=self.metrics.error_label(error)).inc(count)

    def _log(
        self,
        result: BatchResult,
        records: Sequence[OutgoingRecord],
        failed: dict[int, str],
        still_missing: int,
    ) -> None:
        if result.unrouted:
            reasons = Counter(
                (record.route.unrouted.value, record.route.rse)
                for record in records
                if record.route.unrouted is not None
            )
            logger.warning(
                "events_unrouted",
                count=result.unrouted,
                topic=self.router.site_map.catch_all_topic,
                reasons={f"{reason}:{rse}": n for (reason, rse), n in reasons.most_common(10)},
            )
        if failed:
            logger.warning(
                "records_not_delivered",
                failed=result.failed,
                delivered=result.delivered,
                errors=dict(Counter(failed.values())),
                held_back=len(self.retry_book),
            )
        if still_missing:
            logger.info("metadata_missing", events=still_missing, keys=list(self.enricher.keys))
        logger.debug(
            "batch_published",
            claimed=result.taken,
            delivered=result.delivered,
            enriched=result.enriched,
            duration_s=round(result.duration_s, 4),
        )

    def refresh_backlog(self) -> None:
        """Set the backlog gauges from a count of the wanted rows (errors are counted, not raised)."""
        try:
            backlog = self.table.backlog()
        except SourceUnavailableError as error:
            self.metrics.observe_error(error)
            return
        self.metrics.backlog.set(backlog.rows)
        self.metrics.oldest_message_age.set(backlog.oldest_age_s())
