"""Replicas at one RSE, read from Rucio's catalogue: the backfill source (``ingestd replay --from-rucio``).

Kafka keeps events for hours; Rucio's catalogue keeps the truth. This source
lists the files of the chosen scopes (or of one dataset) into the backfill's
state file (:class:`~ingestd.backfill.ListingSpool`), then walks that listing in
chunks: for each chunk it asks Rucio which of the files are available at the
RSE (``list_replicas``) and for their ``rubin_butler``/``rubin_sidecar``
metadata (``get_metadata_bulk``), and yields for each such file the very
transfer-done message HermesK would have sent. The engine plans, verifies,
registers, parks and dead-letters them as it does live events.

Up to ``parallel`` chunks are asked about at once, in worker threads, while the
engine writes; their answers are consumed strictly in listing order, and a
failure discards every chunk in flight (the cursor only moves when a chunk's
records are handed over).

Acknowledging a batch moves the state file's checkpoint to the end of the last
chunk whose records are all acknowledged (batches are acknowledged in order, after
the registry committed). A killed backfill started again with the same
parameters skips the listing it already holds and continues after the
checkpoint; files of the chunk in flight are asked about again, and come out
``already_present`` if they were registered.

Each record's :class:`~ingestd.work.Position` is ``source="rucio"``, ``line`` its
place in the listing and ``did`` its ``scope:name``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ingestd.log import get_logger
from ingestd.work import Position

from ._base import Progress, RawRecord

if TYPE_CHECKING:
    from ingestd.backfill import ListingSpool, SpooledDid
    from ingestd.rucio_client import RucioCatalogue

__all__ = ["BackfillCounts", "ListingUnit", "RucioReplicaSource"]

logger = get_logger(__name__)

SOURCE_KIND = "rucio"
"""``Position.source`` (and provenance ``source``) of the records of this source."""


@dataclass(frozen=True, slots=True)
class ListingUnit:
    """One piece of the listing: a scope's files or a dataset's files, listed in one stream."""

    key: str
    """Stable name (``scope:dp2_prep``, ``dataset:dp2_prep:run42``) recorded in the state file."""
    names: Callable[[], Iterator[tuple[str, str]]]
    """Opens the stream of ``(scope, name)`` of the unit's files."""


@dataclass
class BackfillCounts:
    """What a backfill saw, beside the engine's outcomes."""

    listed: int = 0
    """Files in the listing (all runs of this state file)."""
    resumed_after: int = 0
    """Listing position of the checkpoint this run started from (0: from the start)."""
    relisted_units: int = 0
    """Listing units listed by this run (0 when the listing was complete already)."""
    asked: int = 0
    """Files asked about by this run."""
    at_rse: int = 0
    """Of those, available at the RSE: one event each."""
    not_at_rse: int = 0
    """Of those, without an available replica at the RSE (or not updated since ``--since``)."""

    def as_dict(self) -> dict[str, int]:
        """Plain data for the JSON summary."""
        return {
            "listed": self.listed,
            "resumed_after": self.resumed_after,
            "relisted_units": self.relisted_units,
            "asked": self.asked,
            "at_rse": self.at_rse,
            "not_at_rse": self.not_at_rse,
        }


_Answer = tuple[dict[Any, Any], dict[Any, dict[str, Any]]]
"""What Rucio said of one chunk: the files at the RSE, and the metadata of those."""


@dataclass(frozen=True, slots=True)
class _Chunk:
    last_record_seq: int | None
    """Highest listing position among the chunk's records (None: the chunk gave none)."""
    last_seq: int
    """Highest listing position of the chunk."""


