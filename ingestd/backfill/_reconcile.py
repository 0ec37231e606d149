"""``ingestd reconcile``: what Rucio holds at an RSE against what the registry holds there.

Both sides are streamed into a scratch SQLite file and compared there with two
anti-joins, so memory stays flat for millions of files on either side:

* **Rucio side**: the files of the chosen scopes with a replica available at the
  RSE, each planned exactly as the daemon would plan its transfer-done event (same
  URL mapping, same sidecar decoding): a data product or raw yields its dataset
  id, a zip its local path; dimension files and files the daemon would refuse are
  counted, not compared.
* **Registry side**: every dataset whose file lies under one of the RSE's local
  folders (its prefix rules), read in keyset-paginated chunks.

A Rucio data product whose id the registry lacks (or a zip none of whose members
is registered) is *missing in the registry*; a registry dataset whose id no
Rucio file at the RSE carries (and whose zip is not there) is *missing in Rucio*.
Nothing is written unless a backfill of the first kind is asked for.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from butler_registry.interface import Registry
from ingestd.config import IngestdSettings
from ingestd.log import get_logger
from ingestd.planning import PlanRules, plan
from ingestd.rucio_client import FileReplica, RucioCatalogue
from ingestd.sources import RucioReplicaSource, TransientSourceError
from ingestd.work import ImportDimensions, ImportZip, RegisterDataset, Reject, Skip

from ._events import transfer_done_event
from ._plan import BackfillRequest, listing_units, local_roots, preferred_prefixes
from ._spool import ListingSpool

__all__ = ["Difference", "ReconcileReport", "missing_dids", "reconcile"]

logger = get_logger(__name__)

_ZIP_MEMBER: Final = "#zip-path="
_POLL_ATTEMPTS: Final = 5
"""Tries of one chunk while Rucio is away before reconcile gives up (it writes nothing: rerun it)."""

_SCHEMA: Final = (
    "CREATE TABLE rucio (scope TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, dataset_id TEXT, "
    "path TEXT, PRIMARY KEY (scope, name))",
    "CREATE INDEX rucio_dataset ON rucio (dataset_id)",
    "CREATE INDEX rucio_path ON rucio (path)",
    "CREATE TABLE registry (dataset_id TEXT PRIMARY KEY, path TEXT NOT NULL, base_path TEXT NOT NULL)",
    "CREATE INDEX registry_base ON registry (base_path)",
)

_MISSING_IN_REGISTRY: Final = """
SELECT scope, name, kind, dataset_id, path FROM rucio r
WHERE (r.kind IN ('data_product', 'raw_file')
       AND NOT EXISTS (SELECT 1 FROM registry g WHERE g.dataset_id = r.dataset_id))
   OR (r.kind = 'zip_file'
       AND NOT EXISTS (SELECT 1 FROM registry g WHERE g.base_path = r.path))
ORDER BY scope, name
"""

_MISSING_IN_RUCIO: Final = """
SELECT dataset_id, path FROM registry g
WHERE NOT EXISTS (SELECT 1 FROM rucio r WHERE r.dataset_id = g.dataset_id)
  AND NOT EXISTS (SELECT 1 FROM rucio r WHERE r.kind = 'zip_file' AND r.path = g.base_path)
ORDER BY path
"""


@dataclass(frozen=True, slots=True)
class Difference:
    """One file or dataset present on one side only."""

    missing_in: str
    """``registry`` or ``rucio``."""
    dataset_id: str | None
    path: str | None
    did: str | None = None
    """``scope:name`` of the Rucio file (for ``missing_in == "registry"``)."""
    kind: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "missing_in": self.missing_in,
            "did": self.did,
            "dataset_id": self.dataset_id,
            "kind": self.kind,
            "path": self.path,
        }


@dataclass
class ReconcileReport:
    """Counts of both sides and the first differences of each kind."""

    rse: str
    local_roots: tuple[str, ...]
    rucio_files: int = 0
    """Files of the listing with a replica available at the RSE."""
    registry_datasets: int = 0
    """Registry datasets with a file under the RSE's local folders."""
    not_compared: dict[str, int] = field(default_factory=dict)
    """Rucio files at the RSE that name no dataset, by kind or refusal class (dim_file, no_prefix...)."""
    missing_in_registry: int = 0
    missing_in_rucio: int = 0
    examples: list[Difference] = field(default_factory=list)
    """Up to ``limit`` differences of each kind."""

    @property
    def consistent(self) -> bool:
        """Nothing missing on either side."""
        return self.missing_in_registry == 0 and self.missing_in_rucio == 0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "rse": self.rse,
            "local_roots": list(self.local_roots),
            "rucio_files": self.rucio_files,
            "registry_datasets": self.registry_datasets,
            "not_compared": dict(sorted(self.not_compared.items())),
            "missing_in_registry": self.missing_in_registry,
            "missing_in_rucio": self.missing_in_rucio,
            "consistent": self.consistent,
            "differences": [difference.as_dict() for difference in self.examples],
        }


