"""``ingestd bench imports``: what a batch's dimension exports and zips cost the registry.

A campaign's ``dim_file`` and ``zip_file`` events are a few percent of the stream but,
imported one transaction each, most of the registry's time and the tail of the
latency. This benchmark writes realistic files (:class:`ingestd.e2e.Campaign`: each
export a new exposure with its visit and per-detector records, each zip a set of log
datasets), then imports the same files into two fresh PostgreSQL registries:

* ``per_file`` — one :meth:`Registry.import_dimensions` / :meth:`Registry.import_zip`
  call per file (what the daemon did before :meth:`Registry.import_files`);
* ``batched`` — :meth:`Registry.import_files` on chunks of ``--chunk`` files (the
  files of one daemon batch), one transaction each.

Each mode reports wall seconds, CPU seconds of this process, SQL statements sent,
transactions and the mean milliseconds per file; then both are imported again to
show that a replay is cheap (everything ``already_present``). ``statements_ratio``
compares round trips, counting each transaction's BEGIN and COMMIT. Standard output
carries one JSON document; the exit status is 1 when the two modes disagree on any
file's outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:15432/postgres"


def register(subparsers: Any) -> None:
    """Add ``ingestd bench imports``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "imports",
        help="dimension exports and zips: one transaction per file versus batched; prints JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dims", type=int, default=100, metavar="N", help="dimension export files")
    parser.add_argument("--zips", type=int, default=100, metavar="N", help="Butler zip files")
    parser.add_argument(
        "--chunk", type=int, default=60, metavar="K", help="files per import_files call (one daemon batch)"
    )
    parser.add_argument(
        "--detectors", type=int, default=189, metavar="D", help="detectors per exposure (records per export)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("INGESTD_TEST_POSTGRES_URL", _DEFAULT_POSTGRES),
        help="PostgreSQL server URL with the right to create databases (default: the test bed)",
    )
    parser.add_argument("--json", action="store_true", help="compact JSON (default: indented)")
    parser.set_defaults(func=run)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class BenchFile:
    """One file to import (kept apart from ``ImportRequest`` so the per-file mode runs on older code)."""

    kind: str
    """``dim_file`` or ``zip_file``."""
    path: Path
    provenance: Any


def make_files(workdir: Path, *, dims: int, zips: int, detectors: int) -> tuple[Path, list[BenchFile]]:
    """Write a bootstrap export and the campaign's files; returns the bootstrap and the files."""
    from butler_registry import Provenance
    from ingestd.e2e import Campaign
    from ingestd.e2e._campaign import EventMix
    from ingestd.work import ButlerKind

    total = dims + zips
    share_dims = dims / max(total, 1) * 0.98
    share_zips = zips / max(total, 1) * 0.98
    campaign = Campaign(
        storage=workdir / "storage",
        events=max(total * 2, 10),
        mix=EventMix(facility_share=1.0, zip_share=share_zips, dim_share=share_dims),
        detectors=detectors,
        write_data_files=False,
        tag=f"bench-{uuid.uuid4().hex[:6]}",
    )
    bootstrap = campaign.write_bootstrap_export(workdir / "bootstrap.yaml")
    requests: list[BenchFile] = []
    counts: Counter[ButlerKind] = Counter()
    wanted = {ButlerKind.dim_file: dims, ButlerKind.zip_file: zips}
    for event in campaign.events_iter():
        if event.kind not in wanted or counts[event.kind] >= wanted[event.kind]:
            continue
        counts[event.kind] += 1
        path = campaign.local_path(event.rse, event.scope, event.name)
        requests.append(BenchFile(event.kind.value, path, Provenance(source="bench", name=event.name)))
        if all(counts[k] >= n for k, n in wanted.items()):
            break
    # The daemon imports a batch's exports before its zips.
    requests.sort(key=lambda request: request.kind != ButlerKind.dim_file.value)
    return bootstrap, requests


