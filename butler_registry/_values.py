"""Values of dimension records as the registry stores them, and as Butler YAML writes them.

Dimension records are stored as JSON objects in a canonical form, so that two copies of
the same record (from an export file, a zip index, a sidecar) compare equal:

* times (a record's ``datetime_begin``/``datetime_end``) are integer nanoseconds of TAI
  since 1970-01-01T00:00:00 TAI, daf_butler's own database representation;
* regions are the lower-case hex of their ``lsst.sphgeom`` encoding (the encoding's first
  byte names the region class);
* byte strings (a skymap's ``hash``) are lower-case hex.

Butler export YAML spells these with tags: ``!butler_time/tai/iso '2014-03-25
10:03:47.628000000'``, ``!<lsst.sphgeom.ConvexPolygon> {encoded: 70...}`` and ``!uuid``;
:class:`ButlerYamlLoader` and :class:`ButlerYamlDumper` read and write them without
astropy or sphgeom.
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

__all__ = [
    "REGION_CLASSES",
    "ButlerYamlDumper",
    "ButlerYamlLoader",
    "Region",
    "TaiTime",
    "tai_iso_to_nsec",
    "tai_nsec_to_iso",
    "utc_to_tai_nsec",
]

_EPOCH = datetime(1970, 1, 1)
_NS_PER_S = 1_000_000_000

# TAI - UTC in seconds, from each date on (IERS Bulletin C; unchanged since 2017-01-01).
_LEAP_SECONDS: tuple[tuple[datetime, int], ...] = tuple(
    (datetime.fromisoformat(day), offset)
    for day, offset in (
        ("1972-01-01", 10), ("1972-07-01", 11), ("1973-01-01", 12), ("1974-01-01", 13),
        ("1975-01-01", 14), ("1976-01-01", 15), ("1977-01-01", 16), ("1978-01-01", 17),
        ("1979-01-01", 18), ("1980-01-01", 19), ("1981-07-01", 20), ("1982-07-01", 21),
        ("1983-07-01", 22), ("1985-07-01", 23), ("1988-01-01", 24), ("1990-01-01", 25),
        ("1991-01-01", 26), ("1992-07-01", 27), ("1993-07-01", 28), ("1994-07-01", 29),
        ("1996-01-01", 30), ("1997-07-01", 31), ("1999-01-01", 32), ("2006-01-01", 33),
        ("2009-01-01", 34), ("2012-07-01", 35), ("2015-07-01", 36), ("2017-01-01", 37),
    )
)  # fmt: skip
_LEAP_DATES = [day for day, _ in _LEAP_SECONDS]

REGION_CLASSES: dict[str, str] = {
    "70": "ConvexPolygon",
    "63": "Circle",
    "65": "Ellipse",
    "62": "Box",
    "75": "UnionRegion",
    "69": "IntersectionRegion",
}
"""``lsst.sphgeom`` region class of an encoding, by its first byte (hex)."""


def tai_iso_to_nsec(text: str) -> int:
    """Nanoseconds of TAI since 1970 from ``YYYY-MM-DD HH:MM:SS[.fffffffff]`` (TAI).

    TAI has no leap seconds, so calendar arithmetic is exact; up to nanosecond
    digits are kept (``datetime`` alone would stop at microseconds).
    """
    text = text.strip().replace("T", " ")
    whole, _, fraction = text.partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S") - _EPOCH
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return (seconds.days * 86_400 + seconds.seconds) * _NS_PER_S + nanos


def tai_nsec_to_iso(nsec: int) -> str:
    """The ``YYYY-MM-DD HH:MM:SS.fffffffff`` TAI string daf_butler writes for ``nsec``."""
    seconds, nanos = divmod(nsec, _NS_PER_S)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{nanos:09d}"


def utc_to_tai_nsec(moment: datetime) -> int:
    """TAI nanoseconds of a UTC ``datetime`` (older exports wrote plain YAML timestamps)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    position = bisect.bisect_right(_LEAP_DATES, moment)
    offset = _LEAP_SECONDS[position - 1][1] if position else 0
    delta = moment - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * 1000 + offset * _NS_PER_S


@dataclass(frozen=True, slots=True)
class TaiTime:
    """A TAI instant in nanoseconds, as read from or written to Butler YAML."""

    nsec: int


@dataclass(frozen=True, slots=True)
class Region:
    """An ``lsst.sphgeom`` region, kept as the hex of its encoding."""

    encoded: str

    @property
    def class_name(self) -> str:
        """The sphgeom class name, from the encoding's type byte."""
        return REGION_CLASSES.get(self.encoded[:2], "ConvexPolygon")


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class ButlerYamlLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe YAML loader that also reads daf_butler's tags (times, regions, UUIDs)."""


class ButlerYamlDumper(_BaseDumper):  # type: ignore[misc,valid-type]
    """A safe YAML dumper that writes times, regions and UUIDs with daf_butler's tags."""


def _construct_time(loader: yaml.SafeLoader, node: yaml.Node) -> TaiTime | None:
    value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return None if value in (None, "", "null") else TaiTime(tai_iso_to_nsec(str(value)))


def _construct_region(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Region:
    mapping = loader.construct_mapping(node)  # type: ignore[arg-type]
    return Region(str(mapping["encoded"]).lower())


def _construct_uuid(loader: yaml.SafeLoader, node: yaml.Node) -> uuid.UUID | None:
    value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return uuid.UUID(str(value)) if value else None


def _construct_other(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    """Any other tag (a Timespan of a calibration association): its plain value."""
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ButlerYamlLoader.add_constructor("!butler_time/tai/iso", _construct_time)
ButlerYamlLoader.add_constructor("!uuid", _construct_uuid)
ButlerYamlLoader.add_multi_constructor("lsst.sphgeom.", _construct_region)
ButlerYamlLoader.add_multi_constructor("!lsst.sphgeom.", _construct_region)
ButlerYamlLoader.add_multi_constructor("!", _construct_other)


def _represent_time(dumper: yaml.SafeDumper, value: TaiTime) -> yaml.Node:
    return dumper.represent_scalar("!butler_time/tai/iso", tai_nsec_to_iso(value.nsec), style="'")


def _represent_region(dumper: yaml.SafeDumper, value: Region) -> yaml.Node:
    return dumper.represent_mapping(f"lsst.sphgeom.{value.class_name}", {"encoded": value.encoded})


def _represent_uuid(dumper: yaml.SafeDumper, value: uuid.UUID) -> yaml.Node:
    return dumper.represent_scalar("!uuid", str(value), style="'")


ButlerYamlDumper.add_representer(TaiTime, _represent_time)
ButlerYamlDumper.add_representer(Region, _represent_region)
ButlerYamlDumper.add_representer(uuid.UUID, _represent_uuid)