def reconcile(
    settings: IngestdSettings,
    catalogue: RucioCatalogue,
    registry: Registry,
    request: BackfillRequest,
    *,
    workdir: Path,
    limit: int = 1_000,
) -> ReconcileReport:
    """Compare Rucio's replicas at ``request.rse`` with the registry; write nothing to either.

    Parameters
    ----------
    workdir
        Scratch folder for the listing and the comparison (left for :func:`missing_dids`).
    limit
        Most differences of each kind kept in the report (all are counted).

    Raises
    ------
    TransientSourceError, FatalSourceError
        Rucio could not be read.
    TransientRegistryError
        The registry could not be read.
    NotImplementedError
        The registry cannot list its datasets by path (the real Butler adapter).
    """
    rules = PlanRules.from_settings(settings, resolve_symlinks=False)
    roots = local_roots(settings, request.rse, request.scopes)
    report = ReconcileReport(rse=request.rse, local_roots=roots)
    compare = _open_compare(workdir)
    try:
        _read_rucio(settings, catalogue, request, rules, workdir, compare, report)
        for root in roots:
            _read_registry(registry, root, compare)
        report.registry_datasets = int(compare.execute("SELECT count(*) FROM registry").fetchone()[0])
        report.missing_in_registry = _count(compare, _MISSING_IN_REGISTRY)
        report.missing_in_rucio = _count(compare, _MISSING_IN_RUCIO)
        for scope, name, kind, dataset_id, path in compare.execute(
            _MISSING_IN_REGISTRY + f" LIMIT {limit:d}"
        ):
            report.examples.append(Difference("registry", dataset_id, path, f"{scope}:{name}", kind))
        for dataset_id, path in compare.execute(_MISSING_IN_RUCIO + f" LIMIT {limit:d}"):
            report.examples.append(Difference("rucio", dataset_id, path))
    finally:
        compare.close()
    logger.info(
        "reconcile_done",
        rse=request.rse,
        rucio_files=report.rucio_files,
        registry_datasets=report.registry_datasets,
        missing_in_registry=report.missing_in_registry,
        missing_in_rucio=report.missing_in_rucio,
    )
    return report


def missing_dids(workdir: Path) -> Iterator[tuple[str, str]]:
    """``(scope, name)`` of the Rucio files :func:`reconcile` found missing in the registry (streamed)."""
    compare = sqlite3.connect(workdir / "compare.sqlite3")
    try:
        for scope, name, *_ in compare.execute(_MISSING_IN_REGISTRY):
            yield str(scope), str(name)
    finally:
        compare.close()


def _open_compare(workdir: Path) -> sqlite3.Connection:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "compare.sqlite3"
    path.unlink(missing_ok=True)
    compare = sqlite3.connect(path)
    compare.execute("PRAGMA journal_mode=OFF")
    compare.execute("PRAGMA synchronous=OFF")
    for statement in _SCHEMA:
        compare.execute(statement)
    compare.commit()
    return compare


def _count(compare: sqlite3.Connection, query: str) -> int:
    return int(compare.execute(f"SELECT count(*) FROM ({query})").fetchone()[0])


def _read_rucio(  # noqa: PLR0917 - a private step of reconcile(), called once
    settings: IngestdSettings,
    catalogue: RucioCatalogue,
    request: BackfillRequest,
    rules: PlanRules,
    workdir: Path,
    compare: sqlite3.Connection,
    report: ReconcileReport,
) -> None:
    """Stream the files at the RSE through the backfill's own source (same listing, same events)."""
    listing_path = workdir / "listing.sqlite3"
    listing_path.unlink(missing_ok=True)
    prefixes = preferred_prefixes(settings, request.rse)

    def make_event(replica: FileReplica, metadata: dict[str, Any]) -> bytes:
        return transfer_done_event(replica, request.rse, metadata, preferred_prefixes=prefixes)

    source = RucioReplicaSource(
        catalogue,
        ListingSpool(listing_path, {"reconcile": request.parameters()}),
        listing_units(request, catalogue),
        rse=request.rse,
        make_event=make_event,
        updated_after=request.since,
        chunk_size=catalogue.settings.chunk_size,
        parallel=catalogue.settings.parallel_requests,
    )
    try:
        failures = 0
        while True:
            try:
                records = source.poll(10_000, 1.0)
            except TransientSourceError:
                failures += 1
                if failures >= _POLL_ATTEMPTS:
                    raise
                time.sleep(min(2.0**failures, 30.0))
                continue
            failures = 0
            if not records:
                if source.exhausted:
                    break
                continue
            rows = []
            for record in records:
                kind, dataset_id, path = _compared(plan(record.value, record.position, rules))
                if dataset_id is None and kind != "zip_file":
                    report.not_compared[kind] = report.not_compared.get(kind, 0) + 1
                scope, _, name = (record.position.did or ":").partition(":")
                rows.append((scope, name, kind, dataset_id, path))
            compare.executemany("INSERT OR IGNORE INTO rucio VALUES (?, ?, ?, ?, ?)", rows)
            compare.commit()
            source.acknowledge(records)
            report.rucio_files += len(rows)
    finally:
        source.close()


def _compared(planned: Any) -> tuple[str, str | None, str | None]:
    """(kind, dataset id, local path) of a planned event; kind is the refusal class when refused."""
    if isinstance(planned, RegisterDataset):
        record = planned.record
        kind = planned.summary.kind.value if planned.summary.kind is not None else "data_product"
        return kind, str(record.id), None if record.file is None else record.file.path
    if isinstance(planned, ImportZip):
        return "zip_file", None, str(planned.path)
    if isinstance(planned, ImportDimensions):
        return "dim_file", None, str(planned.path)
    if isinstance(planned, Reject):
        return planned.error_class, None, None
    if isinstance(planned, Skip):
        return "skipped", None, None
    raise TypeError(f"unexpected plan {planned!r}")


def _read_registry(registry: Registry, root: str, compare: sqlite3.Connection) -> None:
    prefix = root.rstrip("/") + "/"
    batch: list[tuple[str, str, str]] = []
    for dataset_id, path in registry.iter_dataset_files(prefix):
        batch.append((str(dataset_id), path, path.split(_ZIP_MEMBER, 1)[0]))
        if len(batch) >= 10_000:
            compare.executemany("INSERT OR IGNORE INTO registry VALUES (?, ?, ?)", batch)
            batch = []
    compare.executemany("INSERT OR IGNORE INTO registry VALUES (?, ?, ?)", batch)
    compare.commit()
