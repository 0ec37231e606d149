"""Which topic an event goes to, and under which key.

One rule set for both modes, taken from the site map: the destination RSE names
the facility (patterns allowed), the facility's (or the site's) template names
the topic, and an event whose destination no facility owns goes to the catch-all
topic with the reason in a header. Nothing is ever dropped here: an event that
cannot be routed is still published, where an operator will see it.

The key is ``scope:name``, so every event of one file lands in one partition and
keeps its order (HermesK keyed everything ``"message"``: one partition for all).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from string import Formatter
from typing import Any

from ingestd.sitemap import Facility, SiteMap

__all__ = ["UNROUTED_FACILITY", "Route", "Router", "UnroutedReason", "did_key", "payload_text"]

UNROUTED_FACILITY = "unrouted"
"""The facility label of events sent to the catch-all topic (metrics, headers)."""

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
"""Kafka's rule for topic names."""

_MISSING = frozenset({"", "None", "null"})
"""Rucio writes absent values as the string "None"; treat them, and empties, as missing."""


class UnroutedReason(StrEnum):
    """Why an event went to the catch-all topic."""

    unknown_rse = "unknown_rse"
    """Its destination RSE belongs to no facility of the site map."""
    no_destination = "no_destination"
    """The payload names no destination RSE (``dst-rse``, or ``rse`` for deletions)."""
    no_scope = "no_scope"
    """The topic template needs a scope and the payload has none."""
    invalid_topic = "invalid_topic"
    """The template made a name Kafka refuses (characters outside ``[A-Za-z0-9._-]``, too long)."""
    invalid_payload = "invalid_payload"
    """The payload (or the whole record, in route mode) is not a JSON object."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one event goes."""

    topic: str
    facility: str
    """Facility name, or :data:`UNROUTED_FACILITY` for the catch-all topic."""
    rse: str | None = None
    unrouted: UnroutedReason | None = None
    """Set when the event goes to the catch-all topic, saying why."""


def payload_text(payload: Mapping[str, Any], key: str) -> str | None:
    """A payload value as text, or None when absent or written as Rucio's ``"None"``."""
    value = payload.get(key)
    if value is None:
        return None
    text = str(value)
    return None if text in _MISSING else text


def did_key(payload: Mapping[str, Any] | None, fallback: str) -> bytes:
    """The record key ``scope:name``, or ``fallback`` (the message id) when either is missing."""
    if payload is not None:
        scope, name = payload_text(payload, "scope"), payload_text(payload, "name")
        if scope is not None and name is not None:
            return f"{scope}:{name}".encode()
    return fallback.encode()


class Router:
    """Routes events by the site map; remembers each RSE's facility once looked up."""

    def __init__(self, site_map: SiteMap) -> None:
        self.site_map = site_map
        self._facility_of: dict[str, Facility | None] = {}

    def _facility(self, rse: str) -> Facility | None:
        try:
            return self._facility_of[rse]
        except KeyError:
            facility = self.site_map.facility_for_rse(rse)
            if len(self._facility_of) < 100_000:  # RSE names are few; this only bounds a hostile stream
                self._facility_of[rse] = facility
            return facility

    def catch_all(self, reason: UnroutedReason, rse: str | None = None) -> Route:
        """The route of an event that cannot be routed, for ``reason``."""
        return Route(self.site_map.catch_all_topic, UNROUTED_FACILITY, rse, reason)

    def route(self, payload: Mapping[str, Any] | None) -> Route:
        """The topic of an event with this payload (None: the payload was not a JSON object)."""
        if payload is None:
            return self.catch_all(UnroutedReason.invalid_payload)
        rse = payload_text(payload, "dst-rse") or payload_text(payload, "rse")
        if rse is None:
            return self.catch_all(UnroutedReason.no_destination)
        facility = self._facility(rse)
        if facility is None:
            return self.catch_all(UnroutedReason.unknown_rse, rse)
        template = facility.topic or self.site_map.topic_template
        scope = payload_text(payload, "scope")
        if scope is None and _uses_scope(template):
            return self.catch_all(UnroutedReason.no_scope, rse)
        topic = template.format(dst_rse=rse, scope=scope or "", facility=facility.name)
        if not _valid_topic(topic):
            return self.catch_all(UnroutedReason.invalid_topic, rse)
        return Route(topic, facility.name, rse)


def _valid_topic(name: str) -> bool:
    return _TOPIC_NAME.fullmatch(name) is not None and name not in (".", "..")


_SCOPE_USE: dict[str, bool] = {}


def _uses_scope(template: str) -> bool:
    try:
        return _SCOPE_USE[template]
    except KeyError:
        uses = any(name == "scope" for _, name, _, _ in Formatter().parse(template))
        _SCOPE_USE[template] = uses
        return uses
