"""The site map: which RSE belongs to which Data Facility, what its topics are called, where its files land.

One model shared by the publisher (routing events to facility topics), the mirror
(selecting a facility's topics), the daemon (mapping Rucio URLs to local paths) and
the deployment site files. HermesK and every ctrl_ingestd configuration each kept
their own topic list by hand; here the list is derived from one map.

Example (YAML)::

    topic_template: "{dst_rse}-{scope}"        # HermesK-compatible default
    catch_all_topic: rucio.transfers.unrouted
    facilities:
      - name: FrDF
        rses: ["IN2P3_.*"]                      # full-match regular expressions
        prefixes:
          IN2P3_BUTLER_DISK:
            rucio_prefix: "root://ccxrootd.in2p3.fr:1094//pnfs/in2p3.fr/data/lsst/rucio/"
            fs_prefix: "/pnfs/in2p3.fr/data/lsst/rucio/"
      - name: UKDF
        rses: ["RAL_.*", "LANCS_.*"]
        topic: "rucio.transfers.{facility}"     # one topic for the whole facility
"""

from __future__ import annotations

import re
from functools import cached_property
from string import Formatter

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Facility", "RsePrefix", "SiteMap", "TopicTemplateError"]

TEMPLATE_FIELDS = frozenset({"dst_rse", "scope", "facility"})
_SCOPE_PATTERN = r"[A-Za-z0-9_.\-]+"


class TopicTemplateError(ValueError):
    """A topic template names a field other than dst_rse, scope and facility."""


class RsePrefix(BaseModel):
    """How one RSE's Rucio URLs map to paths at the facility."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rucio_prefix: str = Field(
        ...,
        min_length=1,
        title="Rucio URL prefix",
        description="Start of every dst-url of this RSE, e.g. root://host:1094//rucio/.",
        examples=["root://ccxrootd.in2p3.fr:1094//pnfs/in2p3.fr/data/lsst/rucio/"],
    )
    fs_prefix: str = Field(
        ...,
        min_length=1,
        title="Local file prefix",
        description="Absolute local folder that replaces rucio_prefix.",
        examples=["/pnfs/in2p3.fr/data/lsst/rucio/"],
    )

    @field_validator("fs_prefix")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"fs_prefix {value!r} must be an absolute path")
        return value


def _check_template(template: str) -> str:
    names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise TopicTemplateError(
            f"topic template {template!r} uses {sorted(unknown)}; allowed: {sorted(TEMPLATE_FIELDS)}"
        )
    return template


class Facility(BaseModel):
    """One Data Facility: its RSEs, optionally its own topic, and its URL prefixes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", title="Facility name", examples=["FrDF"])
    rses: list[str] = Field(
        ...,
        min_length=1,
        title="RSE patterns",
        description="Full-match regular expressions (a plain RSE name matches itself).",
        examples=[["IN2P3_.*"], ["RAL_BUTLER_DISK", "LANCS_.*"]],
    )
    topic: str | None = Field(
        None,
        title="Facility topic template",
        description="Overrides the site's topic_template for this facility, e.g. rucio.transfers.{facility}.",
    )
    prefixes: dict[str, RsePrefix] = Field(
        default_factory=dict,
        title="URL prefixes per RSE",
        description="RSE name -> Rucio prefix and local prefix, for the ingest daemon's URL mapping.",
    )

    @field_validator("rses")
    @classmethod
    def _compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"RSE pattern {pattern!r} is not a valid regular expression: {error}"
                ) from error
        return value

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value)

    @cached_property
    def _rse_regex(self) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{p})" for p in self.rses))

    def owns(self, rse: str) -> bool:
        """Whether ``rse`` belongs to this facility."""
        return self._rse_regex.fullmatch(rse) is not None


class SiteMap(BaseModel):
    """All facilities, and how their topics are named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    facilities: list[Facility] = Field(default_factory=list, title="Data Facilities")
    topic_template: str = Field(
        "{dst_rse}-{scope}",
        title="Topic template",
        description="Topic of an event, from dst_rse, scope and facility; the default is HermesK's naming.",
        examples=["{dst_rse}-{scope}", "rucio.transfers.{facility}"],
    )
    catch_all_topic: str = Field(
        "rucio.transfers.unrouted",
        min_length=1,
        title="Catch-all topic",
        description="Where events for an RSE of no known facility go; they are never dropped.",
    )

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return _check_template(value)

    @model_validator(mode="after")
    def _unique_names(self) -> SiteMap:
        names = [f.name for f in self.facilities]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"facility names must be unique; repeated: {duplicates}")
        return self

    def facility_for_rse(self, rse: str) -> Facility | None:
        """The facility owning ``rse`` (first match in file order), or None."""
        for facility in self.facilities:
            if facility.owns(rse):
                return facility
        return None

    def facility(self, name: str) -> Facility:
        """The facility called ``name``; KeyError naming the known ones otherwise."""
        for facility in self.facilities:
            if facility.name == name:
                return facility
        raise KeyError(f"no facility {name!r} in the site map; known: {[f.name for f in self.facilities]}")

    def topic_for(self, dst_rse: str, scope: str) -> str:
        """The topic an event for ``dst_rse`` / ``scope`` goes to (the catch-all for unknown RSEs)."""
        facility = self.facility_for_rse(dst_rse)
        if facility is None:
            return self.catch_all_topic
        template = facility.topic or self.topic_template
        return template.format(dst_rse=dst_rse, scope=scope, facility=facility.name)

    def topic_regex(self, facility_name: str) -> re.Pattern[str]:
        """A full-match regex of every topic that can carry ``facility_name``'s events.

        Derived from the template: ``{dst_rse}`` becomes the facility's RSE
        patterns, ``{scope}`` any scope name, ``{facility}`` the facility name; the
        rest is literal. The mirror selects topics with it.
        """
        facility = self.facility(facility_name)
        template = facility.topic or self.topic_template
        parts: list[str] = []
        for literal, name, _, _ in Formatter().parse(template):
            parts.append(re.escape(literal))
            if name == "dst_rse":
                parts.append("(?:" + "|".join(f"(?:{p})" for p in facility.rses) + ")")
            elif name == "scope":
                parts.append(_SCOPE_PATTERN)
            elif name == "facility":
                parts.append(re.escape(facility.name))
        return re.compile("".join(parts))

    def prefix_for(self, rse: str) -> RsePrefix | None:
        """The URL prefixes configured for ``rse``, if any facility declares them."""
        for facility in self.facilities:
            if rse in facility.prefixes:
                return facility.prefixes[rse]
        return None
