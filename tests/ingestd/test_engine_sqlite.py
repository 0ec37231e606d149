"""The engine's stages on the embedded SQLite registry (no server): outcomes, bisection, files, letters."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from butler_registry import open_registry
from butler_registry.interface import DatasetRecord, RegisterResult, Registry
from ingestd.config import IngestdSettings, load_settings
from ingestd.deadletter import DeadLetter, DeadLetterDeliveryError, Destination, FileDeadLetterWriter
from ingestd.engine import Engine, ParkingPolicy, Retrier, StopToken
from ingestd.engine._assembly import make_planner, make_rules, make_verifier
from ingestd.samples import demo_config, events_file, files_dir
from ingestd.sources import JsonlFileSource, RawRecord
from ingestd.work import ButlerKind, Outcome, Position


class _Idle:
    def pause(self) -> None:
        """Nothing to pause."""

    def resume(self) -> None:
        """Nothing to resume."""

    def keepalive(self, timeout_s: float) -> None:
        """No group to keep."""


@pytest.fixture
def demo(tmp_path: Path) -> IngestdSettings:
    """The bundled demo settings, writing into tmp_path."""
    return load_settings(
        demo_config(),
        registry={"url": f"sqlite:///{tmp_path / 'r.sqlite3'}"},
        dead_letters={"file": str(tmp_path / "dead.jsonl")},
    )


def _engine(settings: IngestdSettings, registry: Registry, writer: object | None = None) -> Engine:
    rules = make_rules(settings)
    return Engine(
        registry=registry,
        planner=make_planner(rules),
        dead_letters=writer or FileDeadLetterWriter(settings.dead_letters.file),  # type: ignore[arg-type]
        retrier=Retrier(StopToken(), initial_backoff_s=0.001, max_backoff_s=0.002),
        parking=ParkingPolicy(delay_s=1, delay_max_s=1, not_visible_timeout_s=0),
        verifier=make_verifier(settings, rules),
    )


def _records() -> list[RawRecord]:
    return JsonlFileSource(events_file()).poll(100, 0)


def test_bundled_sample_through_every_stage_with_verification(demo: IngestdSettings) -> None:
    with open_registry(demo.registry.url, create=True) as registry:
        result = _engine(demo, registry).process(_records(), _Idle())
        assert registry.stats().datasets >= 4
    outcomes = [report.outcome for report in result.reports]
    assert outcomes.count(Outcome.skipped) == 1
    assert outcomes.count(Outcome.rejected) == 1
    assert outcomes.count(Outcome.registered) == len(outcomes) - 2
    assert {"decode", "verify", "register", "dead_letter"} <= set(result.durations)
    assert all(report.committed_at is not None for report in result.reports)


def test_file_mismatch_rejected_and_missing_file_dead_lettered_without_waiting(
    demo: IngestdSettings, tmp_path: Path
) -> None:
    storage = tmp_path / "files"
    shutil.copytree(files_dir(), storage)
    settings = load_settings(
        demo_config(),
        registry={"url": demo.registry.url},
        dead_letters={"file": str(demo.dead_letters.file)},
        site={
            "facilities": [
                {
                    "name": "Demo",
                    "rses": ["XRD5"],
                    "prefixes": {
                        "XRD5": {"rucio_prefix": "root://xrd5:1098//rucio/demo/", "fs_prefix": str(storage)}
                    },
                }
            ]
        },
    )
    raw = next(p for p in storage.glob("AT_O_*.fits"))
    raw.write_bytes(raw.read_bytes()[:-1] + b"X")  # same size, other checksum
    (storage / "dimensions.yaml").unlink()
    with open_registry(settings.registry.url, create=True) as registry:
        result = _engine(settings, registry).process(_records(), _Idle())
    by_kind = {report.summary.kind: report for report in result.reports if report.summary.kind}
    assert by_kind[ButlerKind.raw_file].outcome is Outcome.rejected
    assert by_kind[ButlerKind.raw_file].error_class == "checksum_mismatch"
    # not_visible_timeout_s is 0 in the demo: a missing file is not waited for.
    assert by_kind[ButlerKind.dim_file].outcome is Outcome.rejected
    assert by_kind[ButlerKind.dim_file].error_class == "file_not_visible"
    letters = [json.loads(line) for line in Path(settings.dead_letters.file).read_text().splitlines()]
    classes = sorted(letter["headers"]["ingestd.error_class"] for letter in letters)
    assert "checksum_mismatch" in classes
    assert "file_not_visible" in classes


class _Poisoned(Registry):
    """A real registry that raises an unexpected error for any batch holding one dataset id."""

    def __init__(self, inner: Registry, poison: str) -> None:
        self.inner = inner
        self.poison = poison
        self.calls = 0

    def register(self, batch: Sequence[DatasetRecord]) -> RegisterResult:
        self.calls += 1
        if any(str(record.id) == self.poison for record in batch):
            raise RuntimeError("registry bug triggered by one item")
        return self.inner.register(batch)

    def import_dimensions(self, export_file, provenance=None):
        return self.inner.import_dimensions(export_file, provenance)

    def import_zip(self, zip_file, provenance=None):
        return self.inner.import_zip(zip_file, provenance)

    def ping(self) -> None:
        self.inner.ping()

    def stats(self):
        return self.inner.stats()


def test_unexpected_registry_error_is_bisected_to_the_one_item(demo: IngestdSettings) -> None:
    records = _records()
    sidecars = [
        json.loads(json.loads(r.value)["payload"]["rubin_sidecar"] or "null")
        for r in records
        if r.value.startswith(b"{") and b'"rubin_sidecar": "{' in r.value
    ]
    poison = sidecars[0]["id"]
    with open_registry(demo.registry.url, create=True) as inner:
        registry = _Poisoned(inner, poison)
        result = _engine(demo, registry).process(records, _Idle())
    failed = [r for r in result.reports if r.error_class == "registry_error"]
    assert len(failed) == 1
    assert str(failed[0].summary.dataset_id) == poison
    assert "registry bug" in (failed[0].reason or "")
    assert sum(1 for r in result.reports if r.outcome is Outcome.registered) >= 3
    assert registry.calls > 1


def test_planner_bug_dead_letters_the_record(demo: IngestdSettings) -> None:
    def broken(raw: bytes, position: Position) -> object:
        raise ZeroDivisionError("bug")

    with open_registry(demo.registry.url, create=True) as registry:
        engine = _engine(demo, registry)
        engine.planner = broken  # type: ignore[assignment]
        result = engine.process(_records()[:2], _Idle())
    assert [r.error_class for r in result.reports] == ["decoder_error", "decoder_error"]


class _FlakyWriter:
    """Confirms only the first letter of each call, the first two times."""

    description = "flaky"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.written: list[DeadLetter] = []

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self.calls.append(len(letters))
        if len(self.calls) <= 2 and len(letters) > 1:
            self.written.append(letters[0])
            raise DeadLetterDeliveryError("broker away", letters[1:])
        self.written.extend(letters)

    def close(self, timeout_s: float) -> None:
        """Nothing buffered."""


def test_dead_letters_retried_until_confirmed_and_never_twice(demo: IngestdSettings) -> None:
    bad = [
        RawRecord(value=b"{broken", position=Position("file", line=n), origin=Position("file", line=n))
        for n in (1, 2, 3)
    ]
    writer = _FlakyWriter()
    with open_registry(demo.registry.url, create=True) as registry:
        result = _engine(demo, registry, writer).process(bad, _Idle())
    assert [r.outcome for r in result.reports] == [Outcome.rejected] * 3
    assert writer.calls == [3, 2, 1]
    assert sorted(letter.info.origin.line or 0 for letter in writer.written) == [1, 2, 3]
    assert all(letter.destination is Destination.dead_letter for letter in writer.written)
