"""Pure logic of the publisher, without servers: routing, keys, envelopes, enrichment, settings, back-off."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from ingestd.cli import build_parser
from ingestd.cli.commands.publish import explain
from ingestd.sitemap import SiteMap
from monitoring.http_server import HealthState
from monitoring.metrics import PublisherMetrics
from publisher import (
    UNROUTED_FACILITY,
    Backoff,
    BatchResult,
    Did,
    Enricher,
    RetryBook,
    Router,
    RucioMessage,
    UnroutedReason,
    did_key,
    encode_envelope,
    load_publisher_settings,
    parse_payload,
    run_loop,
)
from publisher._settings import PublisherSettings

SITE_MAP = SiteMap.model_validate(
    {
        "catch_all_topic": "rucio.transfers.unrouted",
        "facilities": [
            {"name": "FrDF", "rses": ["IN2P3_.*"]},
            {"name": "UKDF", "rses": ["RAL_.*", "LANCS_BUTLER_DISK"], "topic": "rucio.transfers.{facility}"},
        ],
    }
)


# ---------------------------------------------------------------------------------------------
# Routing


def test_hermesk_compatible_topic_for_a_pattern_rse() -> None:
    route = Router(SITE_MAP).route({"dst-rse": "IN2P3_BUTLER_DISK", "scope": "dp2_prep", "name": "a"})
    assert route.topic == "IN2P3_BUTLER_DISK-dp2_prep"
    assert route.facility == "FrDF"
    assert route.unrouted is None


def test_facility_topic_template_overrides_the_site_template() -> None:
    router = Router(SITE_MAP)
    assert router.route({"dst-rse": "RAL_BUTLER_DISK", "scope": "dc2"}).topic == "rucio.transfers.UKDF"
    assert router.route({"dst-rse": "LANCS_BUTLER_DISK", "scope": "dc2"}).topic == "rucio.transfers.UKDF"


def test_unknown_rse_goes_to_the_catch_all_topic() -> None:
    route = Router(SITE_MAP).route({"dst-rse": "CERN_DISK", "scope": "dc2"})
    assert route.topic == "rucio.transfers.unrouted"
    assert route.facility == UNROUTED_FACILITY
    assert route.unrouted is UnroutedReason.unknown_rse
    assert route.rse == "CERN_DISK"


def test_patterns_are_full_matches() -> None:
    assert (
        Router(SITE_MAP).route({"dst-rse": "XIN2P3_DISK", "scope": "s"}).unrouted
        is UnroutedReason.unknown_rse
    )


@pytest.mark.parametrize("missing", [None, "None", ""])
def test_missing_destination_goes_to_the_catch_all(missing: str | None) -> None:
    route = Router(SITE_MAP).route({"dst-rse": missing, "scope": "s"})
    assert route.unrouted is UnroutedReason.no_destination


def test_deletion_events_route_by_their_rse() -> None:
    route = Router(SITE_MAP).route({"rse": "IN2P3_BUTLER_DISK", "scope": "s", "name": "n"})
    assert route.topic == "IN2P3_BUTLER_DISK-s"


def test_missing_scope_when_the_template_needs_one() -> None:
    router = Router(SITE_MAP)
    assert router.route({"dst-rse": "IN2P3_X"}).unrouted is UnroutedReason.no_scope
    # A facility topic does not need the scope.
    assert router.route({"dst-rse": "RAL_X"}).topic == "rucio.transfers.UKDF"


def test_a_name_kafka_refuses_goes_to_the_catch_all() -> None:
    route = Router(SITE_MAP).route({"dst-rse": "IN2P3_X", "scope": "bad scope/with slash"})
    assert route.unrouted is UnroutedReason.invalid_topic


def test_a_payload_that_is_not_an_object_goes_to_the_catch_all() -> None:
    assert Router(SITE_MAP).route(None).unrouted is UnroutedReason.invalid_payload


def test_key_is_scope_and_name_else_the_fallback() -> None:
    assert did_key({"scope": "dc2", "name": "a/b.fits"}, "id") == b"dc2:a/b.fits"
    assert did_key({"scope": "dc2", "name": "None"}, "id") == b"id"
    assert did_key(None, "abc") == b"abc"


# ---------------------------------------------------------------------------------------------
# Envelope


def _message(payload_text: str) -> RucioMessage:
    return RucioMessage(
        id=uuid.UUID("cd5a1016-b084-469c-8a1f-6f39c5f6d189"),
        event_type="transfer-done",
        payload_text=payload_text,
        services="kafka",
        created_at=datetime(2025, 3, 20, 20, 15, 43, 153695),
    )


def test_envelope_is_hermesk_format_with_the_payload_text_spliced_unchanged() -> None:
    text = '{"scope": "dc2",  "name": "x", "rubin_sidecar": "{\\"id\\": 1}"}'
    value = encode_envelope(_message(text), parse_payload(text), payload_changed=False)
    envelope = json.loads(value)
    assert envelope == {
        "event_type": "transfer-done",
        "payload": {"scope": "dc2", "name": "x", "rubin_sidecar": '{"id": 1}'},
        "created_at": "2025-03-20 20:15:43.153695",
        "id": "cd5a1016b084469c8a1f6f39c5f6d189",
    }
    assert text.encode() in value  # byte for byte: no re-encoding of what was not changed


def test_envelope_of_a_changed_payload_is_re_encoded() -> None:
    text = '{"scope": "dc2", "name": "x"}'
    payload = parse_payload(text)
    assert payload is not None
    payload["rubin_butler"] = "raw_file"
    envelope = json.loads(encode_envelope(_message(text), payload, payload_changed=True))
    assert envelope["payload"]["rubin_butler"] == "raw_file"


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"a string"'])
def test_a_payload_that_is_not_an_object_is_kept_as_a_string(text: str) -> None:
    assert parse_payload(text) is None
    envelope = json.loads(encode_envelope(_message(text), None, payload_changed=False))
    assert envelope["payload"] == text


# ---------------------------------------------------------------------------------------------
# Enrichment


class DictLookup:
    """A metadata lookup over a dict (the protocol's simplest implementation)."""

    def __init__(self, metadata: dict[Did, dict[str, Any]]) -> None:
        self.metadata = metadata
        self.calls: list[list[Did]] = []

    def lookup(self, dids: Any, keys: Any, *, connection: Any) -> dict[Did, dict[str, Any]]:
        self.calls.append(list(dids))
        return {
            did: {k: v for k, v in self.metadata[did].items() if k in keys}
            for did in dids
            if did in self.metadata
        }


def test_enrichment_fills_missing_keys_in_one_lookup_and_the_payload_wins() -> None:
    lookup = DictLookup(
        {
            Did("dc2", "a"): {"rubin_butler": "raw_file", "rubin_sidecar": "{}"},
            Did("dc2", "b"): {"rubin_butler": "zip_file", "rubin_sidecar": ""},
            Did("dc2", "c"): {"rubin_butler": "dim_file"},
        }
    )
    payloads: list[dict[str, Any] | None] = [
        {"scope": "dc2", "name": "a"},
        {"scope": "dc2", "name": "b", "rubin_butler": "data_product", "rubin_sidecar": "None"},
        {"scope": "dc2", "name": "c", "rubin_butler": "dim_file", "rubin_sidecar": ""},  # complete already
        {"scope": "dc2", "name": "a"},  # same DID twice: asked once
        {"scope": "dc2", "name": "unknown"},
        None,
    ]
    result = Enricher(lookup, ["rubin_butler", "rubin_sidecar"]).enrich(payloads)
    assert len(lookup.calls) == 1
    assert sorted(lookup.calls[0]) == [Did("dc2", "a"), Did("dc2", "b"), Did("dc2", "unknown")]
    assert payloads[0] == {"scope": "dc2", "name": "a", "rubin_butler": "raw_file", "rubin_sidecar": "{}"}
    # The payload's own rubin_butler stays; its "None" sidecar is filled.
    assert payloads[1] == {"scope": "dc2", "name": "b", "rubin_butler": "data_product", "rubin_sidecar": ""}
    assert result.changed == frozenset({0, 1, 3})
    assert result.still_missing == 1  # "unknown"


def test_multi_vo_scopes_are_looked_up_as_rucio_stores_them() -> None:
    lookup = DictLookup({Did("dc2", "a", "lsst"): {"rubin_butler": "raw_file"}})
    payloads: list[dict[str, Any] | None] = [{"scope": "dc2", "name": "a", "vo": "lsst"}]
    Enricher(lookup, ["rubin_butler"]).enrich(payloads)
    assert lookup.calls[0][0].internal_scope == "dc2@lsst"
    assert Did("dc2", "a").internal_scope == "dc2"
    assert payloads[0] is not None
    assert payloads[0]["rubin_butler"] == "raw_file"


def test_no_lookup_means_no_enrichment() -> None:
    payloads: list[dict[str, Any] | None] = [{"scope": "dc2", "name": "a"}]
    assert Enricher(None, ["rubin_butler"]).enrich(payloads).changed == frozenset()


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("INGESTD_PUBLISHER_"):
            monkeypatch.delenv(name)
    return monkeypatch


SITE_MAP_JSON = '{"facilities": [{"name": "FrDF", "rses": ["IN2P3_.*"]}]}'


def test_settings_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INGESTD_PUBLISHER_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    clean_env.setenv("INGESTD_PUBLISHER_DATABASE__URL", "postgresql://rucio:secret@db:5432/rucio")
    clean_env.setenv("INGESTD_PUBLISHER_DATABASE__SERVICES", "activemq")
    clean_env.setenv("INGESTD_PUBLISHER_EVENT_TYPES", "transfer-done, deletion-done")
    clean_env.setenv("INGESTD_PUBLISHER_SITE_MAP", SITE_MAP_JSON)
    clean_env.setenv("INGESTD_PUBLISHER_TOPICS__RETENTION_MS", "21600000")
    settings = load_publisher_settings()
    assert settings.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert settings.event_types == ["transfer-done", "deletion-done"]
    assert settings.database is not None
    assert settings.database.services == ["activemq"]
    assert settings.database.sqlalchemy_url().drivername == "postgresql+psycopg"
    assert "secret" not in settings.model_dump_json()
    assert settings.topics.topic_config() == {"retention.ms": "21600000"}
    assert settings.resolved_site_map.facility_for_rse("IN2P3_X") is not None


def test_services_null_claims_every_service(clean_env: pytest.MonkeyPatch) -> None:
    settings = PublisherSettings.model_validate(
        {
            "kafka": {"bootstrap_servers": "k:1"},
            "database": {"url": "sqlite://", "services": "null"},
            "site_map": SITE_MAP_JSON,
        }
    )
    assert settings.database is not None
    assert settings.database.services is None


def test_yaml_file_is_overridden_by_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text("site_map:\n  facilities:\n    - name: UKDF\n      rses: ['RAL_.*']\n")
    config = tmp_path / "publisher.yaml"
    config.write_text(
        f"kafka:\n  bootstrap_servers: file:9092\nsite_map_file: {sites}\nbatch_size: 10\n"
        "database:\n  url: postgresql://rucio@db/rucio\n  services: [kafka]\n"
    )
    clean_env.setenv("INGESTD_PUBLISHER_BATCH_SIZE", "20")
    settings = load_publisher_settings(config)
    assert settings.batch_size == 20
    assert settings.kafka.bootstrap_servers == ["file:9092"]
    assert [f.name for f in settings.resolved_site_map.facilities] == ["UKDF"]


def test_the_database_password_can_come_from_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = PublisherSettings.model_validate(
        {
            "kafka": {"bootstrap_servers": "k:1"},
            "database": {"url": "postgresql://rucio@db/rucio", "password_file": str(secret)},
            "site_map": SITE_MAP_JSON,
        }
    )
    assert settings.database is not None
    assert settings.database.sqlalchemy_url().password == "s3cret"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({}, "site_map"),
        ({"site_map": SITE_MAP_JSON, "site_map_file": "/nonexistent"}, "site_map_file"),
        ({"site_map": SITE_MAP_JSON, "topics": {"replication_factor": 0}}, "topics"),
        ({"site_map": SITE_MAP_JSON, "batch_size": 0}, "batch_size"),
        ({"site_map": SITE_MAP_JSON, "surprise": 1}, "surprise"),
        ({"site_map": '{"topic_template": "{rse}"}'}, "site_map"),
        ({"site_map": SITE_MAP_JSON, "database": {"url": "::not a url::"}}, "database"),
    ],
)
def test_invalid_settings_are_refused_naming_the_field(
    clean_env: pytest.MonkeyPatch, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        PublisherSettings.model_validate({"kafka": {"bootstrap_servers": "k:1"}, **values})
    assert field in str(raised.value)
    assert "INGESTD_PUBLISHER_" in explain(raised.value)


def test_cli_check_config_prints_settings_without_secrets(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("INGESTD_PUBLISHER_KAFKA__BOOTSTRAP_SERVERS", "k:9092")
    clean_env.setenv("INGESTD_PUBLISHER_DATABASE__URL", "postgresql://rucio:secret@db/rucio")
    clean_env.setenv("INGESTD_PUBLISHER_SITE_MAP", SITE_MAP_JSON)
    args = build_parser().parse_args(["publish", "--check-config"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["kafka"]["bootstrap_servers"] == ["k:9092"]
    assert "secret" not in out


def test_cli_exits_2_on_invalid_settings(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["publish"])
    assert args.func(args) == 2
    assert "INGESTD_PUBLISHER_KAFKA__" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Back-off and the retry book


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1.0, maximum_s=8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[-1] >= 4.0  # capped at 8, jittered down to half at most
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_retry_book_holds_back_failed_ids_with_growing_delays() -> None:
    book = RetryBook(maximum_s=10.0, capacity=3)
    a, b = uuid.uuid4(), uuid.uuid4()
    book.failed([a, b], now=0.0)
    assert set(book.waiting(now=1.0)) == {a, b}
    assert book.waiting(now=2.5) == []  # first hold: 2 s
    book.failed([a], now=3.0)
    assert book.waiting(now=6.5) == [a]  # second hold: 4 s
    book.delivered([a])
    assert len(book) == 1
    book.failed([uuid.uuid4() for _ in range(5)], now=0.0)
    assert len(book) == 3  # bounded


# ---------------------------------------------------------------------------------------------
# The loop's pacing of idle polls and backlog counts


class _RecordingStop:
    """A stop event that records each wait and stops the loop after ``waits`` of them."""

    def __init__(self, waits: int) -> None:
        self.delays: list[float] = []
        self._waits = waits

    def is_set(self) -> bool:
        return len(self.delays) >= self._waits

    def wait(self, timeout: float) -> bool:
        self.delays.append(timeout)
        return self.is_set()


class _IdleWorker:
    def __init__(self, empty_poll_cost_s: float) -> None:
        self.cost = empty_poll_cost_s
        self.backlog_counts = 0

    def publish_batch(self) -> BatchResult:
        return BatchResult(duration_s=self.cost, empty_poll_cost_s=self.cost)

    def refresh_backlog(self) -> None:
        self.backlog_counts += 1


@pytest.mark.parametrize(("cost_s", "expected_s"), [(0.001, 0.05), (0.015, 0.05), (0.2, 0.6)])
def test_idle_polls_are_spaced_by_what_finding_nothing_cost(cost_s: float, expected_s: float) -> None:
    # A cheap empty poll waits the configured interval; a slow one (a bloated table) three times its cost.
    stop = _RecordingStop(waits=3)
    worker = _IdleWorker(cost_s)
    run_loop(
        worker,
        stop=stop,  # type: ignore[arg-type]
        health=HealthState(),
        metrics=PublisherMetrics(CollectorRegistry()),
        poll_interval_s=0.05,
        max_backoff_s=1.0,
        backlog_interval_s=3600.0,
    )
    assert stop.delays == [pytest.approx(expected_s)] * 3
    assert worker.backlog_counts == 1  # once at start, then not before the interval
