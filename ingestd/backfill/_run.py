"""``ingestd replay --from-rucio``: a backfill from Rucio's catalogue through the shared engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from ingestd.config import IngestdSettings
from ingestd.log import get_logger
from ingestd.rucio_client import FileReplica, RucioCatalogue, RucioSettings
from ingestd.sources import FatalSourceError, RucioReplicaSource, TransientSourceError

from ._events import transfer_done_event
from ._plan import BackfillRequest, default_state_dir, listing_units, preferred_prefixes
from ._spool import ListingSpool, SpoolMismatchError

__all__ = ["open_backfill_source", "run_backfill"]

logger = get_logger(__name__)


def open_backfill_source(
    settings: IngestdSettings,
    rucio: RucioSettings,
    request: BackfillRequest,
    *,
    state_dir: Path | None = None,
    restart: bool = False,
    catalogue: RucioCatalogue | None = None,
) -> RucioReplicaSource:
    """The source of a backfill: its state file opened (resumed, or started afresh) and its units planned.

    A state file whose backfill finished is started afresh: a second backfill with
    the same parameters lists again and finds everything ``already_present``.

    Raises
    ------
    SpoolMismatchError
        The state file is of another format (use ``restart``).
    TransientSourceError, FatalSourceError
        Listing the scopes failed.
    """
    path = request.state_file(state_dir or default_state_dir())
    if restart:
        path.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    spool = ListingSpool(path, request.parameters())
    try:
        if spool.finished:
            logger.info("backfill_state_finished_starting_afresh", state=str(path))
            spool.reset()
        catalogue = catalogue or RucioCatalogue(rucio)
        units = listing_units(request, catalogue)
        prefixes = preferred_prefixes(settings, request.rse)

        def make_event(replica: FileReplica, metadata: dict[str, Any]) -> bytes:
            return transfer_done_event(replica, request.rse, metadata, preferred_prefixes=prefixes)

        return RucioReplicaSource(
            catalogue,
            spool,
            units,
            rse=request.rse,
            make_event=make_event,
            updated_after=request.since,
            chunk_size=rucio.chunk_size,
            parallel=rucio.parallel_requests,
        )
    except BaseException:
        spool.close()
        raise


def run_backfill(
    settings: IngestdSettings,
    rucio: RucioSettings,
    request: BackfillRequest,
    *,
    state_dir: Path | None = None,
    restart: bool = False,
    show_progress: bool | None = None,
    summary_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Backfill the replicas of ``request.rse`` through the engine; returns the exit code.

    Idempotent and resumable: what is registered comes out ``already_present``, and a
    backfill interrupted (even by ``kill -9``) continues after its checkpoint.
    """
    from ingestd.daemon import ExitCode, finite_run

    out = out or sys.stdout
    try:
        source = open_backfill_source(settings, rucio, request, state_dir=state_dir, restart=restart)
    except SpoolMismatchError as error:
        print(f"ingestd replay --from-rucio: {error}", file=sys.stderr)
        return ExitCode.config
    except (TransientSourceError, FatalSourceError) as error:
        print(f"ingestd replay --from-rucio: {error}", file=sys.stderr)
        return ExitCode.failure
    state = source.spool.path

    def describe() -> dict[str, object]:
        return {
            "rse": request.rse,
            "state_file": str(state),
            **source.counts.as_dict(),
            "rucio_requests": source.catalogue.requests,
        }

    return finite_run(
        settings,
        source,
        what=f"backfill of {request.rse} from Rucio",
        show_progress=show_progress,
        summary_json=summary_json,
        out=out,
        ensure_topics=True,
        describe=describe,
    )