@contextmanager
def _fresh_registry(server_url: str, bootstrap: Path) -> Iterator[tuple[Any, Counter[str]]]:
    """A new database with the bootstrap records, and a counter of the statements sent to it."""
    import psycopg
    import sqlalchemy as sa

    from butler_registry import open_registry

    name = f"bench_imports_{uuid.uuid4().hex[:8]}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = "postgresql+psycopg://" + admin.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    counts: Counter[str] = Counter()
    try:
        with open_registry(url, create=True) as registry:
            registry.import_dimensions(bootstrap)

            def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
                counts["statements"] += 1

            def began(_conn: Any) -> None:
                counts["transactions"] += 1

            sa.event.listen(registry.engine, "before_cursor_execute", count)
            sa.event.listen(registry.engine, "begin", began)
            yield registry, counts
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _measure(
    label: str, call: Callable[[], list[Any]], counts: Counter[str], files: int
) -> tuple[dict[str, Any], list[Any]]:
    counts.clear()
    cpu, wall = _cpu_s(), time.perf_counter()
    results = call()
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    statuses = Counter(str(result.status) for result in results)
    _progress(f"{label}: {files} files in {wall:.2f} s, {counts['statements']} statements")
    return {
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "ms_per_file": round(wall / max(files, 1) * 1000, 2),
        "cpu_ms_per_file": round(cpu / max(files, 1) * 1000, 2),
        "statements": counts["statements"],
        "transactions": counts["transactions"],
        "statuses": dict(statuses),
    }, results


def per_file(registry: Any, files: Sequence[BenchFile]) -> list[Any]:
    """One import call, one transaction, per file."""
    return [
        registry.import_dimensions(f.path, f.provenance)
        if f.kind == "dim_file"
        else registry.import_zip(f.path, f.provenance)
        for f in files
    ]


def batched(registry: Any, files: Sequence[BenchFile], chunk: int) -> list[Any]:
    """:meth:`Registry.import_files` on chunks of ``chunk`` files."""
    from butler_registry import ImportKind, ImportRequest

    requests = [ImportRequest(ImportKind(f.kind), f.path, f.provenance) for f in files]
    results: list[Any] = []
    for start in range(0, len(requests), chunk):
        results.extend(registry.import_files(requests[start : start + chunk]))
    return results


def run(args: argparse.Namespace) -> int:
    """Write the files, import them both ways, print the JSON document."""
    from ingestd.log import LoggingSettings, configure_logging

    configure_logging(LoggingSettings(level="WARNING"))
    with tempfile.TemporaryDirectory(prefix="ingestd-bench-imports-") as tmp:
        bootstrap, requests = make_files(Path(tmp), dims=args.dims, zips=args.zips, detectors=args.detectors)
        _progress(f"{len(requests)} files written")
        modes: dict[str, Any] = {}
        outcomes: dict[str, list[str]] = {}
        for mode in ("per_file", "batched"):
            with _fresh_registry(args.postgres, bootstrap) as (registry, counts):

                def first(registry: Any = registry, mode: str = mode) -> list[Any]:
                    if mode == "per_file":
                        return per_file(registry, requests)
                    return batched(registry, requests, args.chunk)

                figures, results = _measure(mode, first, counts, len(requests))
                replay, _ = _measure(f"{mode} replay", first, counts, len(requests))
                figures["replay"] = replay
                modes[mode] = figures
                outcomes[mode] = [str(result.status) for result in results]
    one_by_one, together = modes["per_file"], modes["batched"]
    document = {
        "benchmark": "imports",
        "files": {"dim_file": args.dims, "zip_file": args.zips, "chunk": args.chunk},
        "detectors": args.detectors,
        "modes": modes,
        "same_outcomes": outcomes["per_file"] == outcomes["batched"],
        "speedup_wall": round(one_by_one["seconds"] / max(together["seconds"], 1e-9), 2),
        "speedup_cpu": round(one_by_one["cpu_seconds"] / max(together["cpu_seconds"], 1e-9), 2),
        "statements_ratio": round(
            (one_by_one["statements"] + 2 * one_by_one["transactions"])
            / max(together["statements"] + 2 * together["transactions"], 1),
            2,
        ),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(document, indent=None if args.json else 2))
    return 0 if document["same_outcomes"] else 1
