"""A batch's dimension exports and zips through the engine: one registry call, one outcome per file.

Campaign files on the embedded SQLite registry: new exposures' exports, zips of log
datasets, a zip that needs an export of the same batch, a conflicting export and a
file that is not there. Each event gets the outcome it would get imported alone; the
registry is asked once for the whole batch (``Registry.import_files``), and when that
call fails for an unexpected reason the engine imports the files one by one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from butler_registry import ImportRequest, open_registry
from butler_registry.interface import (
    DatasetRecord,
    ImportResult,
    Provenance,
    RegisterResult,
    Registry,
    RegistryStats,
)
from ingestd.config import IngestdSettings, load_settings
from ingestd.deadletter import FileDeadLetterWriter
from ingestd.e2e import FACILITY_UNDER_TEST, Campaign, EventMix, site_map_for
from ingestd.engine import Engine, ParkingPolicy, Retrier, StopToken
from ingestd.engine._assembly import make_planner, make_rules
from ingestd.sources import JsonlFileSource, RawRecord
from ingestd.work import ButlerKind, Outcome


class _Idle:
    def pause(self) -> None:
        """Nothing to pause."""

    def resume(self) -> None:
        """Nothing to resume."""

    def keepalive(self, timeout_s: float) -> None:
        """No group to keep."""


class _Counting(Registry):
    """A real registry that counts import calls, and can fail the batched one."""

    def __init__(self, inner: Registry, *, fail_batched: bool = False) -> None:
        self.inner = inner
        self.fail_batched = fail_batched
        self.batched_calls: list[int] = []
        self.single_calls = 0

    def register(self, batch: Sequence[DatasetRecord]) -> RegisterResult:
        return self.inner.register(batch)

    def import_dimensions(self, export_file: Path, provenance: Provenance | None = None) -> ImportResult:
        self.single_calls += 1
        return self.inner.import_dimensions(export_file, provenance)

    def import_zip(self, zip_file: Path, provenance: Provenance | None = None) -> ImportResult:
        self.single_calls += 1
        return self.inner.import_zip(zip_file, provenance)

    def import_files(self, requests: Sequence[ImportRequest]) -> list[ImportResult]:
        self.batched_calls.append(len(requests))
        if self.fail_batched:
            raise RuntimeError("registry bug in the batched import")
        return self.inner.import_files(requests)

    def ping(self) -> None:
        self.inner.ping()

    def stats(self) -> RegistryStats:
        return self.inner.stats()


def _campaign_batch(tmp_path: Path) -> tuple[IngestdSettings, Campaign, list[RawRecord], dict[str, Any]]:
    """Settings, campaign and records: every kind, plus a conflicting export and an absent zip."""
    storage = tmp_path / "storage"
    campaign = Campaign(
        storage=storage,
        events=40,
        mix=EventMix(facility_share=1.0, zip_share=0.3, dim_share=0.3),
        detectors=4,
        write_data_files=False,
        tag="imports",
    )
    events = list(campaign.events_iter())
    now = str(datetime.now(UTC).replace(tzinfo=None))
    payloads = []
    for event in events:
        payload = dict(event.payload)
        payload.update(created_at=now, transferred_at=now)
        payloads.append(payload)
    dims = [p for p in payloads if p["rubin_butler"] == ButlerKind.dim_file.value]
    zips = [p for p in payloads if p["rubin_butler"] == ButlerKind.zip_file.value]
    assert len(dims) >= 3
    assert len(zips) >= 3
    # An export that renames an exposure another export of the batch adds: a conflict.
    first_dim = campaign.local_path(dims[0]["dst-rse"], dims[0]["scope"], dims[0]["name"])
    conflicting = first_dim.with_name("conflicting.yaml")
    conflicting.write_text(first_dim.read_text().replace("target_name: field_", "target_name: other_"))
    bad = {**dims[0], "name": dims[0]["name"].replace(first_dim.name, "conflicting.yaml")}
    bad["dst-url"] = dims[0]["dst-url"].replace(first_dim.name, "conflicting.yaml")
    bad["transfer-id"] = "conflicting-transfer"
    absent = {**zips[0], "name": zips[0]["name"] + ".absent", "dst-url": zips[0]["dst-url"] + ".absent"}
    absent["transfer-id"] = "absent-transfer"
    payloads += [bad, absent]
    lines = [json.dumps({"event_type": "transfer-done", "payload": p, "created_at": now}) for p in payloads]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": "127.0.0.1:1"},
        site=json.loads(site_map_for("imports", storage).model_dump_json()),
        planning={"facility": FACILITY_UNDER_TEST},
        registry={"url": f"sqlite:///{tmp_path / 'registry.sqlite3'}"},
        dead_letters={"file": str(tmp_path / "dead.jsonl")},
        http={"enabled": False},
    )
    bootstrap = campaign.write_bootstrap_export(tmp_path / "bootstrap.yaml")
    records = JsonlFileSource(jsonl).poll(len(lines), 0)
    return settings, campaign, records, {"bootstrap": bootstrap, "conflicting": bad, "absent": absent}


def _engine(settings: IngestdSettings, registry: Registry, *, not_visible_timeout_s: float = 0) -> Engine:
    return Engine(
        registry=registry,
        planner=make_planner(make_rules(settings)),
        dead_letters=FileDeadLetterWriter(settings.dead_letters.file),
        retrier=Retrier(StopToken(), initial_backoff_s=0.001, max_backoff_s=0.002),
        parking=ParkingPolicy(delay_s=1, delay_max_s=1, not_visible_timeout_s=not_visible_timeout_s),
    )


def _outcomes(
    settings: IngestdSettings, records: list[RawRecord], registry: Registry
) -> list[tuple[Any, ...]]:
    result = _engine(settings, registry).process(records, _Idle())
    return [(r.summary.name, r.summary.kind, r.outcome, r.error_class) for r in result.reports]


@pytest.mark.parametrize("fail_batched", [False, True], ids=["batched", "fallback_one_by_one"])
def test_every_file_gets_its_own_outcome_in_one_registry_call(tmp_path: Path, fail_batched: bool) -> None:
    settings, _campaign, records, special = _campaign_batch(tmp_path)
    with open_registry(settings.registry.url, create=True) as inner:
        assert inner.import_dimensions(special["bootstrap"]).status.ok
        before = inner.stats()
        registry = _Counting(inner, fail_batched=fail_batched)
        outcomes = _outcomes(settings, records, registry)
        imports = sum(
            1 for _name, kind, _o, _e in outcomes if kind in (ButlerKind.dim_file, ButlerKind.zip_file)
        )
        # The absent zip never reaches the registry: the engine parks a file it cannot see yet.
        assert registry.batched_calls == [imports - 1]
        assert registry.single_calls == (imports - 1 if fail_batched else 0)
        after = inner.stats()
    by_name = {name: (kind, outcome, error_class) for name, kind, outcome, error_class in outcomes}
    assert by_name[special["conflicting"]["name"]] == (ButlerKind.dim_file, Outcome.conflict, "conflict")
    # Past not_visible_timeout_s (0 here) a file still not visible is rejected as such, not "invalid".
    assert by_name[special["absent"]["name"]][1:] == (Outcome.rejected, "file_not_visible")
    others = [
        o
        for name, _k, o, _e in outcomes
        if name not in (special["conflicting"]["name"], special["absent"]["name"])
    ]
    assert set(others) == {Outcome.registered}
    assert after.datasets > before.datasets
    assert after.dimension_records["exposure"] > before.dimension_records["exposure"]


def test_same_outcomes_as_importing_alone(tmp_path: Path) -> None:
    settings, _campaign, records, special = _campaign_batch(tmp_path / "together")
    alone_dir = tmp_path / "alone"
    shutil.copytree(tmp_path / "together", alone_dir, ignore=shutil.ignore_patterns("*.sqlite3"))
    alone_settings, _c, alone_records, alone_special = _campaign_batch(alone_dir)
    with open_registry(settings.registry.url, create=True) as together:
        assert together.import_dimensions(special["bootstrap"]).status.ok
        batched = _outcomes(settings, records, together)
    with open_registry(alone_settings.registry.url, create=True) as registry:
        assert registry.import_dimensions(alone_special["bootstrap"]).status.ok
        one_at_a_time = []
        for record in alone_records:
            one_at_a_time += _outcomes(alone_settings, [record], registry)
    assert batched == one_at_a_time


def test_a_file_not_visible_yet_is_parked_without_verification(tmp_path: Path) -> None:
    """With verification off, a zip or export the file system does not show yet waits; it is not "invalid"."""
    settings, _campaign, records, special = _campaign_batch(tmp_path)
    absent = [r for r in records if special["absent"]["name"].encode() in r.value]
    assert len(absent) == 1
    with open_registry(settings.registry.url, create=True) as registry:
        engine = _engine(settings, registry, not_visible_timeout_s=600)
        (report,) = engine.process(absent, _Idle()).reports
    assert (report.outcome, report.error_class) == (Outcome.parked, "file_not_visible")
    assert report.reason is not None
    assert "not found" in report.reason


class _ReadingAhead(_Counting):
    """Forwards the read ahead too, and notes which requests reached the import already read."""

    def __init__(self, inner: Registry) -> None:
        super().__init__(inner)
        self.read_ahead: list[bool] = []

    def read_import(self, request: ImportRequest) -> ImportRequest:
        return self.inner.read_import(request)

    def import_files(self, requests: Sequence[ImportRequest]) -> list[ImportResult]:
        self.read_ahead += [request.reading is not None for request in requests]
        return super().import_files(requests)


def test_the_decode_stage_reads_the_files_the_import_then_uses(tmp_path: Path) -> None:
    """Exports and zips are read while decoding (off the registry thread); outcomes do not change."""
    settings, _campaign, records, special = _campaign_batch(tmp_path)
    with open_registry(settings.registry.url, create=True) as inner:
        assert inner.import_dimensions(special["bootstrap"]).status.ok
        registry = _ReadingAhead(inner)
        engine = _engine(settings, registry)
        decoded = engine.decode(records)
        kinds = [getattr(p.summary, "kind", None) for p in decoded.planned]
        imports = [i for i, kind in enumerate(kinds) if kind in (ButlerKind.dim_file, ButlerKind.zip_file)]
        absent = next(i for i, r in enumerate(records) if special["absent"]["name"].encode() in r.value)
        # Every import but the absent zip was read ahead (the conflicting export reads fine).
        assert sorted(decoded.imports) == [i for i in imports if i != absent]
        result = engine.process(records, _Idle(), decoded=decoded)
    assert registry.read_ahead == [True] * (len(imports) - 1)
    by_name = {r.summary.name: (r.outcome, r.error_class) for r in result.reports}
    assert by_name[special["conflicting"]["name"]] == (Outcome.conflict, "conflict")
    assert by_name[special["absent"]["name"]] == (Outcome.rejected, "file_not_visible")
    assert {
        outcome
        for name, (outcome, _e) in by_name.items()
        if name not in (special["conflicting"]["name"], special["absent"]["name"])
    } == {Outcome.registered}
