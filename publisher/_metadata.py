"""Completing events with the Rubin keys of their file's DID metadata.

A transfer-done payload from Rubin's Rucio may already carry ``rubin_butler`` and
``rubin_sidecar``; when it does not, they are in the DID metadata (Rucio's JSON
metadata plugin, table ``did_meta``). HermesK asked Rucio's REST API once per
message; here a whole batch is looked up at once:

* :class:`DatabaseMetadata`: one SQL query per batch on the same database the
  messages come from (``(scope, name) IN (...)`` on ``did_meta``'s primary key);
* :class:`RestMetadata`: rucio-clients' ``get_metadata_bulk``, one call per chunk
  of DIDs, for sites that can only reach Rucio over HTTP (route mode).

The payload always wins: a key it already has is never overwritten.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from ._errors import SourceUnavailableError
from ._routing import payload_text
from ._tables import RucioTables

__all__ = [
    "DatabaseMetadata",
    "Did",
    "Enricher",
    "EnrichmentResult",
    "MetadataLookup",
    "RestMetadata",
]

DEFAULT_VO = "def"


class Did(NamedTuple):
    """A file's data identifier as Rucio stores it."""

    scope: str
    name: str
    vo: str = DEFAULT_VO

    @property
    def internal_scope(self) -> str:
        """The scope as stored in Rucio's tables: ``scope@vo`` in a multi-VO instance."""
        return self.scope if self.vo == DEFAULT_VO else f"{self.scope}@{self.vo}"


class MetadataLookup(Protocol):
    """Finds the metadata of many DIDs at once."""

    def lookup(
        self, dids: Sequence[Did], keys: Sequence[str], *, connection: sa.Connection | None
    ) -> dict[Did, dict[str, Any]]:
        """Return the wanted ``keys`` of each DID that has any (missing DIDs are left out).

        Parameters
        ----------
        dids
            Distinct DIDs.
        keys
            Metadata keys wanted.
        connection
            An open connection to the Rucio database, to read inside the caller's
            transaction; lookups that do not use the database ignore it.

        Raises
        ------
        SourceUnavailableError
            When the metadata cannot be read now; the caller retries the batch.
        """
        ...


class DatabaseMetadata:
    """Reads ``did_meta`` in one query per batch.

    Parameters
    ----------
    tables
        Rucio's tables (for the schema).
    engine
        Used when the caller passes no connection (route mode).
    """

    def __init__(self, tables: RucioTables, engine: sa.Engine | None = None) -> None:
        self.tables = tables
        self.engine = engine
        self.queries = 0
        """Statements issued so far (what "one query per batch" is checked by)."""

    def lookup(
        self, dids: Sequence[Did], keys: Sequence[str], *, connection: sa.Connection | None
    ) -> dict[Did, dict[str, Any]]:
        """Return the wanted keys of each DID found, in one ``SELECT``."""
        if not dids or not keys:
            return {}
        if connection is None:
            if self.engine is None:
                raise ValueError("DatabaseMetadata needs a connection or an engine")
            try:
                with self.engine.connect() as own:
                    return self._query(own, dids, keys)
            except DBAPIError as error:
                raise SourceUnavailableError(f"reading did_meta failed: {error}") from error
        return self._query(connection, dids, keys)

    def _query(
        self, connection: sa.Connection, dids: Sequence[Did], keys: Sequence[str]
    ) -> dict[Did, dict[str, Any]]:
        did_meta = self.tables.did_meta
        by_internal = {(did.internal_scope, did.name): did for did in dids}
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            # Fetch only the wanted keys: a DID's JSON can be large, the keys are two.
            columns = [did_meta.c.meta[key].label(f"k{i}") for i, key in enumerate(keys)]
        else:
            columns = [did_meta.c.meta.label("meta")]
        statement = sa.select(did_meta.c.scope, did_meta.c.name, *columns).where(
            sa.tuple_(did_meta.c.scope, did_meta.c.name).in_(list(by_internal))
        )
        self.queries += 1
        found: dict[Did, dict[str, Any]] = {}
        for row in connection.execute(statement):
            did = by_internal.get((row.scope, row.name))
            if did is None:
                continue
            if postgres:
                values = {key: row[2 + i] for i, key in enumerate(keys)}
            else:
                meta = row.meta if isinstance(row.meta, Mapping) else {}
                values = {key: meta.get(key) for key in keys}
            present = {key: value for key, value in values.items() if value is not None}
            if present:
                found[did] = present
        return found


