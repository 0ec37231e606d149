"""Rucio's catalogue through rucio-clients: file names, replicas at one RSE, DID metadata in bulk.

Rucio has no REST call that lists the file replicas of an RSE, so a backfill
takes two steps, both streamed:

1. **names**: the files of a scope (``DIDClient.list_dids(scope, did_type="file")``)
   or of one dataset (``DIDClient.list_files``), read from Rucio's JSON stream one
   line at a time;
2. **per chunk of names**: ``ReplicaClient.list_replicas(chunk, rse_expression=RSE)``
   (only replicas ``AVAILABLE`` at the RSE, with their PFNs, size and checksums,
   optionally only those updated since a time) and
   ``DIDClient.get_metadata_bulk(chunk, plugin="JSON")`` (``rubin_butler``,
   ``rubin_sidecar``).

Every request goes through :meth:`RucioCatalogue._call`, which keeps the request
rate under a cap and sorts failures: an outage (connection refused, time-out,
5xx, 429 "too many requests") is a :class:`TransientSourceError` the engine backs
off from; a refusal that retrying cannot cure (credentials, unknown RSE, scope or
dataset, a bad expression) is a :class:`FatalSourceError`. Anything else is a bug
and propagates.

rucio-clients itself retries 502/503/504 and renews an expired token.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from ingestd.log import get_logger
from ingestd.sources._base import FatalSourceError, TransientSourceError

from ._settings import RucioSettings

__all__ = ["METADATA_KEYS", "FileReplica", "RateLimiter", "RucioCatalogue", "classify_rucio_error"]

logger = get_logger(__name__)

T = TypeVar("T")

METADATA_KEYS: Final = ("rubin_butler", "rubin_sidecar")
"""The DID metadata keys a transfer-done event of Rubin carries."""

_FATAL_ERRORS: Final = frozenset(
    {
        "AccessDenied",
        "CannotAuthenticate",
        "CannotAuthorize",
        "ClientProtocolNotFound",
        "ClientProtocolNotSupported",
        "ConfigNotFound",
        "DataIdentifierNotFound",
        "InputValidationError",
        "InvalidMetadata",
        "InvalidObject",
        "InvalidRSEExpression",
        "InvalidType",
        "MissingClientParameter",
        "NoAuthInformation",
        "RSENotFound",
        "ScopeNotFound",
        "UnsupportedOperation",
    }
)
"""rucio-clients exceptions that retrying cannot cure: credentials, names, expressions."""


def classify_rucio_error(error: BaseException) -> type[TransientSourceError] | type[FatalSourceError] | None:
    """Whether a rucio-clients failure is an outage (transient), a refusal (fatal), or a bug (None).

    Rucio exceptions are recognised by class name (rucio-clients maps the server's
    ``ExceptionClass`` header to them); connection-level errors from requests and
    the operating system are outages.
    """
    name = type(error).__name__
    if name in _FATAL_ERRORS:
        return FatalSourceError
    module = type(error).__module__
    if module.startswith(("rucio.", "requests.", "urllib3.")) or isinstance(error, OSError | TimeoutError):
        return TransientSourceError
    return None


class RateLimiter:
    """At most ``rate`` calls per second on average, with bursts of up to ``burst`` (thread-safe)."""

    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.burst = max(burst, 1)
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Take one token; return how long the caller must sleep first (0 when a token was there)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> None:
        """Wait for a token."""
        wait = self.delay()
        if wait > 0:
            time.sleep(wait)


@dataclass(frozen=True, slots=True)
class FileReplica:
    """One file available at the RSE, as ``list_replicas`` reports it."""

    scope: str
    name: str
    pfns: tuple[str, ...]
    """PFNs of the replica at the RSE (one per protocol)."""
    size: int | None
    adler32: str | None
    md5: str | None


class RucioCatalogue:
    """The few catalogue reads a backfill needs, paced and with sorted failures.

    Parameters
    ----------
    settings
        Connection and pacing.
    client_factory
        Builds the rucio-clients ``Client`` (tests may pass their own); default:
        ``rucio.client.Client(**settings.client_arguments())``.
    """

    def __init__(self, settings: RucioSettings, client_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self._factory = client_factory
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._limiter = RateLimiter(
            settings.max_requests_per_s, burst=max(int(settings.max_requests_per_s), 1)
        )
        self.requests = 0
        """REST requests sent so far (listing streams count once)."""
        self.request_s = 0.0
        """Time spent waiting for answers, summed over threads."""

    # -- the client ----------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """This thread's rucio-clients ``Client``, created (and authenticated) on first use.

        One per thread: a client's HTTP session and token renewal are not meant to be
        shared by concurrent requests.
        """
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._call("authenticate", self._create_client, count=False)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _create_client(self) -> Any:
        if self._factory is not None:
            return self._factory()
        from rucio.client import Client

        arguments = self.settings.client_arguments()
        if self.settings.auth_type != "token" or self.settings.token_file is None:
            return Client(**arguments)
        # rucio-clients sends the bearer token it discovers (WLCG token discovery) as is.
        previous = os.environ.get("BEARER_TOKEN_FILE")
        os.environ["BEARER_TOKEN_FILE"] = str(self.settings.token_file)
        try:
            return Client(**arguments)
        finally:
            if previous is None:
                os.environ.pop("BEARER_TOKEN_FILE", None)
            else:
                os.environ["BEARER_TOKEN_FILE"] = previous

    def _call(self, what: str, function: Callable[[], T], *, count: bool = True) -> T:
        """Run one request under the rate cap; failures become source errors (see module doc)."""
        self._limiter.acquire()
        started = time.monotonic()
        try:
            return function()
        except Exception as error:
            kind = classify_rucio_error(error)
            if kind is None:
                raise
            logger.warning(
                "rucio_request_failed",
                request=what,
                error_type=type(error).__name__,
                error=str(error)[:500],
                transient=kind is TransientSourceError,
            )
            raise kind(f"Rucio {what} failed: {type(error).__name__}: {error}") from error
        finally:
            with self._lock:
                self.requests += 1 if count else 0
                self.request_s += time.monotonic() - started

    # -- listings (streams) ----------------------------------------------------------------------------

    def scopes(self) -> list[str]:
        """Every scope, sorted (the listing order of a backfill over all scopes)."""
        return sorted(self._call("list_scopes", lambda: list(self.client.list_scopes())))

    def file_names(self, scope: str) -> Iterator[str]:
        """The names of the files of ``scope``, streamed in the server's order."""
        client = self.client
        stream = self._call(
            "list_dids", lambda: client.list_dids(scope, filters=[{}], did_type="file", long=False)
        )
        yield from self._stream("list_dids", stream, str)

    def dataset_files(self, scope: str, name: str) -> Iterator[tuple[str, str]]:
        """``(scope, name)`` of the files of dataset (or container) ``scope:name``, streamed."""
        client = self.client
        stream = self._call("list_files", lambda: client.list_files(scope, name))
        yield from self._stream("list_files", stream, lambda item: (str(item["scope"]), str(item["name"])))

    def _stream(self, what: str, stream: Any, convert: Callable[[Any], T]) -> Iterator[T]:
        iterator = iter(stream)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as error:
                kind = classify_rucio_error(error)
                if kind is None:
                    raise
                raise kind(f"Rucio {what} stream broke: {type(error).__name__}: {error}") from error
            yield convert(item)

    # -- per chunk ----------------------------------------------------------------------------------------

    def replicas(
        self, dids: Sequence[tuple[str, str]], rse: str, *, updated_after: datetime | None = None
    ) -> dict[tuple[str, str], FileReplica]:
        """The files of ``dids`` with a replica ``AVAILABLE`` at ``rse`` (others are absent).

        Raises
        ------
        TransientSourceError, FatalSourceError
        """
        if not dids:
            return {}
        client = self.client
        request = [{"scope": scope, "name": name} for scope, name in dids]
        if updated_after is not None and updated_after.tzinfo is not None:
            # rucio-clients sends the wall-clock digits; the server reads them as UTC.
            updated_after = updated_after.astimezone(UTC)

        def ask() -> list[dict[str, Any]]:
            return list(
                client.list_replicas(
                    request,
                    schemes=list(self.settings.schemes) or None,
                    rse_expression=rse,
                    all_states=False,
                    resolve_archives=False,
                    updated_after=updated_after,
                )
            )

        found: dict[tuple[str, str], FileReplica] = {}
        for item in self._call("list_replicas", ask):
            pfns = _pfns_at(item, rse)
            if not pfns:
                continue
            key = (str(item["scope"]), str(item["name"]))
            found[key] = FileReplica(
                scope=key[0],
                name=key[1],
                pfns=pfns,
                size=item.get("bytes"),
                adler32=item.get("adler32"),
                md5=item.get("md5"),
            )
        return found

    def metadata(self, dids: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """``rubin_butler`` and ``rubin_sidecar`` of each DID that has either (one bulk request).

        Raises
        ------
        TransientSourceError, FatalSourceError
        """
        if not dids:
            return {}
        client = self.client
        request = [{"scope": scope, "name": name} for scope, name in dids]

        def ask() -> list[dict[str, Any]]:
            return list(client.get_metadata_bulk(request, inherit=False, plugin="JSON"))

        found: dict[tuple[str, str], dict[str, Any]] = {}
        for answer in self._call("get_metadata_bulk", ask):
            wanted = {key: answer[key] for key in METADATA_KEYS if answer.get(key) is not None}
            if wanted:
                found[(str(answer.get("scope")), str(answer.get("name")))] = wanted
        return found

    def close(self) -> None:
        """Close the HTTP sessions of every thread's client."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.session.close()
        self._local = threading.local()


def _pfns_at(item: Mapping[str, Any], rse: str) -> tuple[str, ...]:
    """PFNs of ``item`` at ``rse``: from ``rses`` (name -> PFNs), in the server's priority order."""
    rses = item.get("rses") or {}
    pfns = rses.get(rse) or ()
    states = item.get("states") or {}
    if states and states.get(rse) not in (None, "AVAILABLE"):
        return ()
    return tuple(str(pfn) for pfn in pfns)
