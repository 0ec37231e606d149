"""Backfill from Rucio itself: ``ingestd replay --from-rucio`` and ``ingestd reconcile``.

When Kafka no longer holds the events (retention of hours, a facility down longer,
a new facility, a registry rebuilt from a backup), Rucio's catalogue still says
which files are at which RSE, with their ``rubin_butler``/``rubin_sidecar``
metadata. This package reads it through rucio-clients (:class:`RucioCatalogue`),
keeps a resumable listing (:class:`ListingSpool`), rebuilds each replica's
transfer-done message (:func:`transfer_done_event`) for the shared engine
(:func:`run_backfill`, with :class:`ingestd.sources.RucioReplicaSource`), and
compares the catalogue with the registry (:func:`reconcile`).
"""

from ingestd.rucio_client import FileReplica, RucioCatalogue, RucioSettings

from ._events import BACKFILL_ACTIVITY, choose_pfn, transfer_done_event
from ._plan import BackfillRequest, default_state_dir, listing_units, local_roots, preferred_prefixes
from ._reconcile import Difference, ReconcileReport, missing_dids, reconcile
from ._run import open_backfill_source, run_backfill
from ._spool import ListingSpool, SpooledDid, SpoolMismatchError

__all__ = [
    "BACKFILL_ACTIVITY",
    "BackfillRequest",
    "Difference",
    "FileReplica",
    "ListingSpool",
    "ReconcileReport",
    "RucioCatalogue",
    "RucioSettings",
    "SpoolMismatchError",
    "SpooledDid",
    "choose_pfn",
    "default_state_dir",
    "listing_units",
    "local_roots",
    "missing_dids",
    "open_backfill_source",
    "preferred_prefixes",
    "reconcile",
    "run_backfill",
    "transfer_done_event",
]
