"""Dimension records in canonical form: validation, keys, and upgrades of old exports.

A record is stored as ``(element, data_key, values)``: ``data_key`` is the compact JSON
array of the values of the element's required dimensions (``["HSC",330]`` for visit
HSC/330), ``values`` a JSON object of every field in canonical form (see
:mod:`butler_registry._values`). Fields the universe does not declare are kept as they
came (JSON-compatible), so nothing of a newer Butler's record is lost; they are left out
of exports because daf_butler refuses unknown fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ._values import Region, TaiTime, tai_iso_to_nsec, tai_nsec_to_iso, utc_to_tai_nsec
from .interface import DataIdValue
from .universe import DimensionElement, FieldType, Universe

__all__ = [
    "CanonicalRecord",
    "RecordError",
    "canonical_record",
    "data_key",
    "describe_key",
    "export_values",
    "json_scalar",
    "records_from_key_value",
    "upgrade_export_records",
]

_TIME_FIELDS = ("datetime_begin", "datetime_end")
_encode_string = json.encoder.encode_basestring


class RecordError(ValueError):
    """A dimension record that cannot be stored as given (missing key, wrong type)."""


@dataclass(frozen=True, slots=True)
class CanonicalRecord:
    """A dimension record ready to store and compare."""

    element: str
    key: str
    """Compact JSON array of the required values: the record's identity within its element."""
    values: dict[str, Any]

    def describe(self) -> str:
        """``visit:HSC/330``: how reasons and ``missing`` name a record."""
        return describe_key(self.element, self.key)


def json_scalar(value: DataIdValue) -> str:
    """JSON text of a data ID value, exactly as ``json.dumps(value, ensure_ascii=False)`` writes it."""
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return json.dumps(value, ensure_ascii=False)
    return int.__repr__(value)


def data_key(values: Sequence[DataIdValue]) -> str:
    """Canonical identity of a record from its required values, in order.

    The compact JSON array of the values (``["HSC",330]``); built by hand because this
    runs several times per dataset on the hot path.
    """
    return "[" + ",".join([json_scalar(value) for value in values]) + "]"


def describe_key(element: str, key: str) -> str:
    """Operator-friendly name of a record: ``visit:HSC/330``."""
    return f"{element}:" + "/".join(str(value) for value in json.loads(key))


def _check_type(element: DimensionElement, name: str, value: Any, expected: FieldType | None) -> Any:
    if value is None or expected is None:
        return value
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise RecordError(f"{element.name}.{name} must be an integer, not {value!r}")
        return value
    if expected == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{element.name}.{name} must be a number, not {value!r}")
        number = float(value)
        if not math.isfinite(number):
            return str(number)  # JSON has no NaN/Infinity; keep the value recognisable
        return number
    if expected == "bool":
        if not isinstance(value, bool):
            raise RecordError(f"{element.name}.{name} must be true or false, not {value!r}")
        return value
    if expected == "bytes":
        if isinstance(value, bytes | bytearray):
            return bytes(value).hex()
        if isinstance(value, str):
            return value.lower()
        raise RecordError(f"{element.name}.{name} must be bytes, not {value!r}")
    if not isinstance(value, str):
        raise RecordError(f"{element.name}.{name} must be a string, not {value!r}")
    return value


