"""The backfill's pure logic, without servers: events, PFNs, pacing, error sorting, state file, source."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import ValidationError
from rucio.common.exception import CannotAuthenticate, RSENotFound, ServerConnectionException

from ingestd.backfill import (
    BackfillRequest,
    ListingSpool,
    SpoolMismatchError,
    choose_pfn,
    transfer_done_event,
)
from ingestd.mapping import UrlMapper
from ingestd.planning import PlanRules, plan
from ingestd.rucio_client import FileReplica, RateLimiter, RucioSettings, classify_rucio_error
from ingestd.sitemap import SiteMap
from ingestd.sources import FatalSourceError, ListingUnit, RawRecord, RucioReplicaSource, TransientSourceError
from ingestd.work import Position, RegisterDataset

from .support import RSE, RUCIO_PREFIX, SCOPE, sidecar

PFN = RUCIO_PREFIX + "dp2_prep/ab/cd/run/calexp.fits"


def _replica(name: str = "run/calexp.fits", pfns: tuple[str, ...] = (PFN,)) -> FileReplica:
    return FileReplica(SCOPE, name, pfns, size=1234, adler32="0a0b0c0d", md5=None)


def test_event_is_planned_like_a_live_transfer_done() -> None:
    dataset_id = uuid.uuid4()
    event = transfer_done_event(
        _replica(),
        RSE,
        {"rubin_butler": "data_product", "rubin_sidecar": json.loads(sidecar(dataset_id, 7, "run/a"))},
        now=datetime(2025, 3, 20, 20, 15, 43),
    )
    message = json.loads(event)
    assert message["event_type"] == "transfer-done"
    assert message["created_at"] == "2025-03-20 20:15:43"
    assert isinstance(message["payload"]["rubin_sidecar"], str)  # an object is sent as JSON text
    site = SiteMap.model_validate(
        {
            "facilities": [
                {
                    "name": "FrDF",
                    "rses": [RSE],
                    "prefixes": {RSE: {"rucio_prefix": RUCIO_PREFIX, "fs_prefix": "/data"}},
                }
            ]
        }
    )
    rules = PlanRules(mapper=UrlMapper.from_site({}, site), site=site)
    planned = plan(event, Position(source="rucio", line=3, did=f"{SCOPE}:run/calexp.fits"), rules)
    assert isinstance(planned, RegisterDataset)
    record = planned.record
    assert record.id == dataset_id
    assert record.file is not None
    assert (record.file.path, record.file.size, record.file.adler32) == (
        "/data/dp2_prep/ab/cd/run/calexp.fits",
        1234,
        "0a0b0c0d",
    )
    assert record.provenance is not None
    assert (record.provenance.source, record.provenance.rse, record.provenance.name) == (
        "rucio",
        RSE,
        "run/calexp.fits",
    )


def test_event_without_metadata_leaves_the_kind_out() -> None:
    payload = json.loads(transfer_done_event(_replica(), RSE, {}))["payload"]
    assert "rubin_butler" not in payload
    assert payload["dst-url"] == PFN
    assert payload["protocol"] == "root"


def test_pfn_under_a_configured_prefix_is_preferred() -> None:
    davs = "davs://host:2880/rucio/x"
    assert choose_pfn([davs, PFN], [RUCIO_PREFIX]) == PFN
    assert choose_pfn([davs, PFN], []) == davs
    with pytest.raises(ValueError, match="PFN"):
        choose_pfn([], [])


def test_rate_limiter_spaces_calls_after_the_burst() -> None:
    now = [0.0]
    limiter = RateLimiter(10.0, burst=2, clock=lambda: now[0])
    assert [limiter.delay(), limiter.delay()] == [0.0, 0.0]
    assert limiter.delay() == pytest.approx(0.1)
    now[0] = 1.0  # a second later the bucket is full again
    assert limiter.delay() == 0.0


def test_rucio_errors_are_sorted_into_transient_fatal_and_bugs() -> None:
    assert classify_rucio_error(CannotAuthenticate("bad password")) is FatalSourceError
    assert classify_rucio_error(RSENotFound("NOPE")) is FatalSourceError
    assert classify_rucio_error(ServerConnectionException()) is TransientSourceError
    assert classify_rucio_error(requests.ConnectionError("refused")) is TransientSourceError
    assert classify_rucio_error(TimeoutError()) is TransientSourceError
    assert classify_rucio_error(KeyError("scope")) is None


def test_settings_check_credentials_and_build_client_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="token_file"):
        RucioSettings(auth_type="token")
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    with pytest.raises(ValidationError, match="not both"):
        RucioSettings(password="x", password_file=secret)
    settings = RucioSettings(
        host="https://rucio:443", auth_type="userpass", username="u", password_file=secret
    )
    arguments = settings.client_arguments()
    assert arguments["rucio_host"] == arguments["auth_host"] == "https://rucio:443"
    assert arguments["creds"] == {"username": "u", "password": "s3cret"}
    assert "s3cret" not in repr(RucioSettings(password="s3cret"))


def test_request_names_its_state_file_by_its_parameters(tmp_path: Path) -> None:
    one = BackfillRequest(rse=RSE, scopes=("b", "a"))
    assert one.state_file(tmp_path) == BackfillRequest(rse=RSE, scopes=("a", "b")).state_file(tmp_path)
    assert one.state_file(tmp_path) != BackfillRequest(rse=RSE, scopes=("a",)).state_file(tmp_path)
    assert BackfillRequest(rse=RSE, scopes=("s",), dataset="ds").dataset_did == ("s", "ds")
    assert BackfillRequest(rse=RSE, dataset="s:ds").dataset_did == ("s", "ds")
    with pytest.raises(ValueError, match="SCOPE:NAME"):
        BackfillRequest(rse=RSE, dataset="ds")


def test_spool_keeps_first_numbering_refuses_other_parameters_and_never_moves_back(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    spool = ListingSpool(path, {"rse": RSE})
    assert spool.add([("s", "a"), ("s", "b")]) == 2
    assert spool.add([("s", "b"), ("s", "c")]) == 1  # listing a unit again never renumbers a name
    assert [(d.seq, d.name) for d in spool.after(0, 10)] == [(1, "a"), (2, "b"), (3, "c")]
    spool.acknowledge(2)
    spool.acknowledge(1)
    assert spool.acknowledged == 2
    spool.close()
    with pytest.raises(SpoolMismatchError, match="belongs to"):
        ListingSpool(path, {"rse": "OTHER"})
    again = ListingSpool(path, {"rse": RSE})
    assert (again.acknowledged, again.listed) == (2, 3)
    again.plan_units(["scope:b", "scope:a"])
    again.plan_units(["scope:a", "scope:new", "scope:b"])  # resumed later: a scope appeared since
    again.unit_listed("scope:b")
    assert again.units_to_list() == ["scope:a", "scope:new"]
    again.reset()
    assert (again.acknowledged, again.listed, again.planned) == (0, 0, False)
    again.close()


class _Catalogue:
    """Rucio's answers as plain data: which names exist and which are at the RSE (a pure stand-in)."""

    def __init__(self, names: Sequence[str], at_rse: set[str]) -> None:
        self.names = list(names)
        self.at_rse = at_rse
        self.asked: list[list[str]] = []
        self.fail_next = False
        self.requests = 0

    def listing(self) -> Iterator[tuple[str, str]]:
        for name in self.names:
            yield SCOPE, name

    def replicas(
        self, dids: Sequence[tuple[str, str]], rse: str, *, updated_after: Any = None
    ) -> dict[Any, Any]:
        if self.fail_next:
            self.fail_next = False
            raise TransientSourceError("Rucio away")
        self.asked.append([name for _, name in dids])
        return {(s, n): _replica(n, (RUCIO_PREFIX + n,)) for s, n in dids if n in self.at_rse}

    def metadata(self, dids: Sequence[tuple[str, str]]) -> dict[Any, Any]:
        return {did: {"rubin_butler": "dim_file"} for did in dids}

    def close(self) -> None:
        pass


