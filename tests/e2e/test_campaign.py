"""The event generator, without servers: realistic payloads, the four kinds, files that exist, streaming."""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from butler_registry import open_registry
from butler_registry._zip import read_zip
from butler_registry.universe import default_universe
from ingestd.e2e import FACILITY_UNDER_TEST, Campaign, EventMix, Ledger, site_map_for
from ingestd.mapping import UrlMapper
from ingestd.planning import PlanRules, plan
from ingestd.work import ButlerKind, Position, RegisterDataset, Skip

HERMES_KEYS = {
    "activity", "request-id", "duration", "checksum-adler", "checksum-md5", "file-size", "bytes", "guid",
    "previous-request-id", "protocol", "scope", "name", "dataset", "datasetScope", "src-type", "src-rse",
    "src-url", "dst-type", "dst-rse", "dst-url", "reason", "transfer-endpoint", "transfer-id",
    "transfer-link",
    "transfer_link", "tool-id", "account", "datatype", "rubin_butler", "rubin_sidecar",
}  # fmt: skip
"""Payload keys of a real HermesK transfer-done (the four time stamps are added on insertion into Rucio)."""


def test_every_kind_and_both_facilities_in_the_mix(tmp_path: Path) -> None:
    campaign = Campaign(storage=tmp_path, events=3000, seed=5, tag="t", detectors=20, write_data_files=False)
    events = list(campaign.events_iter())
    assert len(events) == 3000
    kinds = Counter((e.facility, e.kind) for e in events)
    for kind in ButlerKind:
        assert kinds[(FACILITY_UNDER_TEST, kind)] > 0, kind
    assert kinds[("UKDF", ButlerKind.data_product)] > 0
    share = sum(n for (facility, _), n in kinds.items() if facility == FACILITY_UNDER_TEST) / len(events)
    assert 0.85 < share < 0.95
    assert {e.payload["dst-rse"] for e in events} == {
        "IN2P3_BUTLER_DISK", "IN2P3_RAW_DISK", "RAL_BUTLER_DISK", "LANCS_BUTLER_DISK",
    }  # fmt: skip
    for event in events[:50]:
        assert set(event.payload) == HERMES_KEYS
        assert len(json.dumps(event.payload)) < 4000  # fits Rucio's payload column


def test_same_seed_same_events_and_ids_unique(tmp_path: Path) -> None:
    first = list(
        Campaign(storage=tmp_path / "a", events=800, seed=9, tag="x", write_data_files=False).events_iter()
    )
    second = list(
        Campaign(storage=tmp_path / "b", events=800, seed=9, tag="x", write_data_files=False).events_iter()
    )
    assert [e.payload["rubin_sidecar"] for e in first] == [e.payload["rubin_sidecar"] for e in second]
    ids = [i for e in first for i in e.dataset_ids]
    assert len(ids) == len(set(ids))
    assert len({e.did for e in first}) == len(first)


def test_events_decode_map_and_point_at_real_files(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    campaign = Campaign(storage=storage, events=1500, seed=2, tag="d", detectors=10)
    site = site_map_for("e2e.test", storage)
    rules = PlanRules(mapper=UrlMapper.from_site({}, site), site=site, facility=FACILITY_UNDER_TEST)
    universe = default_universe()
    for event in campaign.events_iter():
        raw = json.dumps({"event_type": "transfer-done", "payload": {**event.payload,
                          "transferred_at": "2025-06-01 03:00:00.000001"}})  # fmt: skip
        planned = plan(raw, Position("kafka", site.topic_for(event.rse, event.scope), 0, event.index), rules)
        if event.facility != FACILITY_UNDER_TEST:
            assert isinstance(planned, Skip)
            continue
        path = campaign.local_path(event.rse, event.scope, event.name)
        assert path.is_file(), path
        assert path.stat().st_size == event.payload["file-size"]
        if event.kind in (ButlerKind.data_product, ButlerKind.raw_file):
            assert isinstance(planned, RegisterDataset)
            assert planned.record.id == event.dataset_ids[0]
            assert planned.record.file is not None
            assert planned.record.file.path == str(path)
        elif event.kind is ButlerKind.zip_file:
            contents = read_zip(path, universe)
            assert {d.id for d in contents.datasets} == set(event.dataset_ids)
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None
        else:
            assert event.dimension_key is not None


def test_exports_import_into_the_registry(tmp_path: Path) -> None:
    campaign = Campaign(storage=tmp_path / "storage", events=600, seed=4, tag="r", detectors=10)
    bootstrap = campaign.write_bootstrap_export(tmp_path / "bootstrap.yaml")
    events = list(campaign.events_iter())
    with open_registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}", create=True) as registry:
        assert registry.import_dimensions(bootstrap).status.ok
        dims = [e for e in events if e.kind is ButlerKind.dim_file]
        assert dims
        for event in dims:
            result = registry.import_dimensions(campaign.local_path(event.rse, event.scope, event.name))
            assert result.dimension_records_inserted == 5, result


def test_ledger_records_what_the_reconciliation_needs(tmp_path: Path) -> None:
    campaign = Campaign(storage=tmp_path, events=500, seed=1, tag="l", write_data_files=False)
    site = site_map_for("e2e.l")
    with Ledger(tmp_path / "ledger.tsv", site) as ledger:
        for event in campaign.events_iter():
            ledger.record(event)
    rows = list(ledger.rows())
    assert len(rows) == ledger.events == 500
    assert sum(len(r.dataset_ids) for r in rows if r.facility == FACILITY_UNDER_TEST) == ledger.datasets
    routes = (("IN2P3_BUTLER_DISK", "dp2_prep"), ("IN2P3_RAW_DISK", "raw"), ("RAL_BUTLER_DISK", "dp2_prep"))
    assert {r.topic for r in rows} <= {site.topic_for(rse, scope) for rse, scope in routes}
    summary = ledger.summary()
    assert summary["events"] == 500


def test_generation_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Memory does not grow with the number of events (what makes a million feasible)."""

    def peak(events: int) -> int:
        campaign = Campaign(storage=tmp_path / str(events), events=events, seed=3, tag="m",
                            write_data_files=False, mix=EventMix(zip_share=0.0, dim_share=0.0))  # fmt: skip
        tracemalloc.start()
        for _ in campaign.events_iter():
            pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(2_000), peak(20_000)
    assert large < small * 1.5 + 512 * 1024, (small, large)


@pytest.mark.parametrize(
    "mix", [{"facility_share": 0}, {"zip_share": 0.6, "dim_share": 0.5}, {"logs_per_zip": 3}]
)
def test_impossible_mixes_are_refused(mix: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        EventMix(**mix)  # type: ignore[arg-type]
