"""``ingestd bench registry``: our SQL registry against the real ``Butler.ingest``, same server, same run.

The same synthetic campaign (:class:`butler_registry.daf.synthetic.SyntheticCampaign`:
raws, calexps, source catalogues and visit summaries of one night of an
LSSTCam-like instrument, with file sizes and checksums) is registered

1. through our registry (:func:`butler_registry.open_registry`, PostgreSQL), and
2. through ``Butler.ingest(*datasets, transfer="direct")`` into a Butler repository
   whose registry is on the same PostgreSQL server,

each into its own fresh database, in batches of each requested size. Only the
registry calls are timed: building the records (and the ``FileDataset`` objects)
and writing the small files the datastore stats happen outside the clock. The
output is one JSON document with datasets/s for each, the ratio per batch size, the
targets (≥ 5x at batch 500, ≥ 20x at batch 50) and whether they were met.

``--grow-to N`` measures something else: our registry alone grows to ``N``
datasets (1,000,000 for the issue's target) and a sample of resident memory and
rate is taken every ``--report-every`` datasets, to show memory stays flat.

Progress goes to standard error; standard output carries only the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from butler_registry.interface import DatasetRecord, ItemStatus, Registry

if TYPE_CHECKING:
    from lsst.daf.butler import Butler, DatasetType, FileDataset

    from butler_registry.daf.synthetic import SyntheticCampaign

__all__ = [
    "TARGET_RATIOS",
    "ContenderResult",
    "compare",
    "grow",
    "register",
]

TARGET_RATIOS: dict[int, float] = {500: 5.0, 50: 20.0}
"""Batch size → how many times faster than ``Butler.ingest`` our registry must be (issue 3)."""

RSS_GROWTH_TARGET_MB = 64.0
"""Most resident-memory growth allowed from the first growth sample to the last."""

_BUTLER_FORMATTER = "lsst.daf.butler.formatters.json.JsonFormatter"
"""Formatter recorded for the synthetic storage classes (their usual ones need lsst.obs.base)."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (peak size where /proc is absent)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batches(items: Iterable[DatasetRecord], size: int) -> Iterator[list[DatasetRecord]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# ---------------------------------------------------------------------------------------------
# Scratch databases


def _plain_url(url: str) -> str:
    """The libpq form of a server URL (what psycopg.connect takes)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _database_url(server_url: str, database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the server of ``server_url`` (query options kept)."""
    from sqlalchemy.engine import make_url

    return (
        make_url(server_url)
        .set(drivername="postgresql+psycopg", database=database)
        .render_as_string(hide_password=False)
    )