def _source(catalogue: _Catalogue, path: Path, parallel: int = 1) -> RucioReplicaSource:
    return RucioReplicaSource(
        catalogue,  # type: ignore[arg-type]
        ListingSpool(path, {"rse": RSE}),
        [ListingUnit("scope:s", catalogue.listing)],
        rse=RSE,
        make_event=lambda replica, meta: replica.name.encode(),
        chunk_size=4,
        list_step=5,
        parallel=parallel,
    )


def _drain(source: RucioReplicaSource, *, acknowledge: bool = True, batches: int = 100) -> list[RawRecord]:
    seen: list[RawRecord] = []
    for _ in range(batches):
        records = source.poll(100, 0.0)
        if not records and source.exhausted:
            break
        seen.extend(records)
        if acknowledge:
            source.acknowledge(records)
    return seen


def test_source_checkpoints_past_empty_chunks_and_resumes_without_listing(tmp_path: Path) -> None:
    names = [f"f{index:02d}" for index in range(12)]
    catalogue = _Catalogue(names, at_rse={"f01", "f02", "f09"})
    path = tmp_path / "state.sqlite3"
    source = _source(catalogue, path)
    assert source.poll(100, 0.0) == []  # listing, 5 names per poll
    assert source.progress().unit == "DIDs listed"
    first: list[RawRecord] = []
    while not first:
        first = source.poll(100, 0.0)
    assert [r.position.did for r in first] == [f"{SCOPE}:f01", f"{SCOPE}:f02"]
    assert first[0].position == Position(source="rucio", line=2, did=f"{SCOPE}:f01")
    source.acknowledge(first)
    assert source.spool.acknowledged == 4  # the whole first chunk (f00..f03)
    catalogue.fail_next = True
    with pytest.raises(TransientSourceError):
        source.poll(100, 0.0)
    second: list[RawRecord] = []
    while not second:  # the failed chunk is asked again; f04..f07 give nothing
        second = source.poll(100, 0.0)
    assert [r.position.did for r in second] == [f"{SCOPE}:f09"]
    assert catalogue.asked[1][0] == "f04"
    assert source.spool.acknowledged == 8  # past the empty chunk, not past f09 (read, not acknowledged)
    source.close()  # killed here

    catalogue.asked.clear()
    resumed = _source(catalogue, path)
    assert (resumed.counts.resumed_after, resumed.counts.listed) == (8, 12)
    again = _drain(resumed)
    assert [r.position.did for r in again] == [f"{SCOPE}:f09"]
    assert catalogue.asked[0][0] == "f08"  # nothing before the checkpoint asked again
    assert resumed.counts.relisted_units == 0
    assert resumed.spool.acknowledged == 12
    assert resumed.spool.finished
    resumed.close()


