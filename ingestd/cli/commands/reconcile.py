"""``ingestd reconcile``: Rucio's replicas at an RSE against the registry, both differences reported.

Read-only unless ``--backfill`` is given, which then backfills (through the same
engine as ``replay --from-rucio``) exactly the files found missing in the
registry. Exit code 0 when both sides agree (or the backfill ran), 4 when
differences were found and left alone, so a cron job can alert on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

__all__ = ["DIFFERENCES_FOUND", "register", "run"]

DIFFERENCES_FOUND: Final = 4
"""Exit code when the two sides differ and nothing was changed."""


def register(subparsers: Any) -> None:
    """Add the ``reconcile`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "reconcile",
        help="compare Rucio's replicas at an RSE with the registry (read-only unless --backfill)",
        description=(
            "List the files of the given scopes with a replica at --rse, plan each as the daemon would, and "
            "compare with the registry's datasets under the RSE's local folders: files missing in the "
            "registry, and registry datasets Rucio does not hold there. Memory stays flat (both sides go "
            "through a scratch SQLite file). Exit 4 when they differ."
        ),
    )
    parser.add_argument("--rse", required=True, metavar="RSE", help="the RSE to reconcile")
    parser.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        default=[],
        metavar="SCOPE",
        help="only this scope's files (repeatable; default: every scope)",
    )
    parser.add_argument("--dataset", default=None, metavar="SCOPE:NAME", help="only this dataset's files")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML settings")
    parser.add_argument(
        "--registry-url", default=None, metavar="URL", help="registry (overrides registry.url)"
    )
    parser.add_argument(
        "--limit", type=int, default=1_000, metavar="N", help="differences listed per side (all are counted)"
    )
    parser.add_argument(
        "--backfill", action="store_true", help="then backfill the files missing in the registry"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, metavar="DIR", help="scratch folder (default: temporary)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load settings, reconcile, print the report; returns the exit code."""
    from butler_registry import open_registry
    from butler_registry.interface import RegistryError
    from ingestd.backfill import BackfillRequest, reconcile
    from ingestd.config import ConfigurationError
    from ingestd.daemon import ExitCode, load_for_command
    from ingestd.rucio_client import RucioCatalogue
    from ingestd.sources import FatalSourceError, TransientSourceError

    overrides: dict[str, Any] = {}
    if args.registry_url:
        overrides["registry"] = {"url": args.registry_url}
    try:
        settings = load_for_command(args.config, **overrides)
        request = BackfillRequest(rse=args.rse, scopes=tuple(args.scopes), dataset=args.dataset)
    except (ConfigurationError, ValueError) as error:
        print(f"ingestd reconcile: {error}", file=sys.stderr)
        return ExitCode.config
    if settings.uses_daf_butler:
        print("ingestd reconcile: the real Butler backend cannot list datasets by path", file=sys.stderr)
        return ExitCode.config
    with tempfile.TemporaryDirectory(prefix="ingestd-reconcile-") as scratch:
        workdir = args.workdir or Path(scratch)
        catalogue = RucioCatalogue(settings.rucio)
        try:
            with open_registry(settings.registry.resolved_url()) as registry:
                report = reconcile(settings, catalogue, registry, request, workdir=workdir, limit=args.limit)
        except (TransientSourceError, FatalSourceError, RegistryError) as error:
            print(f"ingestd reconcile: {type(error).__name__}: {error}", file=sys.stderr)
            return ExitCode.failure
        finally:
            catalogue.close()
        _print(report, as_json=args.json)
        if report.consistent:
            return ExitCode.ok
        if not args.backfill:
            return DIFFERENCES_FOUND
        if report.missing_in_registry == 0:
            print("nothing to backfill: the registry lacks no file Rucio holds", file=sys.stderr)
            return DIFFERENCES_FOUND
        return _backfill_missing(settings, request, workdir, as_json=args.json)


def _backfill_missing(settings: Any, request: Any, workdir: Path, *, as_json: bool) -> int:
    """Backfill exactly the files :func:`reconcile` found missing in the registry."""
    from ingestd.backfill import ListingSpool, missing_dids, preferred_prefixes, transfer_done_event
    from ingestd.daemon import finite_run
    from ingestd.rucio_client import FileReplica, RucioCatalogue
    from ingestd.sources import ListingUnit, RucioReplicaSource

    spool = ListingSpool(workdir / "backfill.sqlite3", {"reconcile-backfill": request.parameters()})
    catalogue = RucioCatalogue(settings.rucio)
    prefixes = preferred_prefixes(settings, request.rse)

    def make_event(replica: FileReplica, metadata: dict[str, Any]) -> bytes:
        return transfer_done_event(replica, request.rse, metadata, preferred_prefixes=prefixes)

    source = RucioReplicaSource(
        catalogue,
        spool,
        [ListingUnit("reconcile:missing", lambda: missing_dids(workdir))],
        rse=request.rse,
        make_event=make_event,
        chunk_size=settings.rucio.chunk_size,
        parallel=settings.rucio.parallel_requests,
    )
    return int(
        finite_run(
            settings,
            source,
            what=f"backfill of what {request.rse}'s registry lacks",
            show_progress=None,
            summary_json=as_json,
            out=sys.stdout,
            ensure_topics=True,
            describe=lambda: {"rse": request.rse, **source.counts.as_dict()},
        )
    )


def _print(report: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    print(f"reconcile of {report.rse} (local folders: {', '.join(report.local_roots) or 'none configured'})")
    print(f"  rucio files at the RSE     {report.rucio_files}")
    print(f"  registry datasets there    {report.registry_datasets}")
    for kind, count in sorted(report.not_compared.items()):
        print(f"  not compared ({kind})  {count}")
    print(f"  missing in the registry    {report.missing_in_registry}")
    print(f"  missing in Rucio           {report.missing_in_rucio}")
    for difference in report.examples:
        if difference.missing_in == "registry":
            print(f"  - registry lacks {difference.did} ({difference.kind} {difference.dataset_id or ''})")
        else:
            print(f"  - rucio lacks    {difference.dataset_id} at {difference.path}")