def _time_value(element: DimensionElement, name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, TaiTime):
        return value.nsec
    if isinstance(value, datetime):
        return utc_to_tai_nsec(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return tai_iso_to_nsec(value)
    raise RecordError(f"{element.name}.{name} is not a time: {value!r}")


def _region_value(element: DimensionElement, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Region):
        return value.encoded
    if isinstance(value, Mapping) and "encoded" in value:
        return str(value["encoded"]).lower()
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    raise RecordError(f"{element.name}.region is not an encoded region: {value!r}")


def _jsonable(value: Any) -> Any:
    """An undeclared field's value in a form JSON keeps."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, TaiTime):
        return value.nsec
    if isinstance(value, Region):
        return value.encoded
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def canonical_record(universe: Universe, element_name: str, raw: Mapping[str, Any]) -> CanonicalRecord:
    """Validate one record of ``element_name`` and put it in canonical form.

    Parameters
    ----------
    universe
        The dimension universe.
    element_name
        Element of the record (``visit``).
    raw
        Field values as an export file, a sidecar or a zip index gives them; a
        ``timespan`` given as ``[begin, end]`` nanoseconds (or a mapping with
        ``begin``/``end``) is accepted in place of ``datetime_begin``/``datetime_end``.

    Raises
    ------
    RecordError
        Unknown element, element without records, missing key field, wrong type.
    """
    if element_name not in universe:
        raise RecordError(f"unknown dimension element {element_name!r}")
    element = universe[element_name]
    if not element.has_records:
        raise RecordError(f"{element_name} has no records of its own ({element.kind})")
    values: dict[str, Any] = {}
    key_values: list[DataIdValue] = []
    for dimension, field_name in zip(element.required, element.key_fields, strict=True):
        value = raw.get(field_name)
        if value is None:
            raise RecordError(f"{element_name} record lacks its key field {field_name!r}")
        expected = universe.key_type(dimension)
        value = _check_type(element, field_name, value, expected)
        values[field_name] = value
        key_values.append(value)
    for name, value in raw.items():
        if name in values:
            continue
        if name == "timespan":
            begin, end = _split_timespan(value)
            values["datetime_begin"] = _time_value(element, name, begin)
            values["datetime_end"] = _time_value(element, name, end)
        elif name in _TIME_FIELDS:
            values[name] = _time_value(element, name, value)
        elif name == "region":
            values[name] = _region_value(element, value)
        elif name in element.implied:
            values[name] = _check_type(element, name, value, universe.key_type(name))
        else:
            declared = element.alternate_keys.get(name) or element.metadata.get(name)
            values[name] = _check_type(element, name, value, declared) if declared else _jsonable(value)
    for name in element.value_fields:
        values.setdefault(name, None)
    if element.temporal and values.get("datetime_begin") is None and values.get("datetime_end") is None:
        # daf_butler writes no timespan fields at all for a record without a timespan.
        values.pop("datetime_begin", None)
        values.pop("datetime_end", None)
    return CanonicalRecord(element_name, data_key(key_values), values)


def _split_timespan(value: Any) -> tuple[Any, Any]:
    if value is None:
        return None, None
    if isinstance(value, Mapping):
        return value.get("begin"), value.get("end")
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0], value[1]
    raise RecordError(f"timespan is neither [begin, end] nor a mapping: {value!r}")


def export_values(universe: Universe, record: CanonicalRecord) -> dict[str, Any]:
    """The record as daf_butler's export YAML writes it (declared fields only, tagged values)."""
    element = universe[record.element]
    out: dict[str, Any] = {name: record.values[name] for name in element.key_fields}
    for name in element.value_fields:
        if name not in record.values:
            continue
        value = record.values[name]
        if name in _TIME_FIELDS and value is not None:
            value = TaiTime(int(value))
        elif name == "region" and value is not None:
            value = Region(str(value))
        elif element.alternate_keys.get(name) == "bytes" and value is not None:
            value = bytes.fromhex(str(value))
        out[name] = value
    return out


def implied_values(universe: Universe, record_values: Mapping[str, Any], element: str) -> dict[str, Any]:
    """The implied dimension values a record determines (``visit`` → physical_filter, day_obs)."""
    return {name: record_values.get(name) for name in universe[element].implied}


# ---------------------------------------------------------------------------------------------
# Older exports and compact (key-value) records


def upgrade_export_records(
    universe: Universe, version: int, namespace: str, entries: Iterable[tuple[str, list[dict[str, Any]]]]
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Bring dimension records of an export of an older universe to this one.

    Follows what ``butler import`` does: before universe 6, ``group`` and ``day_obs``
    were exposure/visit fields, not dimensions (``group_name``/``group_id`` become a
    ``group`` value and record; each ``day_obs`` value gets a record, without a
    timespan since computing it needs the instrument class); before universe 2, a
    visit's ``visit_system`` field becomes a ``visit_system_membership`` record.
    """
    if namespace != universe.namespace or version >= 6:
        yield from entries
        return
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    day_obs: dict[tuple[str, int], dict[str, Any]] = {}
    memberships: list[dict[str, Any]] = []
    upgraded: list[tuple[str, list[dict[str, Any]]]] = []
    for element, given in entries:
        records = [dict(record) for record in given]
        if element == "exposure":
            for record in records:
                if "group_name" in record:
                    record["group"] = str(record.pop("group_name"))
                    record.pop("group_id", None)
                    groups.setdefault(
                        (record["instrument"], record["group"]),
                        {"instrument": record["instrument"], "name": record["group"]},
                    )
        if element in ("exposure", "visit"):
            for record in records:
                if record.get("day_obs") is not None:
                    key = (record["instrument"], int(record["day_obs"]))
                    day_obs.setdefault(key, {"instrument": key[0], "id": key[1]})
        if element == "visit" and version < 2:
            for record in records:
                if "visit_system" in record:
                    memberships.append(
                        {
                            "instrument": record["instrument"],
                            "visit_system": record.pop("visit_system"),
                            "visit": record["id"],
                        }
                    )
        if element == "visit" and version < 1:
            for record in records:
                record.pop("seeing", None)
        upgraded.append((element, records))
    if groups:
        upgraded.append(("group", list(groups.values())))
    if day_obs:
        upgraded.append(("day_obs", list(day_obs.values())))
    if memberships:
        upgraded.append(("visit_system_membership", memberships))
    yield from upgraded


def records_from_key_value(
    universe: Universe, element_name: str, rows: Iterable[Sequence[Any]]
) -> list[dict[str, Any]]:
    """Records of a zip index's ``dimension_records`` (daf_butler's compact list form).

    Each row holds the required values, the implied values, the alternate keys and
    metadata, then the region (hex) and the timespan (``[begin, end]`` nanoseconds),
    in the universe's order.

    Raises
    ------
    RecordError
        A row whose length does not fit this universe's element.
    """
    element = universe[element_name]
    names = [*element.key_fields, *element.implied, *element.alternate_keys, *element.metadata]
    if element.spatial:
        names.append("region")
    if element.temporal:
        names.append("timespan")
    records = []
    for row in rows:
        if len(row) != len(names):
            raise RecordError(
                f"{element_name} record {list(row)[: len(element.key_fields)]} has {len(row)} values, "
                f"universe {universe.namespace} {universe.version} expects {len(names)}"
            )
        records.append(dict(zip(names, row, strict=True)))
    return records


def format_time(nsec: int | None) -> str | None:
    """A stored time for humans (TAI ISO)."""
    return None if nsec is None else tai_nsec_to_iso(nsec)