def test_parallel_chunks_are_handed_over_in_order_once_even_after_a_failure(tmp_path: Path) -> None:
    names = [f"f{index:02d}" for index in range(40)]
    at_rse = {name for index, name in enumerate(names) if index % 3 == 0}
    catalogue = _Catalogue(names, at_rse=at_rse)
    source = _source(catalogue, tmp_path / "state.sqlite3", parallel=3)
    seen: list[RawRecord] = []
    for turn in range(200):
        if turn == 12:
            catalogue.fail_next = True
        try:
            records = source.poll(100, 0.0)
        except TransientSourceError:
            continue
        if not records and source.exhausted:
            break
        seen.extend(records)
        source.acknowledge(records)
    assert not catalogue.fail_next  # the failure did happen
    assert [r.position.did for r in seen] == [f"{SCOPE}:{name}" for name in names if name in at_rse]
    assert source.spool.finished
    source.close()


def test_rucio_section_loads_from_its_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingestd.config import load_settings

    monkeypatch.setenv("INGESTD_RUCIO_HOST", "https://rucio.example:443")
    monkeypatch.setenv("INGESTD_RUCIO_CHUNK_SIZE", "250")
    settings = load_settings(None)
    assert (settings.rucio.host, settings.rucio.chunk_size) == ("https://rucio.example:443", 250)


def test_replay_from_rucio_refuses_incomplete_or_foreign_options(capsys: pytest.CaptureFixture[str]) -> None:
    from ingestd.cli import main

    assert main(["replay", "--from-rucio"]) == 2
    assert "--rse" in capsys.readouterr().err
    assert main(["replay", "--from-rucio", "--rse", RSE, "--until", "1h"]) == 2
    assert main(["replay", "--sample", "--rse", RSE]) == 2
    assert "need --from-rucio" in capsys.readouterr().err


def test_an_empty_listing_finishes_at_once(tmp_path: Path) -> None:
    catalogue = _Catalogue([], at_rse=set())
    source = RucioReplicaSource(
        catalogue,  # type: ignore[arg-type]
        ListingSpool(tmp_path / "state.sqlite3", {"rse": RSE}),
        [],
        rse=RSE,
        make_event=lambda replica, meta: b"",
    )
    assert _drain(source) == []
    assert source.exhausted
    assert source.spool.finished
    source.close()