class RucioReplicaSource:
    """A finite source of transfer-done events rebuilt from Rucio's catalogue.

    Parameters
    ----------
    catalogue
        The REST client (paced, errors sorted into transient and fatal).
    spool
        The state file: listing and checkpoint.
    units
        The listing units, in order.
    rse
        The RSE whose replicas are backfilled.
    make_event
        Builds the message bytes of one replica from its metadata.
    updated_after
        Only replicas updated at or after this time (``--since``).
    chunk_size
        Files asked about per catalogue request.
    list_step
        Names listed per poll while listing (the loop stays responsive to a stop).
    parallel
        Chunks fetched concurrently (1: one after the other, in the caller's thread).
    """

    def __init__(
        self,
        catalogue: RucioCatalogue,
        spool: ListingSpool,
        units: Sequence[ListingUnit],
        *,
        rse: str,
        make_event: Callable[[Any, dict[str, Any]], bytes],
        updated_after: datetime | None = None,
        chunk_size: int = 500,
        list_step: int = 20_000,
        parallel: int = 1,
    ) -> None:
        self.catalogue = catalogue
        self.spool = spool
        self.units = {unit.key: unit for unit in units}
        self.rse = rse
        self.name = f"rucio replicas at {rse}"
        self._make_event = make_event
        self._updated_after = updated_after
        self._chunk_size = chunk_size
        self._list_step = list_step
        self._paused = False
        self._listing: tuple[str, Iterator[tuple[str, str]]] | None = None
        self._chunks: deque[_Chunk] = deque()
        self._yielded = 0
        self._acked = 0
        spool.plan_units(unit.key for unit in units)
        self._cursor = spool.acknowledged
        self._parallel = max(parallel, 1)
        self._pool = (
            ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="rucio")
            if self._parallel > 1
            else None
        )
        self._inflight: deque[tuple[list[SpooledDid], Future[_Answer]]] = deque()
        self._submitted = self._cursor
        self._exhausted = False
        self.counts = BackfillCounts(listed=spool.listed, resumed_after=self._cursor)
        # Read by progress() from the observers' thread: plain values, never the state file.
        self._listed_all = spool.listing_complete
        self._total = spool.last_seq
        if self._cursor:
            logger.info(
                "backfill_resumed",
                rse=rse,
                after=self._cursor,
                listed=self.counts.listed,
                listing_complete=spool.listing_complete,
            )

    # -- listing ------------------------------------------------------------------------------------------

    def _list_some(self) -> None:
        """List up to ``list_step`` names of the current unit into the state file."""
        if self._listing is None:
            pending = self.spool.units_to_list()
            if not pending:
                return
            key = pending[0]
            unit = self.units.get(key)
            if unit is None:  # the state file names a unit these parameters do not have
                raise ValueError(f"backfill state {self.spool.path} lists unknown unit {key!r}")
            self._listing = (key, unit.names())
            self.counts.relisted_units += 1
            logger.info("backfill_listing_unit", unit=key)
        key, names = self._listing
        batch: list[tuple[str, str]] = []
        finished = False
        for did in names:
            batch.append(did)
            if len(batch) >= self._list_step:
                break
        else:
            finished = True
        if batch:
            self.spool.add(batch)
        if finished:
            self.spool.unit_listed(key)
            self._listing = None
        self.counts.listed = self.spool.listed

    # -- the Source protocol --------------------------------------------------------------------------------

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """List more names, or return the events of the next chunks of the listing.

        Raises
        ------
        TransientSourceError
            Rucio is away or overloaded; the cursor did not move.
        FatalSourceError
            Credentials or names refused.
        """
        if self._paused:
            time.sleep(min(timeout_s, 0.2))
            return []
        if not self._listed_all:
            self._list_some()
            if self.spool.listing_complete:
                self._listed_all, self._total = True, self.spool.last_seq
            return []
        deadline = time.monotonic() + max(timeout_s, 0.0)
        size = min(max_records, self._chunk_size)
        records: list[RawRecord] = []
        while not records:
            self._settle()
            self._fill(size)
            if not self._inflight:
                self._exhausted = True
                self._finish_if_done()
                return []
            spooled, answer = self._inflight.popleft()
            try:
                replicas, metadata = answer.result()
            except BaseException:
                self._discard_inflight()
                raise
            records = self._chunk_records(spooled, replicas, metadata)
            if time.monotonic() >= deadline:
                break
        return records

    def _fill(self, size: int) -> None:
        """Keep ``parallel`` chunks in flight after the last one submitted, in listing order."""
        while len(self._inflight) < self._parallel:
            spooled = self.spool.after(self._submitted, size)
            if not spooled:
                return
            self._submitted = spooled[-1].seq
            if self._pool is None:
                answer: Future[_Answer] = Future()
                try:
                    answer.set_result(self._fetch(spooled))
                except Exception as error:
                    answer.set_exception(error)
            else:
                answer = self._pool.submit(self._fetch, spooled)
            self._inflight.append((spooled, answer))

    def _discard_inflight(self) -> None:
        """Drop every chunk in flight (after a failure): they are asked again from the cursor."""
        for _, answer in self._inflight:
            answer.cancel()
        self._inflight.clear()
        self._submitted = self._cursor

    def _fetch(self, spooled: Sequence[SpooledDid]) -> _Answer:
        """Replicas at the RSE of a chunk's files, and the metadata of those present (worker thread)."""
        dids = [(did.scope, did.name) for did in spooled]
        replicas = self.catalogue.replicas(dids, self.rse, updated_after=self._updated_after)
        present = [did for did in dids if did in replicas]
        metadata = self.catalogue.metadata(present) if present else {}
        return replicas, metadata

    def _chunk_records(
        self, spooled: Sequence[SpooledDid], replicas: dict[Any, Any], metadata: dict[Any, Any]
    ) -> list[RawRecord]:
        present = [did for did in spooled if (did.scope, did.name) in replicas]
        records: list[RawRecord] = []
        for did in present:
            key = (did.scope, did.name)
            value = self._make_event(replicas[key], metadata.get(key, {}))
            position = Position(source=SOURCE_KIND, line=did.seq, did=f"{did.scope}:{did.name}")
            records.append(RawRecord(value=value, position=position, origin=position))
        # Only now, with everything fetched, does the cursor move (a failure leaves it).
        self._cursor = spooled[-1].seq
        self._chunks.append(_Chunk(records[-1].position.line if records else None, spooled[-1].seq))
        self.counts.asked += len(spooled)
        self.counts.at_rse += len(records)
        self.counts.not_at_rse += len(spooled) - len(records)
        if records:
            self._yielded = max(self._yielded, records[-1].position.line or 0)
        return records

    def _settle(self) -> None:
        """Checkpoint past chunks that gave no records, once nothing before them is outstanding."""
        if self._yielded > self._acked:
            return
        last = None
        while self._chunks and self._chunks[0].last_record_seq is None:
            last = self._chunks.popleft().last_seq
        if last is not None:
            self.spool.acknowledge(last)

    def _finish_if_done(self) -> None:
        done = self._yielded <= self._acked and not self._chunks and self._listed_all
        if done and not self.spool.finished:
            self.spool.finish()
            logger.info("backfill_finished", rse=self.rse, **self.counts.as_dict())

    @property
    def exhausted(self) -> bool:
        """The listing is complete and every chunk of it was read."""
        return self._exhausted

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        """Move the checkpoint to the end of the last chunk all of whose records are acknowledged."""
        if not records:
            return
        highest = max(record.position.line or 0 for record in records)
        self._acked = max(self._acked, highest)
        checkpoint = None
        while self._chunks:
            front = self._chunks[0]
            if front.last_record_seq is not None and front.last_record_seq > self._acked:
                break
            checkpoint = self._chunks.popleft().last_seq
        if checkpoint is not None:
            self.spool.acknowledge(checkpoint)

    def pause(self) -> None:
        """Stop asking Rucio until :meth:`resume` (chunks in flight are dropped)."""
        self._paused = True
        self._discard_inflight()

    def resume(self) -> None:
        """Ask again."""
        self._paused = False

    def keepalive(self, timeout_s: float) -> None:
        """Nothing to keep alive: wait."""
        time.sleep(max(timeout_s, 0.0))

    def readiness(self) -> tuple[bool, str]:
        """Always ready (failures surface as errors of :meth:`poll`)."""
        return True, "rucio"

    def progress(self) -> Progress:
        """Names listed while listing; then the listing position reached against its size."""
        if not self._listed_all:
            return Progress(done=self.counts.listed, total=None, unit="DIDs listed")
        return Progress(done=self._cursor, total=self._total, unit="DIDs")

    def close(self) -> None:
        """Close the listing stream and the state file (nothing is acknowledged)."""
        self._listing = None
        self._discard_inflight()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.catalogue.close()
        self.spool.close()
