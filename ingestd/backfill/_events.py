"""A replica found in Rucio's catalogue, written as the transfer-done message HermesK would have sent.

The backfill hands the engine the very bytes a live event would carry, so the
same planner maps, verifies, registers, parks and dead-letters them: nothing of
the ingest path is re-implemented for backfills. What the catalogue cannot know
(the FTS transfer id, when the transfer finished) is left out, as Rucio leaves
missing values out; ``activity`` says where the event came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from ingestd.rucio_client import FileReplica

__all__ = ["BACKFILL_ACTIVITY", "choose_pfn", "transfer_done_event"]

BACKFILL_ACTIVITY: Final = "ingestd backfill"
"""``payload.activity`` of the events a backfill makes (OpenSearch documents and dead letters show it)."""


def choose_pfn(pfns: Sequence[str], preferred_prefixes: Sequence[str] = ()) -> str:
    """The PFN to use as ``dst-url``: the first under a preferred prefix, else the first offered.

    Parameters
    ----------
    pfns
        PFNs of the replica at the RSE, in the server's priority order.
    preferred_prefixes
        The RSE's configured ``rucio_prefix`` values: a PFN starting with one maps to
        a local path; another protocol's PFN would be refused as ``no_prefix``.
    """
    if not pfns:
        raise ValueError("a replica without a PFN has no dst-url")
    for prefix in preferred_prefixes:
        for pfn in pfns:
            if pfn.startswith(prefix):
                return pfn
    return pfns[0]


def transfer_done_event(
    replica: FileReplica,
    rse: str,
    metadata: Mapping[str, Any],
    *,
    preferred_prefixes: Sequence[str] = (),
    now: datetime | None = None,
) -> bytes:
    """The HermesK ``transfer-done`` message announcing ``replica`` at ``rse``.

    Parameters
    ----------
    replica
        The file and its PFNs at the RSE.
    rse
        The destination RSE.
    metadata
        The DID's ``rubin_butler`` and ``rubin_sidecar`` (absent keys stay absent:
        the planner decides what a file without them means, as for a live event).
    preferred_prefixes
        See :func:`choose_pfn`.
    now
        The envelope's ``created_at`` (default: the current time, UTC).
    """
    dst_url = choose_pfn(replica.pfns, preferred_prefixes)
    payload: dict[str, Any] = {
        "activity": BACKFILL_ACTIVITY,
        "scope": replica.scope,
        "name": replica.name,
        "dst-rse": rse,
        "dst-url": dst_url,
        "protocol": urlsplit(dst_url).scheme or "file",
        "file-size": replica.size,
        "bytes": replica.size,
        "checksum-adler": replica.adler32,
        "checksum-md5": replica.md5,
    }
    for key in ("rubin_butler", "rubin_sidecar"):
        if key in metadata:
            value = metadata[key]
            # A sidecar stored as a JSON object (not text) is sent as text, as HermesK sends it.
            payload[key] = json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else value
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    envelope = {"event_type": "transfer-done", "payload": payload, "created_at": str(moment)}
    return json.dumps(envelope, separators=(",", ":")).encode()
