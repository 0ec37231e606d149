"""The dimension universe: which dimension elements exist and how their records are keyed.

The registry follows daf_butler's default universe (namespace ``daf_butler``, versions 7
and 8, see ``daf_butler.yaml`` beside this module). Everything the registry needs to know
about dimensions comes from here: which dimensions identify a record (``required``), which
values a record determines (``implied``), the record's field names and types, and the
universe's sort order (the order daf_butler lists dimensions in).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

__all__ = [
    "DimensionElement",
    "ElementKind",
    "FieldType",
    "Universe",
    "UniverseError",
    "default_universe",
]

FieldType = Literal["int", "str", "float", "bool", "bytes"]
"""Python-level type of a record field, as the universe declares it."""

_SKYPIX_NAME = re.compile(r"^(?P<system>[a-z]+)(?P<level>\d+)$")


class UniverseError(ValueError):
    """The universe file is inconsistent, or a name is not an element of the universe."""


class ElementKind(StrEnum):
    """How an element's records exist."""

    dimension = "dimension"
    """A dimension with a record table of its own (instrument, visit, ...)."""
    join_element = "join"
    """A record about a combination of dimensions (visit_definition, visit_detector_region, ...)."""
    view = "view"
    """A dimension without records of its own (``band``: the bands of physical_filter records)."""
    skypix = "skypix"
    """A sky pixelisation level (``htm7``, ``healpix11``): every integer index is valid."""


@dataclass(frozen=True, slots=True)
class DimensionElement:
    """One element of the universe.

    Parameters
    ----------
    name
        Element name (``visit``).
    kind
        How its records exist.
    index
        Position in the universe's sort order.
    required
        Dimensions whose values identify a record, in daf_butler's order; for a
        dimension it ends with the dimension itself.
    key_fields
        Record field holding each ``required`` value (``instrument``, ``id``).
    implied
        Dimensions whose values a record of this element determines.
    key_type
        Type of the element's own key value (dimensions only).
    alternate_keys, metadata
        Other record fields and their types.
    spatial, temporal
        Whether records carry a ``region`` / a timespan (``datetime_begin``, ``datetime_end``).
    since
        First universe version with this element.
    """

    name: str
    kind: ElementKind
    index: int
    required: tuple[str, ...]
    key_fields: tuple[str, ...]
    implied: tuple[str, ...] = ()
    key_type: FieldType | None = None
    alternate_keys: Mapping[str, FieldType] = field(default_factory=dict)
    metadata: Mapping[str, FieldType] = field(default_factory=dict)
    spatial: bool = False
    temporal: bool = False
    since: int = 0

    @property
    def has_records(self) -> bool:
        """Whether the registry stores records of this element."""
        return self.kind in (ElementKind.dimension, ElementKind.join_element)

    @property
    def is_dimension(self) -> bool:
        """Whether this element is a dimension (it can appear in a data ID)."""
        return self.kind is not ElementKind.join_element

    @property
    def value_fields(self) -> tuple[str, ...]:
        """Fields of a record after its key, in daf_butler's serialisation order.

        Implied dimensions, alternate keys, metadata, then ``region`` and the timespan
        (``datetime_begin``/``datetime_end`` in export files, one ``timespan`` slot in
        the compact key-value form).
        """
        fields = [*self.implied, *self.alternate_keys, *self.metadata]
        if self.spatial:
            fields.append("region")
        if self.temporal:
            fields.extend(("datetime_begin", "datetime_end"))
        return tuple(fields)

    def field_type(self, name: str) -> FieldType | None:
        """Declared type of a record field (``None`` for region, timespan and unknown fields)."""
        if name in self.key_fields:
            dimension = self.required[self.key_fields.index(name)]
            return "int" if dimension == self.name and self.key_type == "int" else None
        return self.alternate_keys.get(name) or self.metadata.get(name)


