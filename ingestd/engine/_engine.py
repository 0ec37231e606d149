"""The engine: one batch of raw records in, exactly one outcome per event out.

Stages, always in this order (ARCHITECTURE, invariants 1 and 2):

1. **decode** — the planner turns each record into one planned item (register a
   dataset, import dimension records, import a zip, skip, reject); it never raises
   on bad input (a planner bug is caught and the record dead-lettered, so one
   poison record cannot stop a partition).
2. **verify** (optional) — files exist with the announced size and checksum; a
   file not visible yet is parked, a mismatch rejected.
3. **register** — imports first, in one ``import_files`` call (``dim_file`` before
   ``zip_file``, so the batch's own dimension records are usable; one by one if
   that call fails unexpectedly), then one ``register`` call, one
   transaction, for every dataset of the batch. Each registry status maps to one
   outcome; a registry call that raises something unexpected is bisected until
   the one item that makes it raise is found and dead-lettered (when every item
   fails alike, the registry itself is broken: the engine stops instead).
4. **dead letters** — rejected and conflicting events to the dead-letter topic,
   parked ones to the retry topic; the engine waits until each is confirmed.
   With a pending store (:mod:`ingestd.engine._pending`), events waiting for
   dimension records are parked in the registry database instead, with the
   records they wait for, and an import that added records asks for the events
   waiting on them to be re-driven.

Only then does the caller acknowledge the source (:mod:`ingestd.engine._runner`).
A transient failure in any stage (database or broker away) is retried in place
with back-off; nothing is acknowledged meanwhile, nothing is ever dead-lettered
for it. A fatal one raises :class:`FatalEngineError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from butler_registry._pending import PendingEvent
from butler_registry.interface import (
    DatasetRecord,
    ImportKind,
    ImportRequest,
    ImportResult,
    ItemResult,
    ItemStatus,
    Registry,
    RegistryConfigurationError,
    RegistryError,
    SchemaVersionError,
    TransientRegistryError,
)
from ingestd.deadletter import (
    DeadLetter,
    DeadLetterDeliveryError,
    DeadLetterWriter,
    FatalDeadLetterError,
)
from ingestd.log import get_logger
from ingestd.sources import RawRecord
from ingestd.work import (
    EventReport,
    EventSummary,
    ImportDimensions,
    ImportZip,
    Outcome,
    Planned,
    Position,
    RegisterDataset,
    Reject,
    Skip,
)
from monitoring.metrics import IngestMetrics, Stage

from ._control import Pausable, Retrier
from ._errors import EngineError, FatalEngineError
from ._parking import FILE_NOT_VISIBLE, ParkingPolicy
from ._pending import PendingQueue
from ._verify import FileToCheck, Verifier

__all__ = ["Admission", "BatchResult", "Decoded", "Engine", "Planner"]

logger = get_logger(__name__)

Planner = Callable[[bytes, Position], Planned]
"""Decode one raw record (bytes and its origin) into one planned item; never raises on bad input."""

Admission = Callable[[RawRecord], str | None]
"""Returns why a record is passed over (it becomes ``skipped``), or None to process it (re-drive filters)."""

_STATUS_OUTCOMES: dict[ItemStatus, tuple[Outcome, str | None]] = {
    ItemStatus.inserted: (Outcome.registered, None),
    ItemStatus.already_present: (Outcome.already_present, None),
    ItemStatus.conflict: (Outcome.conflict, "conflict"),
    ItemStatus.missing_dimensions: (Outcome.parked, "missing_dimensions"),
    ItemStatus.invalid: (Outcome.rejected, "invalid_dataset"),
}
"""Registry item status -> outcome and the error class it is dead-lettered or parked with."""

_FATAL_REGISTRY_ERRORS = (SchemaVersionError, RegistryConfigurationError)

MISSING_DIMENSIONS = "missing_dimensions"
"""Error class of an event waiting for dimension records (parked in the pending store when there is one)."""

T = TypeVar("T")


@dataclass
class _Item:
    """One event travelling through the stages."""

    record: RawRecord
    planned: Planned
    outcome: Outcome | None = None
    error_class: str | None = None
    reason: str | None = None
    waiting_for_file: bool = False
    """Parked because its file is not there (yet): the file-arrival time limit applies."""
    missing: tuple[str, ...] = ()
    """Parked for missing dimension records: the registry's names of them (``visit:HSC/330``)."""
    request: ImportRequest | None = None
    """An import's request with its file already read (:meth:`Registry.read_import`), if it was."""

    @property
    def summary(self) -> EventSummary:
        return self.planned.summary

    def settle(self, outcome: Outcome, error_class: str | None = None, reason: str | None = None) -> None:
        self.outcome = outcome
        self.error_class = error_class
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Decoded:
    """The decode stage's output for one batch: one planned item per record, and its duration."""

    planned: list[Planned]
    seconds: float
    imports: dict[int, ImportRequest] = field(default_factory=dict)
    """Imports whose file the registry read ahead, by position in the batch."""