class RestMetadata:
    """Asks Rucio's REST API with ``get_metadata_bulk``, one call per chunk of DIDs.

    Parameters
    ----------
    client_factory
        Builds a rucio-clients ``DIDClient`` (configured by ``rucio.cfg`` /
        ``RUCIO_CONFIG`` as every Rucio client is); called once, lazily.
    chunk_size
        DIDs per call.
    """

    def __init__(self, client_factory: Callable[[], Any] | None = None, chunk_size: int = 500) -> None:
        self._factory = client_factory or _default_did_client
        self._client: Any = None
        self._lock = threading.Lock()
        self.chunk_size = chunk_size
        self.calls = 0
        """REST calls made so far."""

    def lookup(
        self, dids: Sequence[Did], keys: Sequence[str], *, connection: sa.Connection | None
    ) -> dict[Did, dict[str, Any]]:
        """Return the wanted keys of each DID found, one REST call per ``chunk_size`` DIDs."""
        if not dids or not keys:
            return {}
        by_pair = {(did.scope, did.name): did for did in dids}
        found: dict[Did, dict[str, Any]] = {}
        for start in range(0, len(dids), self.chunk_size):
            chunk = dids[start : start + self.chunk_size]
            request = [{"scope": did.scope, "name": did.name} for did in chunk]
            try:
                with self._lock:
                    if self._client is None:
                        self._client = self._factory()
                    self.calls += 1
                    answers = list(self._client.get_metadata_bulk(request, inherit=False, plugin="JSON"))
            except Exception as error:  # rucio-clients raises many unrelated types; all mean "not now"
                if type(error).__name__ == "DataIdentifierNotFound":
                    continue
                raise SourceUnavailableError(
                    f"Rucio REST get_metadata_bulk failed: {type(error).__name__}: {error}"
                ) from error
            for answer in answers:
                did = by_pair.get((str(answer.get("scope")), str(answer.get("name"))))
                if did is None:
                    continue
                present = {key: answer[key] for key in keys if answer.get(key) is not None}
                if present:
                    found[did] = present
        return found


def _default_did_client() -> Any:
    from rucio.client.didclient import DIDClient

    return DIDClient()


@dataclass(frozen=True, slots=True)
class EnrichmentResult:
    """What one enrichment pass did."""

    changed: frozenset[int]
    """Indices of the payloads that received keys."""
    looked_up: int
    """DIDs asked for."""
    still_missing: int
    """Payloads that lack a wanted key even after the lookup (published as they are)."""


class Enricher:
    """Fills the wanted keys a payload lacks, from one metadata lookup per batch.

    Parameters
    ----------
    lookup
        Where metadata comes from; None disables enrichment.
    keys
        The keys to complete.
    """

    def __init__(self, lookup: MetadataLookup | None, keys: Sequence[str]) -> None:
        self.lookup = lookup
        self.keys = tuple(keys)

    def _needs(self, payload: Mapping[str, Any]) -> bool:
        return any(payload_text(payload, key) is None and payload.get(key) != "" for key in self.keys)

    def enrich(
        self,
        payloads: Sequence[MutableMapping[str, Any] | None],
        *,
        connection: sa.Connection | None = None,
    ) -> EnrichmentResult:
        """Complete ``payloads`` in place; returns which changed.

        A value Rucio wrote as the string ``"None"`` counts as missing; an empty string
        (what zip and dimension files carry as ``rubin_sidecar``) counts as present.

        Raises
        ------
        SourceUnavailableError
            When the lookup cannot be done now; nothing was changed that matters, since
            the caller retries the whole batch.
        """
        if self.lookup is None or not self.keys:
            return EnrichmentResult(frozenset(), 0, 0)
        wanting: dict[int, Did] = {}
        for index, payload in enumerate(payloads):
            if payload is None or not self._needs(payload):
                continue
            scope, name = payload_text(payload, "scope"), payload_text(payload, "name")
            if scope is None or name is None:
                continue
            wanting[index] = Did(scope, name, payload_text(payload, "vo") or DEFAULT_VO)
        if not wanting:
            return EnrichmentResult(frozenset(), 0, 0)
        distinct = list(dict.fromkeys(wanting.values()))
        found = self.lookup.lookup(distinct, self.keys, connection=connection)
        changed: set[int] = set()
        still_missing = 0
        for index, did in wanting.items():
            payload = payloads[index]
            assert payload is not None
            meta = found.get(did, {})
            for key in self.keys:
                if key in meta and payload_text(payload, key) is None and payload.get(key) != "":
                    payload[key] = meta[key]
                    changed.add(index)
            if self._needs(payload):
                still_missing += 1
        return EnrichmentResult(frozenset(changed), len(distinct), still_missing)
