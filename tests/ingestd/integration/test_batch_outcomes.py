"""One batch of good and malformed events: each ends in exactly one outcome, and says so."""

from __future__ import annotations

import pytest

from butler_registry import open_registry
from ingestd.work import Outcome

from .events import dim_event, malformed_events, sample_bytes
from .harness import DaemonThread, IngestSetup
from .kafka_helpers import committed_offsets, produce, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_good_events_registered_and_bad_ones_dead_lettered_with_reasons(ingest: IngestSetup) -> None:
    bad = malformed_events()
    records = [
        dim_event("prep.yaml"),  # HSC records, visit 330 only
        sample_bytes("message440.json"),  # HSC visit 330: registered
        sample_bytes("message.json"),  # HSC visit 328: missing dimension records, parked
        *(value for _, value in bad),
    ]
    produce(ingest.kafka, ingest.topic, records, keys=[b"same"] * len(records), partition=0)

    daemon = DaemonThread(
        ingest.settings(
            dead_letters={"park_delay_s": 600, "park_delay_max_s": 600, "park_store": "retry_topic"}
        )
    ).start()
    try:
        daemon.wait_for(lambda: daemon.count() >= len(records), 90, "every event to reach an outcome")
    finally:
        assert daemon.stop_and_join() == 0

    assert daemon.summary() == {"registered": 2, "parked": 1, "rejected": len(bad)}
    by_offset = {report.position.offset: report for report in daemon.reports}
    assert by_offset[0].summary.kind == "dim_file"
    assert by_offset[1].outcome is Outcome.registered
    assert by_offset[2].outcome is Outcome.parked
    assert by_offset[2].error_class == "missing_dimensions"

    with open_registry(ingest.registry_url) as registry:
        assert registry.stats().datasets == 1

    dead = read_all(ingest.kafka, ingest.dead_letter_topic)
    assert len(dead) == len(bad)
    by_offset_dead = {int(headers["ingestd.source.offset"]): (value, headers) for value, headers in dead}
    for index, (error_class, original) in enumerate(bad, start=3):
        value, headers = by_offset_dead[index]
        assert headers["ingestd.error_class"].decode() == error_class, headers["ingestd.reason"]
        assert value == original, f"{error_class}: dead letter must carry the original bytes"
        assert headers["ingestd.source.topic"].decode() == ingest.topic
        assert headers["ingestd.source.partition"] == b"0"
        assert headers["ingestd.outcome"] == b"rejected"
        assert headers["ingestd.attempts"] == b"1"
        assert headers["ingestd.reason"], f"{error_class}: no reason"
        assert headers["ingestd.failed_at"].startswith(b"20")

    parked = read_all(ingest.kafka, ingest.retry_topic)
    assert len(parked) == 1
    value, headers = parked[0]
    assert value == sample_bytes("message.json")
    assert headers["ingestd.error_class"] == b"missing_dimensions"
    assert b"visit" in headers["ingestd.reason"]
    assert "ingestd.not_before" in headers

    assert committed_offsets(ingest.kafka, ingest.group, ingest.topic)[0] == len(records)


def test_parked_event_is_retried_and_registered_once_its_records_arrive(ingest: IngestSetup) -> None:
    """visit 328 is missing; its records come later in a second dim_file; the parked event then registers."""
    produce(ingest.kafka, ingest.topic, [dim_event("prep.yaml"), sample_bytes("message.json")], partition=0)
    daemon = DaemonThread(ingest.settings(dead_letters={"park_delay_s": 1, "park_delay_max_s": 1})).start()
    try:
        daemon.wait_for(lambda: daemon.count(Outcome.parked) >= 1, 60, "the event to be parked")
        # A second export with visit 328 (a copy of visit 330 renumbered) arrives.
        text = (ingest.storage / "prep.yaml").read_text()
        extra = text.replace("id: 330\n", "id: 328\n").replace("visit: 330\n", "visit: 328\n")
        extra = extra.replace("exposure: 330\n", "exposure: 328\n").replace(
            "name: HSCA00033000", "name: HSCA00032800"
        )
        (ingest.storage / "prep328.yaml").write_text(extra)
        produce(ingest.kafka, ingest.topic, [dim_event("prep328.yaml")], partition=1)
        daemon.wait_for(lambda: daemon.count(Outcome.registered) >= 3, 60, "the parked event to register")
    finally:
        assert daemon.stop_and_join() == 0
    registered = [
        r for r in daemon.reports if r.outcome is Outcome.registered and r.summary.kind == "data_product"
    ]
    assert len(registered) == 1
    # Its report names the first position, not the retry topic.
    assert registered[0].position.topic == ingest.topic
    assert read_all(ingest.kafka, ingest.dead_letter_topic, timeout_s=2) == []
    with open_registry(ingest.registry_url) as registry:
        assert registry.stats().datasets == 1