@dataclass
class BatchResult:
    """What a processed batch produced; the caller acknowledges the source, then publishes the reports."""

    reports: list[EventReport]
    letters: int = 0
    durations: dict[str, float] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> int:
        """Events of the batch that ended in ``outcome``."""
        return sum(1 for report in self.reports if report.outcome is outcome)


class Engine:
    """Run batches of raw records through decode, verify, register and dead letters.

    Parameters
    ----------
    registry
        Where datasets and dimension records go.
    planner
        Decoder (see :data:`Planner`).
    dead_letters
        Writer of dead-letter and retry copies.
    retrier
        Retries transient failures (shares the stop request and health state).
    parking
        Retry schedule of parked events.
    verifier
        File checks; None when verification is off.
    metrics
        Stage durations, registry and Kafka error counts.
    admit
        Passes records over before decoding (the dead-letter re-drive's filters);
        they end ``skipped`` and are acknowledged in order with their batch.
    pending
        Where events waiting for dimension records are parked; None parks them in
        the retry topic like files not visible yet.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        planner: Planner,
        dead_letters: DeadLetterWriter,
        retrier: Retrier,
        parking: ParkingPolicy | None = None,
        verifier: Verifier | None = None,
        metrics: IngestMetrics | None = None,
        admit: Admission | None = None,
        pending: PendingQueue | None = None,
    ) -> None:
        self.admit = admit
        self.pending = pending
        self.registry = registry
        self.planner = planner
        self.dead_letters = dead_letters
        self.retrier = retrier
        self.parking = parking or ParkingPolicy()
        self.verifier = verifier
        self.metrics = metrics
        self.last_registry_success = time.monotonic()

    # -- the batch -----------------------------------------------------------------------------

    def decode(self, records: Sequence[RawRecord]) -> Decoded:
        """Run the decode stage alone (pure: no side effects, safe on another thread).

        The runner decodes the next batch while the registry writes the current one.
        The files of imports (dimension exports, zips) are read here too
        (:meth:`Registry.read_import`): the thread writing to the registry then does
        no file I/O, and under a busy interpreter lock every system call on that
        thread costs a wait for the lock (measured: 0.1 ms per zip alone, 16 ms with
        one CPU-bound thread beside it).
        """
        started = time.perf_counter()
        planned = [self._plan(record) for record in records]
        imports: dict[int, ImportRequest] = {}
        for index, item in enumerate(planned):
            if isinstance(item, ImportDimensions | ImportZip):
                request = self._read_ahead(_import_request(item))
                if request.reading is not None:
                    imports[index] = request
        return Decoded(planned, time.perf_counter() - started, imports)

    def _read_ahead(self, request: ImportRequest) -> ImportRequest:
        try:
            return self.registry.read_import(request)
        except Exception:  # a registry bug here only costs the read ahead: the import reads it again
            logger.exception("registry_read_ahead_failed", file=str(request.path))
            return request

    def process(
        self, records: Sequence[RawRecord], source: Pausable, decoded: Decoded | None = None
    ) -> BatchResult:
        """Take ``records`` through every stage; return one report per record, in order.

        Parameters
        ----------
        records
            The batch.
        source
            Paused and kept alive while a stage backs off.
        decoded
            The decode stage's result when it was run ahead (:meth:`decode`).

        Raises
        ------
        FatalEngineError
            The registry or the dead-letter writer cannot continue.
        BatchAbandonedError
            Stop deadline passed during a transient failure; nothing is durable-acknowledged.
        """
        durations: dict[str, float] = {}
        if decoded is None:
            decoded = self.decode(records)
        if len(decoded.planned) != len(records):
            raise ValueError("decoded items do not match the batch")
        durations[Stage.decode.value] = decoded.seconds
        if self.metrics is not None:
            self.metrics.stage_duration.labels(stage=Stage.decode.value).observe(decoded.seconds)
        items = [_Item(record, planned) for record, planned in zip(records, decoded.planned, strict=True)]
        for index, request in decoded.imports.items():
            items[index].request = request
        for item in items:
            planned = item.planned
            if isinstance(planned, Skip):
                item.settle(Outcome.skipped, None, planned.reason)
            elif isinstance(planned, Reject):
                item.settle(Outcome.rejected, planned.error_class, planned.reason)
        if self.verifier is not None:
            with self._timed(Stage.verify, durations):
                self._verify(items)
        with self._timed(Stage.register, durations):
            self._register(items, source)
        with self._timed(Stage.dead_letter, durations):
            letters, parked = self._letters(items)
            self._deliver(letters, source)
            if parked:
                self._park(parked, source)
        committed_at = datetime.now(UTC)
        reports = [
            EventReport(
                position=item.record.origin,
                outcome=item.outcome or Outcome.rejected,
                summary=item.summary,
                reason=item.reason,
                error_class=item.error_class,
                committed_at=committed_at,
            )
            for item in items
        ]
        return BatchResult(reports=reports, letters=len(letters), durations=durations)

    def _timed(self, stage: Stage, durations: dict[str, float]) -> _StageTimer:
        return _StageTimer(stage, durations, self.metrics)

    # -- decode --------------------------------------------------------------------------------

    def _plan(self, record: RawRecord) -> Planned:
        if self.admit is not None:
            passed_over = self.admit(record)
            if passed_over is not None:
                return Skip(reason=passed_over, summary=EventSummary())
        try:
            return self.planner(record.value, record.origin)
        except Exception as error:  # a decoder bug must not block the partition: dead-letter the record
            logger.exception("planner_failed", position=str(record.origin))
            return Reject(
                reason=f"decoder raised {type(error).__name__}: {error}",
                error_class="decoder_error",
                summary=EventSummary(),
            )

    # -- verify --------------------------------------------------------------------------------

    def _verify(self, items: list[_Item]) -> None:
        assert self.verifier is not None
        pending: list[tuple[_Item, FileToCheck]] = []
        for item in items:
            if item.outcome is not None:
                continue
            check = _file_to_check(item.planned)
            if check is not None:
                pending.append((item, check))
        if not pending:
            return
        verdicts = self.verifier.verify([check for _, check in pending])
        for (item, _check), verdict in zip(pending, verdicts, strict=True):
            if verdict.ok:
                continue
            if verdict.park:
                item.settle(Outcome.parked, verdict.error_class, verdict.reason)
                item.waiting_for_file = True
            else:
                item.settle(Outcome.rejected, verdict.error_class, verdict.reason)

    # -- register ------------------------------------------------------------------------------

    def _register(self, items: list[_Item], source: Pausable) -> None:
        open_items = [item for item in items if item.outcome is None]
        dims = [item for item in open_items if isinstance(item.planned, ImportDimensions)]
        zips = [item for item in open_items if isinstance(item.planned, ImportZip)]
        datasets = [item for item in open_items if isinstance(item.planned, RegisterDataset)]
        if dims or zips:
            self._import_all(dims + zips, source)
        if datasets:
            records = [_dataset(item.planned) for item in datasets]
            results = self._register_datasets(records, source)
            if len(results) > 1 and all(isinstance(result, str) for result in results):
                # Not one poison record but the registry itself: stop rather than dead-letter everything.
                raise FatalEngineError(f"the registry fails every item of the batch: {results[0]}")
            for item, result in zip(datasets, results, strict=True):
                self._settle_item(item, result)
        self.last_registry_success = time.monotonic()

    def _registry_call(self, attempt: Callable[[], T], source: Pausable) -> T:
        def count(error: BaseException) -> None:
            if self.metrics is not None:
                self.metrics.observe_error(self.metrics.registry_errors, error)

        try:
            return self.retrier.call(
                Stage.register,
                attempt,
                transient=(TransientRegistryError,),
                source=source,
                health_key="registry",
                on_error=count,
            )
        except _FATAL_REGISTRY_ERRORS as error:
            count(error)
            raise FatalEngineError(f"registry unusable: {error}") from error

    def _register_datasets(self, records: list[DatasetRecord], source: Pausable) -> list[ItemResult | str]:
        """Register ``records``; an unexpected failure is bisected down to the item causing it.

        Returns one :class:`ItemResult` per record, or the error text for a record
        the registry cannot take at all.
        """
        try:
            result = self._registry_call(lambda: self.registry.register(records), source)
        except EngineError:
            raise
        except Exception as error:
            if self.metrics is not None:
                self.metrics.observe_error(self.metrics.registry_errors, error)
            if len(records) == 1:
                logger.exception("registry_item_failed", dataset_id=str(records[0].id))
                return [f"registry raised {type(error).__name__}: {error}"]
            logger.warning(
                "registry_batch_failed_bisecting",
                size=len(records),
                error=str(error),
                error_type=type(error).__name__,
            )
            half = len(records) // 2
            return self._register_datasets(records[:half], source) + self._register_datasets(
                records[half:], source
            )
        if len(result.items) != len(records):
            raise FatalEngineError(
                f"registry returned {len(result.items)} results for {len(records)} datasets (registry bug)"
            )
        return list(result.items)

    def _settle_item(self, item: _Item, result: ItemResult | str) -> None:
        if isinstance(result, str):
            item.settle(Outcome.rejected, "registry_error", result)
            return
        outcome, error_class = _STATUS_OUTCOMES[result.status]
        reason = result.reason
        if result.status is ItemStatus.missing_dimensions and result.missing:
            reason = f"missing dimension records {', '.join(result.missing)}" + (
                f": {reason}" if reason else ""
            )
            item.missing = tuple(result.missing)
        item.settle(outcome, error_class, reason)

    def _import_all(self, items: list[_Item], source: Pausable) -> None:
        """Import the batch's files with one registry call (exports first), one outcome per file.

        Most of a small import's cost is its commit, so the registry gets the whole
        list (:meth:`Registry.import_files`). A call that raises something unexpected
        (a registry bug, a file that makes it raise) is not pinned on every file: the
        files are imported one by one instead, each with its own outcome.
        """
        items = self._park_not_visible(items)
        if not items:
            return
        requests = [item.request or _import_request(item.planned) for item in items]
        try:
            results = self._registry_call(lambda: self.registry.import_files(requests), source)
        except EngineError:
            raise
        except Exception as error:
            if self.metrics is not None:
                self.metrics.observe_error(self.metrics.registry_errors, error)
            logger.warning(
                "registry_import_batch_failed_one_by_one",
                files=len(items),
                error=str(error),
                error_type=type(error).__name__,
            )
            if self.pending is not None:
                # A registry that commits file by file may have added records before it raised;
                # re-importing those reports nothing new, so say now that records arrived.
                self.pending.records_arrived()
            for item in items:
                self._import(item, source)
            return
        if len(results) != len(items):
            raise FatalEngineError(
                f"registry returned {len(results)} results for {len(items)} files (registry bug)"
            )
        for item, result in zip(items, results, strict=True):
            self._settle_import(item, result)

    @staticmethod
    def _park_not_visible(items: list[_Item]) -> list[_Item]:
        """Park the files not visible here yet; return the others.

        With verification on, the verify stage has already done this. Without it, the
        registry would find the file missing and call it invalid: a transfer-done event
        may reach the daemon before the file system shows the file (a shared file
        system's attribute cache), so that is worth waiting for, not a rejection.
        """
        visible: list[_Item] = []
        for item in items:
            planned = item.planned
            assert isinstance(planned, ImportDimensions | ImportZip)
            if item.request is not None:
                visible.append(item)  # read ahead: it was there
                continue
            try:
                os.stat(planned.path)
            except FileNotFoundError as error:
                _park_not_found(item, planned, error)
                continue
            except OSError:
                pass  # unreadable for another reason: the registry reports it
            visible.append(item)
        return visible

    def _import(self, item: _Item, source: Pausable) -> None:
        planned = item.planned
        assert isinstance(planned, ImportDimensions | ImportZip)
        what = "dimension export" if isinstance(planned, ImportDimensions) else "zip"

        def attempt() -> ImportResult:
            if isinstance(planned, ImportDimensions):
                return self.registry.import_dimensions(planned.path, planned.provenance)
            return self.registry.import_zip(planned.path, planned.provenance)

        try:
            result = self._registry_call(attempt, source)
        except EngineError:
            raise
        except FileNotFoundError as error:
            _park_not_found(item, planned, error)
            return
        except OSError as error:
            item.settle(Outcome.rejected, "file_unreadable", f"cannot read {what} {planned.path}: {error}")
            return
        except (RegistryError, ValueError, KeyError, TypeError) as error:
            if self.metrics is not None:
                self.metrics.observe_error(self.metrics.registry_errors, error)
            item.settle(
                Outcome.rejected, "import_failed", f"{what} {planned.path}: {type(error).__name__}: {error}"
            )
            return
        self._settle_import(item, result)

    def _settle_import(self, item: _Item, result: ImportResult) -> None:
        planned = item.planned
        outcome, error_class = _STATUS_OUTCOMES[result.status]
        if result.status is ItemStatus.invalid:
            error_class = "invalid_export" if isinstance(planned, ImportDimensions) else "invalid_zip"
        reason = result.reason
        if result.status is ItemStatus.missing_dimensions:
            missing = sorted({m for dataset in result.datasets for m in dataset.missing})
            item.missing = tuple(missing)
            if not reason:
                reason = f"missing dimension records {', '.join(missing)}"
        if result.dimension_records_inserted and self.pending is not None:
            self.pending.records_arrived()
        item.settle(outcome, error_class, reason)

    # -- dead letters --------------------------------------------------------------------------

    def _letters(self, items: list[_Item]) -> tuple[list[DeadLetter], list[PendingEvent]]:
        """Dead letters and retry-topic copies to deliver, and rows of events parked in the pending store."""
        letters: list[DeadLetter] = []
        parked: list[PendingEvent] = []
        for item in items:
            outcome = item.outcome
            if outcome is Outcome.parked:
                verdict = self.parking.park(
                    item.record,
                    error_class=item.error_class or "parked",
                    reason=item.reason or "parked",
                    waiting_for_file=item.waiting_for_file,
                )
                item.settle(verdict.outcome, item.error_class, verdict.reason)
                if (
                    self.pending is not None
                    and verdict.outcome is Outcome.parked
                    and item.error_class == MISSING_DIMENSIONS
                ):
                    parked.append(
                        self.pending.row(item.record, item.planned, verdict.letter.info, item.missing)
                    )
                else:
                    letters.append(verdict.letter)
            elif outcome in (Outcome.rejected, Outcome.conflict):
                assert outcome is not None
                letters.append(
                    self.parking.dead_letter(
                        item.record,
                        outcome=outcome,
                        error_class=item.error_class or outcome.value,
                        reason=item.reason or outcome.value,
                    )
                )
        return letters, parked

    def _park(self, parked: list[PendingEvent], source: Pausable) -> None:
        """Write the batch's parked events to the pending store before the batch is acknowledged."""
        pending = self.pending
        assert pending is not None
        self._registry_call(lambda: pending.park(parked), source)

    def _deliver(self, letters: list[DeadLetter], source: Pausable) -> None:
        if not letters:
            return
        pending = letters

        def attempt() -> None:
            nonlocal pending
            try:
                self.dead_letters.write(pending)
            except DeadLetterDeliveryError as error:
                pending = error.undelivered or pending
                raise

        def count(error: BaseException) -> None:
            if self.metrics is not None:
                self.metrics.observe_error(self.metrics.kafka_errors, error)

        try:
            self.retrier.call(
                Stage.dead_letter,
                attempt,
                transient=(DeadLetterDeliveryError,),
                source=source,
                health_key="dead_letters",
                on_error=count,
            )
        except FatalDeadLetterError as error:
            raise FatalEngineError(f"dead letters cannot be written: {error}") from error


def _dataset(planned: Planned) -> DatasetRecord:
    assert isinstance(planned, RegisterDataset)
    return planned.record


def _park_not_found(item: _Item, planned: ImportDimensions | ImportZip, error: FileNotFoundError) -> None:
    """Park an import whose file the file system does not show (yet): it may still arrive."""
    what = "dimension export" if isinstance(planned, ImportDimensions) else "zip"
    item.settle(Outcome.parked, FILE_NOT_VISIBLE, f"{what} {planned.path} not found: {error}")
    item.waiting_for_file = True


def _import_request(planned: Planned) -> ImportRequest:
    assert isinstance(planned, ImportDimensions | ImportZip)
    kind = ImportKind.dimensions if isinstance(planned, ImportDimensions) else ImportKind.zip
    return ImportRequest(kind, planned.path, planned.provenance)


def _file_to_check(planned: Planned) -> FileToCheck | None:
    if isinstance(planned, RegisterDataset):
        file = planned.record.file
        if file is None:
            return None
        return FileToCheck(Path(file.path), size=file.size, adler32=file.adler32, md5=file.md5)
    if isinstance(planned, ImportDimensions | ImportZip):
        summary = planned.summary
        return FileToCheck(planned.path, size=summary.size, adler32=summary.adler32, md5=summary.md5)
    return None


class _StageTimer:
    """Time one stage into ``durations`` and ``ingestd_stage_duration_seconds``."""

    def __init__(self, stage: Stage, durations: dict[str, float], metrics: IngestMetrics | None) -> None:
        self.stage = stage
        self.durations = durations
        self.metrics = metrics
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.durations[self.stage.value] = elapsed
        if self.metrics is not None:
            self.metrics.stage_duration.labels(stage=self.stage.value).observe(elapsed)