class Universe:
    """A set of dimension elements, with the relations between them.

    Parameters
    ----------
    namespace
        Universe namespace (``daf_butler``).
    version
        Newest universe version described.
    oldest_compatible_version
        Oldest version whose elements are identical apart from those added since.
    elements
        The elements, in sort order.
    skypix_levels
        Maximum level of each pixelisation system (``htm`` → 24).
    """

    def __init__(
        self,
        namespace: str,
        version: int,
        oldest_compatible_version: int,
        elements: Iterable[DimensionElement],
        skypix_levels: Mapping[str, int],
    ) -> None:
        self.namespace = namespace
        self.version = version
        self.oldest_compatible_version = oldest_compatible_version
        self._elements = {element.name: element for element in elements}
        self._skypix_levels = dict(skypix_levels)
        self._key_types = self._dimension_key_types()
        self._record_elements: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._groups: dict[tuple[str, ...], frozenset[str]] = {}
        self._check()

    # -- lookup ---------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        if name in self._elements:
            return True
        return isinstance(name, str) and self._skypix(name) is not None

    def __getitem__(self, name: str) -> DimensionElement:
        element = self._elements.get(name) or self._skypix(name)
        if element is None:
            raise UniverseError(f"{name!r} is not a dimension element of universe {self.namespace}")
        return element

    @property
    def elements(self) -> tuple[DimensionElement, ...]:
        """Elements with records or names of their own, in sort order (skypix levels excluded)."""
        return tuple(self._elements.values())

    def key_type(self, dimension: str) -> FieldType:
        """Type of the values of ``dimension`` in a data ID."""
        known = self._key_types.get(dimension)
        if known is not None:
            return known
        if self._skypix(dimension) is not None:
            return "int"
        raise UniverseError(f"{dimension!r} is not a dimension of universe {self.namespace}")

    def sort_key(self, name: str) -> tuple[int, str]:
        """Key that sorts element names in the universe's order (skypix levels last)."""
        element = self._elements.get(name)
        return (element.index, "") if element is not None else (len(self._elements), name)

    def sorted(self, names: Iterable[str]) -> list[str]:
        """``names`` in the universe's order."""
        return sorted(names, key=self.sort_key)

    # -- dimension groups -----------------------------------------------------------------

    def closure(self, dimensions: Iterable[str]) -> set[str]:
        """All dimensions reached from ``dimensions`` through required and implied relations."""
        todo = list(dimensions)
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            element = self[name]
            if not element.is_dimension:
                raise UniverseError(f"{name!r} is a join element, not a dimension")
            seen.add(name)
            todo.extend(element.required)
            todo.extend(element.implied)
        return seen

    def required_dimensions(self, dimensions: Iterable[str]) -> tuple[str, ...]:
        """The required dimensions of the group spanned by ``dimensions``, in sort order.

        daf_butler lists a dataset type's dimensions either as its required set
        (``instrument, visit``) or as its whole group (``band, instrument, day_obs,
        physical_filter, visit``); both name the same dataset type. A dimension of the
        group is implied when another dimension of the group determines it.
        """
        group = self.closure(dimensions)
        implied = {name for member in group for name in self[member].implied}
        return tuple(self.sorted(group - implied))

    def group(self, required: tuple[str, ...]) -> frozenset[str]:
        """The dimension group of ``required`` (its closure), memoised for the hot path."""
        group = self._groups.get(required)
        if group is None:
            group = frozenset(self.closure(required))
            if len(self._groups) < 4096:
                self._groups[required] = group
        return group

    def record_elements(self, required: tuple[str, ...]) -> tuple[str, ...]:
        """Dimensions of the group of ``required`` that have records, in sort order."""
        elements = self._record_elements.get(required)
        if elements is None:
            elements = tuple(name for name in self.sorted(self.closure(required)) if self[name].has_records)
            if len(self._record_elements) < 4096:
                self._record_elements[required] = elements
        return elements

    def implied_dimensions(self, required: Iterable[str]) -> tuple[str, ...]:
        """Dimensions implied by the group of ``required``, in sort order."""
        required = tuple(required)
        return tuple(self.sorted(self.closure(required) - set(required)))

    # -- internals --------------------------------------------------------------------------

    def _skypix(self, name: str) -> DimensionElement | None:
        match = _SKYPIX_NAME.match(name)
        if match is None or name in self._elements:
            return None
        max_level = self._skypix_levels.get(match["system"])
        level = int(match["level"])
        if max_level is None or not 0 <= level <= max_level:
            return None
        return DimensionElement(
            name=name,
            kind=ElementKind.skypix,
            index=len(self._elements),
            required=(name,),
            key_fields=("id",),
            key_type="int",
        )

    def _dimension_key_types(self) -> dict[str, FieldType]:
        types: dict[str, FieldType] = {}
        for element in self._elements.values():
            if element.is_dimension:
                types[element.name] = element.key_type or "str"
        return types

    def _check(self) -> None:
        for element in self._elements.values():
            if len(element.required) != len(element.key_fields):
                raise UniverseError(f"{element.name}: required and key_fields differ in length")
            for name in (*element.required, *element.implied):
                if name not in self:
                    raise UniverseError(f"{element.name}: refers to unknown dimension {name!r}")


def _element_from_config(index: int, config: Mapping[str, Any]) -> DimensionElement:
    return DimensionElement(
        name=config["name"],
        kind=ElementKind(config["kind"]),
        index=index,
        required=tuple(config["required"]),
        key_fields=tuple(config["key_fields"]),
        implied=tuple(config.get("implied", ())),
        key_type=config.get("key_type"),
        alternate_keys=dict(config.get("alternate_keys", {})),
        metadata=dict(config.get("metadata", {})),
        spatial=bool(config.get("spatial", False)),
        temporal=bool(config.get("temporal", False)),
        since=int(config.get("since", 0)),
    )


@cache
def default_universe() -> Universe:
    """The daf_butler universe this registry follows (read once from the package data)."""
    text = resources.files(__name__).joinpath("daf_butler.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    return Universe(
        namespace=config["namespace"],
        version=int(config["version"]),
        oldest_compatible_version=int(config["oldest_compatible_version"]),
        elements=(_element_from_config(i, element) for i, element in enumerate(config["elements"])),
        skypix_levels={system: int(spec["max_level"]) for system, spec in config["skypix"].items()},
    )