@contextlib.contextmanager
def scratch_database(server_url: str, purpose: str, *, keep: bool = False) -> Iterator[str]:
    """A new empty database on the server for one contender; dropped afterwards unless ``keep``."""
    import psycopg

    name = f"ingestd_bench_{purpose}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_plain_url(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(server_url, name)
    finally:
        if keep:
            _progress(f"kept database {name}")
        else:
            with psycopg.connect(_plain_url(server_url), autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _server_version(server_url: str) -> str:
    import psycopg

    with psycopg.connect(_plain_url(server_url), autocommit=True) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def _redacted(url: str) -> str:
    """host:port/database of a URL, never its user or password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return f"{parsed.host}:{parsed.port or 5432}/{parsed.database or ''}"


# ---------------------------------------------------------------------------------------------
# Contenders


@dataclass(frozen=True, slots=True)
class ContenderResult:
    """Throughput of one contender at one batch size."""

    datasets: int
    seconds: float
    calls: int
    datasets_per_s: float
    registered: int
    """Items the contender reported as new (ours) or ingested (Butler: all, it raises otherwise)."""


def _time_ours(
    registry: Registry, records: Sequence[DatasetRecord], batch: int, report: Callable[[int], None]
) -> ContenderResult:
    elapsed = 0.0
    calls = registered = 0
    for chunk in _batches(records, batch):
        start = time.perf_counter()
        result = registry.register(chunk)
        elapsed += time.perf_counter() - start
        calls += 1
        registered += result.count(ItemStatus.inserted)
        report(calls * batch)
    return ContenderResult(len(records), elapsed, calls, len(records) / elapsed, registered)


class _ButlerSide:
    """The real Butler on its own repository; builds ``FileDataset`` objects outside the clock."""

    def __init__(self, butler: Butler) -> None:
        self.butler = butler
        self._types: dict[Any, DatasetType] = {}

    def file_datasets(self, records: Sequence[DatasetRecord]) -> list[FileDataset]:
        from lsst.daf.butler import DataCoordinate, DatasetRef, DatasetType, FileDataset

        datasets = []
        for record in records:
            spec = record.dataset_type
            dataset_type = self._types.get(spec)
            if dataset_type is None:
                dataset_type = DatasetType(
                    spec.name, spec.dimensions, spec.storage_class, universe=self.butler.dimensions
                )
                self._types[spec] = dataset_type
            data_id = DataCoordinate.standardize(dict(record.data_id), dimensions=dataset_type.dimensions)
            ref = DatasetRef(dataset_type, data_id, run=record.run, id=record.id)
            assert record.file is not None
            datasets.append(FileDataset(path=record.file.path, refs=[ref]))
        return datasets

    def time_ingest(
        self, records: Sequence[DatasetRecord], batch: int, report: Callable[[int], None]
    ) -> ContenderResult:
        elapsed = 0.0
        calls = 0
        for chunk in _batches(records, batch):
            datasets = self.file_datasets(chunk)
            start = time.perf_counter()
            self.butler.ingest(*datasets, transfer="direct")
            elapsed += time.perf_counter() - start
            calls += 1
            report(calls * batch)
        return ContenderResult(len(records), elapsed, calls, len(records) / elapsed, len(records))


def _reporter(label: str, total: int) -> Callable[[int], None]:
    step = max(1, total // 10)
    state = {"next": step, "start": time.perf_counter()}

    def report(done: int) -> None:
        done = min(done, total)
        if done >= state["next"] or done == total:
            rate = done / max(time.perf_counter() - state["start"], 1e-9)
            _progress(f"  {label}: {done}/{total} datasets ({rate:,.0f}/s wall)")
            state["next"] = done + step

    return report


# ---------------------------------------------------------------------------------------------
# The two measurements


def _open_ours(url: str) -> Registry:
    from butler_registry import open_registry

    registry: Registry = open_registry(url, create=True)
    return registry


def _open_butler(root: Path, database_url: str, export: Path) -> Butler:
    from lsst.daf.butler import Butler

    from butler_registry.daf import create_butler_repo
    from butler_registry.daf.synthetic import STORAGE_CLASSES

    create_butler_repo(
        root, registry_db=database_url, formatters=dict.fromkeys(STORAGE_CLASSES, _BUTLER_FORMATTER)
    )
    butler = Butler.from_config(str(root), writeable=True)
    butler.import_(filename=str(export))
    return butler


def _environment(server_url: str) -> dict[str, Any]:
    from ingestd import __version__

    daf_butler_version: str | None
    try:
        from lsst.daf.butler.version import __version__ as daf_butler_version
    except ImportError:  # pragma: no cover - the comparison needs it; growth does not
        daf_butler_version = None
    return {
        "ingestd": __version__,
        "daf_butler": daf_butler_version,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "postgres": _redacted(server_url),
        "postgres_version": _server_version(server_url),
    }


def _campaign(datasets: int) -> SyntheticCampaign:
    from butler_registry.daf.synthetic import SyntheticCampaign

    return SyntheticCampaign.sized_for(datasets)


def compare(
    server_url: str,
    datasets: int,
    batch_sizes: Sequence[int],
    workdir: Path,
    *,
    keep: bool = False,
    open_ours: Callable[[str], Registry] = _open_ours,
) -> dict[str, Any]:
    """Register the same datasets through our registry and ``Butler.ingest``; returns the JSON report.

    ``open_ours`` opens the registry under test on a database URL (ours by default).
    """
    campaign = _campaign(datasets)
    export = campaign.write_export(workdir / "dimensions.yaml")
    results: list[dict[str, Any]] = []
    with (
        scratch_database(server_url, "ours", keep=keep) as ours_url,
        scratch_database(server_url, "butler", keep=keep) as butler_url,
    ):
        _progress(f"preparing: our registry and a Butler repository on {_redacted(server_url)}")
        ours = open_ours(ours_url)
        imported = ours.import_dimensions(export)
        if not imported.status.ok:
            raise RuntimeError(f"our registry refused the campaign's dimension records: {imported.reason}")
        butler_side = _ButlerSide(_open_butler(workdir / "repo", butler_url, export))
        try:
            for batch in batch_sizes:
                tag = f"batch{batch}"
                _progress(f"batch {batch}: writing {datasets} small files for the datastore to stat")
                records = list(
                    campaign.datasets(datasets, tag=tag, file_root=workdir / "files", write_files=True)
                )
                mine = _time_ours(ours, records, batch, _reporter(f"ours   batch {batch}", datasets))
                theirs = butler_side.time_ingest(records, batch, _reporter(f"Butler batch {batch}", datasets))
                ratio = mine.datasets_per_s / theirs.datasets_per_s
                target = TARGET_RATIOS.get(batch)
                results.append(
                    {
                        "batch": batch,
                        "ours": asdict(mine),
                        "butler": asdict(theirs),
                        "ratio": round(ratio, 2),
                        "target_ratio": target,
                        "pass": None if target is None else ratio >= target,
                    }
                )
                _progress(
                    f"batch {batch}: ours {mine.datasets_per_s:,.0f}/s, "
                    f"Butler {theirs.datasets_per_s:,.0f}/s, ratio {ratio:.1f}"
                    + (f" (target {target:g}x)" if target else "")
                )
                shutil.rmtree(workdir / "files" / tag, ignore_errors=True)
        finally:
            butler_side.butler.close()
            ours.close()
    verdicts = [row["pass"] for row in results if row["pass"] is not None]
    return {
        "benchmark": "registry",
        "datasets": datasets,
        "batch_sizes": list(batch_sizes),
        "ours": "butler_registry.open_registry (PostgreSQL)",
        "butler": "Butler.ingest(*datasets, transfer='direct') (PostgreSQL registry, file datastore)",
        "targets": {str(batch): f">= {ratio:g}x Butler.ingest" for batch, ratio in TARGET_RATIOS.items()},
        "results": results,
        "pass": all(verdicts) if verdicts else None,
        "environment": _environment(server_url),
    }


def grow(
    server_url: str,
    target: int,
    batch: int,
    report_every: int,
    workdir: Path,
    *,
    keep: bool = False,
    open_ours: Callable[[str], Registry] = _open_ours,
) -> dict[str, Any]:
    """Grow our registry to ``target`` datasets, sampling memory and rate; returns the JSON report.

    ``open_ours`` opens the registry under test on a database URL (ours by default).
    """
    campaign = _campaign(target)
    export = campaign.write_export(workdir / "dimensions.yaml")
    samples: list[dict[str, Any]] = []
    with scratch_database(server_url, "growth", keep=keep) as url:
        ours = open_ours(url)
        try:
            imported = ours.import_dimensions(export)
            if not imported.status.ok:
                raise RuntimeError(
                    f"our registry refused the campaign's dimension records: {imported.reason}"
                )
            done = 0
            next_report = report_every
            interval_start = time.perf_counter()
            interval_done = 0
            started = interval_start
            interval_registering = 0.0
            for chunk in _batches(campaign.datasets(target, tag="growth"), batch):
                call_start = time.perf_counter()
                ours.register(chunk)
                interval_registering += time.perf_counter() - call_start
                done += len(chunk)
                if done >= next_report or done == target:
                    now = time.perf_counter()
                    sample = {
                        "datasets": done,
                        "rss_mb": round(_rss_mb(), 1),
                        "rate_per_s": round((done - interval_done) / max(interval_registering, 1e-9), 1),
                        "wall_rate_per_s": round((done - interval_done) / max(now - interval_start, 1e-9), 1),
                        "elapsed_s": round(now - started, 2),
                    }
                    samples.append(sample)
                    _progress(
                        f"  {done:,} datasets: RSS {sample['rss_mb']} MiB, {sample['rate_per_s']:,.0f}/s"
                    )
                    interval_start, interval_done, interval_registering = now, done, 0.0
                    while next_report <= done:
                        next_report += report_every
        finally:
            ours.close()
    growth = samples[-1]["rss_mb"] - samples[0]["rss_mb"] if samples else 0.0
    first_rate = samples[0]["rate_per_s"] if samples else 0.0
    last_rate = samples[-1]["rate_per_s"] if samples else 0.0
    return {
        "benchmark": "registry-growth",
        "datasets": target,
        "batch": batch,
        "report_every": report_every,
        "samples": samples,
        "sample_fields": {
            "rate_per_s": "datasets per second of register() calls since the previous sample",
            "wall_rate_per_s": "the same including making the synthetic records",
            "rss_mb": "resident memory of this process",
        },
        "rss_growth_mb": round(growth, 1),
        "rate_last_over_first": round(last_rate / first_rate, 3) if first_rate else None,
        "target": f"resident memory grows <= {RSS_GROWTH_TARGET_MB:g} MiB from the first sample to the last",
        "pass": growth <= RSS_GROWTH_TARGET_MB,
        "environment": _environment(server_url),
    }


# ---------------------------------------------------------------------------------------------
# Command line


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--batch takes comma-separated integers, not {text!r}") from error
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("--batch sizes must be positive integers")
    return sizes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def register(subparsers: Any) -> None:
    """Add ``ingestd bench registry``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "registry",
        help="our SQL registry vs the real Butler.ingest on the same PostgreSQL server (JSON)",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--datasets", type=_positive, default=20_000, help="datasets per batch size (20000)")
    parser.add_argument("--batch", type=_batch_sizes, default=[50, 500], help="batch sizes, e.g. 50,500")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("INGESTD_BENCH_POSTGRES_URL") or os.environ.get("INGESTD_TEST_POSTGRES_URL"),
        help="server URL of a role that may create databases (default $INGESTD_BENCH_POSTGRES_URL, "
        "then $INGESTD_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--workdir", type=Path, help="where files and the Butler repository go (a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases and files")
    parser.add_argument("--json", action="store_true", help="one compact JSON line instead of indented JSON")
    parser.add_argument(
        "--grow-to",
        type=_positive,
        metavar="N",
        help="instead of comparing, grow our registry to N datasets and sample memory (e.g. 1000000)",
    )
    parser.add_argument(
        "--report-every", type=_positive, default=100_000, help="growth sample interval (100000)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the arguments ask for and print its JSON report."""
    if not args.postgres:
        print(
            "ingestd bench registry: give --postgres URL (or set INGESTD_BENCH_POSTGRES_URL)", file=sys.stderr
        )
        return 2
    from ingestd.log import configure_logging

    configure_logging(service="ingestd-bench")  # records go to standard error, beside the progress
    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-bench-registry-")) if owned else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.grow_to:
            report = grow(
                args.postgres, args.grow_to, max(args.batch), args.report_every, workdir, keep=args.keep
            )
        else:
            report = compare(args.postgres, args.datasets, args.batch, workdir, keep=args.keep)
    finally:
        if owned and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, separators=(",", ":")) if args.json else json.dumps(report, indent=2))
    if args.check and report["pass"] is False:
        return 1
    return 0
