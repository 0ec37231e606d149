"""One raw record in, exactly one :data:`~ingestd.work.Planned` item out; never an exception.

:func:`plan` is the decode stage of the engine. It decides, from the record alone
and the site's rules, what the record asks for:

1. the size bound, UTF-8 and JSON (``too_large``, ``invalid_utf8``, ``invalid_json``);
2. the envelope's ``event_type`` and ``payload`` (``invalid_envelope``; its other
   keys, ``created_at`` included, are informational and never reject an event);
3. the event type: one this site does not ingest is a :class:`~ingestd.work.Skip`;
4. the ``transfer-done`` payload (``invalid_payload``);
5. the destination: an RSE of another facility of the site map is a Skip;
6. the kind (``rubin_butler``): missing (``missing_kind``, or a Skip if so
   configured), unknown (``unknown_kind``), or not enabled here (Skip);
7. for ``data_product`` and ``raw_file``, the sidecar (``missing_sidecar``,
   ``invalid_sidecar``, ``sidecar_mismatch``);
8. the local path of ``dst-url`` (``no_prefix``, ``path_refused``).

Cross-checks made here, and those deliberately left to the registry:

* the dataset id must be a UUID, the run and dataset type name non-empty, data ID
  values integers or strings (``invalid_sidecar``);
* a component ref registers its parent (same dataset id) and needs
  ``parentStorageClass`` (``invalid_sidecar``);
* embedded dimension records (``dataId.records``) must agree with the data ID
  (``sidecar_mismatch``);
* whether the data ID has every dimension of its dataset type, and whether its
  records exist, is the registry's judgement (its ``invalid`` and
  ``missing_dimensions`` statuses), because only the registry knows the dimension
  universe; ``dim_file`` and ``zip_file`` events ignore any sidecar.

The topic used for prefix lookup is the record's own; a record without one (a
file replay) uses the topic the site map would have routed it to
(``{dst_rse}-{scope}`` by default), so ctrl_ingestd's per-topic tables work for
replays too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from butler_registry.interface import FileInfo, Provenance
from ingestd.events import (
    DEFAULT_MAX_EVENT_BYTES,
    EventDecodeError,
    RejectClass,
    Sidecar,
    TransferPayload,
    decode_sidecar,
    decode_transfer,
    envelope_parts,
    parse_json,
    parse_utc_timestamp,
)
from ingestd.log import get_logger
from ingestd.mapping import MappingRefused, UrlMapper
from ingestd.sitemap import SiteMap
from ingestd.work import (
    ButlerKind,
    EventSummary,
    ImportDimensions,
    ImportZip,
    Planned,
    Position,
    RegisterDataset,
    Reject,
    Skip,
)

if TYPE_CHECKING:
    from ingestd.config import IngestdSettings

__all__ = ["INTERNAL_ERROR_CLASS", "PlanRules", "plan"]

INTERNAL_ERROR_CLASS: Final = "internal_error"
"""Error class of a record that made the planner itself fail (a bug): dead-lettered, never lost."""

_LOGGER = get_logger(__name__)
_KINDS: Final = {kind.value: kind for kind in ButlerKind}
_FILE_KINDS: Final = frozenset({ButlerKind.data_product, ButlerKind.raw_file})
_FACILITY_CACHE_SIZE: Final = 10_000
"""Most RSE names whose facility is remembered (a site has dozens; the bound stops a flood of junk)."""


@dataclass(frozen=True)
class PlanRules:
    """What this site ingests and how its URLs map to files.

    Parameters
    ----------
    mapper
        URL prefix tables.
    site
        Site map (facility of each RSE; nominal topic of a record without one).
    facility
        This facility's name in the site map; events for RSEs of *other*
        facilities are skipped. An RSE of no facility is not skipped (its URL
        prefix decides). ``None`` accepts every destination.
    event_types
        Event types ingested; others are skipped.
    kinds
        ``rubin_butler`` kinds ingested; others are skipped.
    max_event_bytes
        Larger records are rejected before parsing.
    unlabelled
        What to do with an ingested event type that has no ``rubin_butler``:
        ``reject`` (default: dead-lettered as ``missing_kind``, an operator looks)
        or ``skip`` (the site transfers non-Butler files on purpose).
    """

    mapper: UrlMapper
    site: SiteMap = field(default_factory=SiteMap)
    facility: str | None = None
    event_types: frozenset[str] = frozenset({"transfer-done"})
    kinds: frozenset[ButlerKind] = frozenset(ButlerKind)
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    unlabelled: Literal["reject", "skip"] = "reject"
    _facility_of: dict[str, str | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.facility is not None:
            self.site.facility(self.facility)  # KeyError naming the known facilities
        if self.max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be positive, not {self.max_event_bytes}")
        object.__setattr__(self, "event_types", frozenset(self.event_types))
        object.__setattr__(self, "kinds", frozenset(ButlerKind(kind) for kind in self.kinds))

    @classmethod
    def from_settings(cls, settings: IngestdSettings, *, resolve_symlinks: bool | None = None) -> PlanRules:
        """The rules of a loaded configuration (planning, topic prefixes, site map, source aliases).

        Parameters
        ----------
        settings
            Validated settings.
        resolve_symlinks
            Whether the mapper resolves symbolic links of existing files. By
            default only when verification is off: with verification on, the
            verifier makes the same check on the file it reads, later and once,
            so planning does no file-system I/O at all.
        """
        if resolve_symlinks is None:
            resolve_symlinks = not settings.verification.enabled
        mapper = UrlMapper.from_site(
            settings.topic_prefixes,
            settings.site,
            source_aliases=settings.consumer.source_aliases,
            resolve_symlinks=resolve_symlinks,
        )
        return cls(
            mapper=mapper,
            site=settings.site,
            facility=settings.planning.facility,
            event_types=frozenset(settings.planning.event_types),
            kinds=frozenset(settings.planning.kinds),
            max_event_bytes=settings.planning.max_event_bytes,
        )

    def nominal_topic(self, rse: str, scope: str) -> str:
        """The topic a record for ``rse``/``scope`` would have come on (for records without one).

        The site map's topic for an RSE of a known facility, else HermesK's
        ``{dst_rse}-{scope}``.
        """
        if self.facility_of(rse) is not None:
            return self.site.topic_for(rse, scope)
        return f"{rse}-{scope}"

    def facility_of(self, rse: str) -> str | None:
        """The facility owning ``rse`` (cached: RSE patterns are regular expressions)."""
        try:
            return self._facility_of[rse]
        except KeyError:
            facility = self.site.facility_for_rse(rse)
            name = None if facility is None else facility.name
            if len(self._facility_of) < _FACILITY_CACHE_SIZE:
                self._facility_of[rse] = name
            return name


class _Refused(Exception):  # noqa: N818 - control flow, not an error
    """Internal: ends planning with a Skip or a Reject carrying the summary so far."""

    def __init__(self, planned: Skip | Reject) -> None:
        super().__init__()
        self.planned = planned


def plan(raw: bytes | bytearray | memoryview | str, position: Position, rules: PlanRules) -> Planned:
    """Decide what one raw record asks for.

    Parameters
    ----------
    raw
        The record as read (Kafka value, file line).
    position
        Where it came from; copied into the provenance.
    rules
        What this site ingests.

    Returns
    -------
    planned
        Exactly one of RegisterDataset, ImportDimensions, ImportZip, Skip, Reject.
        Bad input never raises; a failure of the planner itself becomes a Reject
        of class ``internal_error`` (logged with its traceback).
    """
    try:
        return _plan(raw, position, rules)
    except _Refused as refused:
        return refused.planned
    except Exception as error:  # a bug must not stop the pipeline: dead-letter the record instead
        _LOGGER.exception("plan_failed", position=str(position), error=type(error).__name__)
        return Reject(
            reason=f"the planner failed on this record: {type(error).__name__}: {error}"[:1000],
            error_class=INTERNAL_ERROR_CLASS,
            summary=EventSummary(),
        )


def _reject(error_class: RejectClass | str, reason: str, summary: EventSummary) -> _Refused:
    return _Refused(Reject(reason=reason, error_class=str(error_class), summary=summary))


def _plan(raw: bytes | bytearray | memoryview | str, position: Position, rules: PlanRules) -> Planned:
    document: Any = None
    try:
        document = parse_json(raw, max_bytes=rules.max_event_bytes)
        event_type, raw_payload = envelope_parts(document)
    except EventDecodeError as error:
        found = document.get("event_type") if isinstance(document, dict) else None
        summary = EventSummary(event_type=found if isinstance(found, str) and found else None)
        raise _reject(error.error_class, error.reason, summary) from None
    if event_type not in rules.event_types:
        raise _Refused(
            Skip(
                reason=(
                    f"event type {event_type!r} is not ingested here "
                    f"(ingested: {_listing(rules.event_types)})"
                ),
                summary=_loose_summary(event_type, raw_payload, rules),
            )
        )
    try:
        payload = decode_transfer(raw_payload)
    except EventDecodeError as error:
        summary = _loose_summary(event_type, raw_payload, rules)
        raise _reject(error.error_class, error.reason, summary) from None

    facility = rules.facility_of(payload.dst_rse)
    if rules.facility is not None and facility is not None and facility != rules.facility:
        raise _Refused(
            Skip(
                reason=(
                    f"dst-rse {payload.dst_rse!r} belongs to facility {facility!r}, not {rules.facility!r}"
                ),
                summary=_summary(event_type, payload, facility),
            )
        )
    kind = _kind(event_type, payload, rules, facility)
    if kind not in rules.kinds:
        raise _Refused(
            Skip(
                reason=f"rubin_butler kind {kind.value!r} is not ingested here",
                summary=_summary(event_type, payload, facility, kind),
            )
        )

    sidecar = None
    if kind in _FILE_KINDS:
        try:
            sidecar = decode_sidecar(payload.rubin_sidecar)
        except EventDecodeError as error:
            summary = _summary(event_type, payload, facility, kind)
            raise _reject(error.error_class, error.reason, summary) from None

    summary = _summary(event_type, payload, facility, kind, sidecar)
    path = _local_path(payload, position, rules, summary)
    provenance = Provenance(
        source=position.source,
        topic=position.topic,
        partition=position.partition,
        offset=position.offset,
        transfer_id=payload.transfer_id,
        rse=payload.dst_rse,
        scope=payload.scope,
        name=payload.name,
        event_time=payload.event_time,
    )
    if sidecar is not None:
        file = FileInfo(
            path=path, size=payload.size, adler32=payload.checksum_adler, md5=payload.checksum_md5
        )
        return RegisterDataset(record=sidecar.to_record(file=file, provenance=provenance), summary=summary)
    if kind is ButlerKind.dim_file:
        return ImportDimensions(path=Path(path), provenance=provenance, summary=summary)
    return ImportZip(path=Path(path), provenance=provenance, summary=summary)


def _kind(event_type: str, payload: TransferPayload, rules: PlanRules, facility: str | None) -> ButlerKind:
    value = payload.rubin_butler
    if value is None or value == "":
        summary = _summary(event_type, payload, facility)
        reason = "payload.rubin_butler is missing: not labelled as a Butler file"
        if rules.unlabelled == "skip":
            raise _Refused(Skip(reason=reason, summary=summary))
        raise _reject(RejectClass.missing_kind, reason, summary)
    kind = _KINDS.get(value) if isinstance(value, str) else None
    if kind is None:
        summary = _summary(event_type, payload, facility)
        raise _reject(
            RejectClass.unknown_kind,
            f"payload.rubin_butler is {value!r}, not one of {_listing(_KINDS)}",
            summary,
        )
    return kind


def _local_path(payload: TransferPayload, position: Position, rules: PlanRules, summary: EventSummary) -> str:
    topic = position.topic
    if topic is None:
        topic = rules.nominal_topic(payload.dst_rse, payload.scope)
    try:
        return rules.mapper.map_text(payload.dst_url, topic=topic, rse=payload.dst_rse)
    except MappingRefused as refused:
        raise _reject(refused.error_class, refused.reason, summary) from None


def _summary(
    event_type: str,
    payload: TransferPayload,
    facility: str | None,
    kind: ButlerKind | None = None,
    sidecar: Sidecar | None = None,
) -> EventSummary:
    return EventSummary(
        event_type=event_type,
        kind=kind,
        facility=facility,
        rse=payload.dst_rse,
        scope=payload.scope,
        name=payload.name,
        size=payload.size,
        adler32=payload.checksum_adler,
        md5=payload.checksum_md5,
        transfer_id=payload.transfer_id,
        transferred_at=payload.event_time,
        dataset_id=None if sidecar is None else sidecar.id,
        dataset_type=None if sidecar is None else sidecar.dataset_type.name,
        run=None if sidecar is None else sidecar.run,
    )


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value and value != "None":
        return value
    return None


def _loose_summary(event_type: str, payload: dict[str, Any], rules: PlanRules) -> EventSummary:
    """What can be said of a payload that is not (or need not be) a valid transfer payload."""
    rse = _text(payload.get("dst-rse")) or _text(payload.get("rse"))
    size = payload.get("file-size", payload.get("bytes"))
    transferred_at = payload.get("transferred_at")
    when = parse_utc_timestamp(transferred_at) if isinstance(transferred_at, str) else None
    kind = payload.get("rubin_butler")
    return EventSummary(
        event_type=event_type,
        kind=_KINDS.get(kind) if isinstance(kind, str) else None,
        facility=rules.facility_of(rse) if rse else None,
        rse=rse,
        scope=_text(payload.get("scope")),
        name=_text(payload.get("name")),
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        transfer_id=_text(payload.get("transfer-id")),
        transferred_at=when if isinstance(when, datetime) else None,
    )


def _listing(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))
