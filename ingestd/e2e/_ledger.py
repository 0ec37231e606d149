"""The ledger of a run: every generated event and what it must lead to, written as the events are made.

One tab-separated line per event (index, facility, kind, topic, DID, transfer id,
dataset ids, dimension key) goes to a file while events stream out of the
generator, so a run of any size keeps only counts in memory; the reconciliation
loads the file into PostgreSQL and compares sets there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from ingestd.sitemap import SiteMap

from ._campaign import FACILITY_UNDER_TEST, GeneratedEvent

__all__ = ["LEDGER_COLUMNS", "Ledger", "LedgerRow"]

LEDGER_COLUMNS: Final = (
    "idx",
    "facility",
    "kind",
    "topic",
    "did",
    "transfer_id",
    "dataset_ids",
    "dimension_key",
)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One line of the ledger."""

    index: int
    facility: str
    kind: str
    topic: str
    did: str
    transfer_id: str
    dataset_ids: tuple[str, ...]
    dimension_key: str | None


@dataclass
class Ledger:
    """Expectations of a run, streamed to ``path``; counts kept in memory.

    Parameters
    ----------
    path
        The ledger file (created, or appended to by a run that feeds in several steps).
    site_map
        Decides each event's topic, as the publisher will.
    """

    path: Path
    site_map: SiteMap
    events: int = 0
    by_facility_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    datasets: int = 0
    dimension_files: int = 0
    _stream: IO[str] | None = None

    def __enter__(self) -> Ledger:
        self._stream = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the file."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def record(self, event: GeneratedEvent) -> None:
        """Write one event's line."""
        if self._stream is None:
            raise RuntimeError("the ledger is not open")
        topic = self.site_map.topic_for(event.rse, event.scope)
        ids = " ".join(str(dataset_id) for dataset_id in event.dataset_ids)
        fields = (
            str(event.index),
            event.facility,
            event.kind.value,
            topic,
            event.did,
            event.transfer_id,
            ids,
            event.dimension_key or "",
        )
        self._stream.write("\t".join(fields) + "\n")
        self.events += 1
        self.by_facility_kind[(event.facility, event.kind.value)] += 1
        self.by_topic[topic] += 1
        if event.facility == FACILITY_UNDER_TEST:
            self.datasets += len(event.dataset_ids)
            self.dimension_files += event.dimension_key is not None

    @property
    def facility_events(self) -> int:
        """Events for the facility under test."""
        return sum(n for (facility, _), n in self.by_facility_kind.items() if facility == FACILITY_UNDER_TEST)

    def rows(self) -> Iterator[LedgerRow]:
        """Read the ledger back."""
        with self.path.open(encoding="utf-8") as stream:
            for line in stream:
                index, facility, kind, topic, did, transfer_id, ids, dimension = line.rstrip("\n").split("\t")
                yield LedgerRow(
                    int(index), facility, kind, topic, did, transfer_id, tuple(ids.split()), dimension or None
                )

    def summary(self) -> dict[str, object]:
        """Counts for reports: events by facility and kind, datasets and dimension files expected."""
        return {
            "events": self.events,
            "facility_events": self.facility_events,
            "by_facility_and_kind": {f"{f}/{k}": n for (f, k), n in sorted(self.by_facility_kind.items())},
            "expected_datasets": self.datasets,
            "expected_dimension_files": self.dimension_files,
        }
