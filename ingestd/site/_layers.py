"""Reading a site file and its layers: ``extends`` inheritance, environment overlays, provenance.

A deployment is described by one *site file* (``deploy/sites/frdf.yaml``) that
usually ``extends`` a shared base (``deploy/sites/base.yaml``), plus zero or more
*overlays* for the environment (``deploy/sites/overlays/dev.yaml``) or the host.
They are merged into one document here, before any validation, with these rules:

``extends: PATH`` (inheritance, relative to the file)
    The parent is read first (it may itself extend another file; cycles are
    refused), then the child is merged over it. A child may add keys the parent
    does not have: a facility file adds its facility's settings to the shared base.

Overlays (``--env NAME``, ``--overlay FILE``; applied in order, after inheritance)
    An overlay may only *change* keys that already exist in the merged site: a key
    the site does not have is refused, so a misspelt key in an overlay can never be
    silently ignored nor quietly add configuration the base does not show. A key
    whose value is null may be given any value. Free-form mappings (a service's
    ``config``, label sets, the secrets catalogue, a facility's prefixes) accept new
    keys. An overlay cannot ``extends``.

Merging, in both cases
    - mappings merge key by key, recursively;
    - a list whose items are all mappings with a ``name`` key (facilities) merges
      item by item, by name; a new name is an addition (refused in an overlay
      unless the key is written ``KEY+``);
    - any other list is replaced as a whole;
    - ``KEY+: [items]`` appends items to the list ``KEY`` instead of replacing it
      (the explicit way for an overlay to add list items);
    - a scalar replaces a scalar; ``null`` sets a key to null;
    - a mapping never replaces a scalar or a list, nor the reverse, except over or
      by ``null`` (almost always a mistake in the file, so it is refused).

Every leaf remembers the file that set it last, so a validation error can name
the file to edit, not only the key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from ._errors import SiteFileError

__all__ = [
    "APPEND_SUFFIX",
    "EXTENDS_KEY",
    "LayeredSite",
    "OpenPaths",
    "Origin",
    "display_path",
    "load_layers",
    "read_yaml_mapping",
]

EXTENDS_KEY: Final = "extends"
"""Top-level key naming the parent of a site file."""

APPEND_SUFFIX: Final = "+"
"""Suffix of a key whose list items are appended rather than replacing the list."""

_NAME_KEY: Final = "name"


@dataclass
class Origin:
    """Which file last set a node of the merged document, and the origins of its children."""

    file: Path
    children: dict[str, Origin] | list[Origin] | None = None


@dataclass(frozen=True)
class LayeredSite:
    """The merged document of a site file, its parents and overlays.

    Attributes
    ----------
    data
        The merged mapping, ``extends`` removed.
    origin
        Provenance tree parallel to ``data``.
    files
        Every file that contributed, in the order applied (parents first, overlays last).
    site_file
        The site file named on the command line.
    """

    data: dict[str, Any]
    origin: Origin
    files: tuple[Path, ...]
    site_file: Path
    overlays: tuple[Path, ...] = field(default=())

    def origin_of(self, location: Sequence[str | int]) -> Path:
        """The file that set the deepest existing node on ``location`` (a pydantic ``loc``)."""
        node = self.origin
        for part in location:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return node.file

    def relative_names(self) -> list[str]:
        """The contributing files relative to the site file's folder (stable across machines)."""
        root = self.site_file.parent
        names = []
        for path in self.files:
            relative = os.path.relpath(path, root)
            names.append(path.name if relative.startswith("..") else relative)
        return names


def _child(node: Origin, part: str | int) -> Origin | None:
    children = node.children
    if isinstance(children, dict) and isinstance(part, str):
        return children.get(part)
    if isinstance(children, list) and isinstance(part, int) and 0 <= part < len(children):
        return children[part]
    return None


def display_path(path: Path) -> str:
    """A path as an operator should see it: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"keys must be strings, found {key!r}", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read one YAML file that must hold a mapping; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SiteFileError(f"{display_path(path)}: cannot read: {error.strerror or error}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise SiteFileError(f"{display_path(path)}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SiteFileError(
            f"{display_path(path)}: the top level must be a mapping of settings, not {type(data).__name__}"
        )
    return data


def _dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def _fresh_origin(value: Any, file: Path) -> Origin:
    if isinstance(value, dict):
        return Origin(file, {key: _fresh_origin(item, file) for key, item in value.items()})
    if isinstance(value, list):
        return Origin(file, [_fresh_origin(item, file) for item in value])
    return Origin(file)


def _is_named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and isinstance(item.get(_NAME_KEY), str) for item in value)
    )


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "a value"


OpenPaths = frozenset[tuple[str, ...]]
"""Key paths of free-form mappings; ``*`` stands for any list position."""


def _is_open(path: Sequence[str | int], open_paths: OpenPaths) -> bool:
    """Whether ``path`` is a free-form mapping or lies inside one."""
    pattern = tuple("*" if isinstance(part, int) else part for part in path)
    return any(pattern[:length] in open_paths for length in range(1, len(pattern) + 1))


class _Merger:
    """Merge one layer (``file``) over the document so far; ``strict`` for overlays."""

    def __init__(self, file: Path, *, strict: bool, open_paths: OpenPaths = frozenset()) -> None:
        self.file = file
        self.strict = strict
        self.open_paths = open_paths

    def fail(self, path: Sequence[str | int], message: str) -> SiteFileError:
        return SiteFileError(f"{display_path(self.file)}: {_dotted(path)}: {message}")

    def merge(self, base: Any, origin: Origin, over: Any, path: tuple[str | int, ...]) -> tuple[Any, Origin]:
        if isinstance(base, dict) and isinstance(over, dict):
            return self._merge_mapping(base, origin, over, path)
        if (
            isinstance(base, list)
            and isinstance(over, list)
            and _is_named_list(base)
            and _is_named_list(over)
        ):
            return self._merge_named(base, origin, over, path, append=False)
        if base is not None and over is not None:
            base_container = isinstance(base, dict | list)
            over_container = isinstance(over, dict | list)
            if (base_container or over_container) and type(base) is not type(over):
                raise self.fail(
                    path,
                    f"replaces {_kind(base)} by {_kind(over)}; keep the shape of the base file "
                    "(set the key to null first if it really must change kind)",
                )
        return over, _fresh_origin(over, self.file)

    def _merge_mapping(
        self, base: dict[str, Any], origin: Origin, over: dict[str, Any], path: tuple[str | int, ...]
    ) -> tuple[dict[str, Any], Origin]:
        result = dict(base)
        children = dict(origin.children) if isinstance(origin.children, dict) else {}
        for raw_key, value in over.items():
            if raw_key == EXTENDS_KEY and not path:
                raise self.fail(path, "an overlay cannot extend another file; apply both as overlays")
            append = raw_key.endswith(APPEND_SUFFIX)
            key = raw_key[: -len(APPEND_SUFFIX)] if append else raw_key
            here = (*path, key)
            if append:
                result[key], children[key] = self._append(base.get(key), children.get(key), value, here)
            elif key in base:
                child_origin = children.get(key) or _fresh_origin(base[key], origin.file)
                result[key], children[key] = self.merge(base[key], child_origin, value, here)
            elif self.strict and not _is_open(path, self.open_paths):
                raise self.fail(
                    here,
                    "not in the site it overlays; an overlay can only change keys that exist "
                    "(check the spelling, or add the key to the base file first)",
                )
            else:
                result[key], children[key] = value, _fresh_origin(value, self.file)
        return result, Origin(origin.file, children)

    def _append(
        self, base: Any, origin: Origin | None, items: Any, path: tuple[str | int, ...]
    ) -> tuple[list[Any], Origin]:
        if not isinstance(items, list):
            raise self.fail(path, f"{path[-1]}{APPEND_SUFFIX} appends list items and needs a list")
        if base is None:
            if self.strict:
                raise self.fail(path, "cannot append to a list the site does not have")
            base = []
        if not isinstance(base, list):
            raise self.fail(
                path, f"{path[-1]}{APPEND_SUFFIX} appends to a list, but the site has {_kind(base)}"
            )
        origin = origin or _fresh_origin(base, self.file)
        if _is_named_list(base) and _is_named_list(items):
            return self._merge_named(base, origin, items, path, append=True)
        children = list(origin.children) if isinstance(origin.children, list) else []
        merged = [*base, *items]
        children += [_fresh_origin(item, self.file) for item in items]
        return merged, Origin(self.file, children)

    def _merge_named(
        self,
        base: list[dict[str, Any]],
        origin: Origin,
        over: list[dict[str, Any]],
        path: tuple[str | int, ...],
        *,
        append: bool,
    ) -> tuple[list[Any], Origin]:
        result = list(base)
        children = list(origin.children) if isinstance(origin.children, list) else []
        index = {item[_NAME_KEY]: position for position, item in enumerate(base)}
        for item in over:
            name = item[_NAME_KEY]
            if name in index:
                if append:
                    raise self.fail(
                        path, f"{name!r} is already in the list; merge it without {APPEND_SUFFIX}"
                    )
                position = index[name]
                result[position], children[position] = self.merge(
                    base[position], children[position], item, (*path, position)
                )
            elif self.strict and not append:
                raise self.fail(
                    path,
                    f"no item named {name!r} in the site; write the key as "
                    f"{path[-1]}{APPEND_SUFFIX} to add one",
                )
            else:
                index[name] = len(result)
                result.append(item)
                children.append(_fresh_origin(item, self.file))
        return result, Origin(origin.file, children)


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], Origin, list[Path]]:
    if path in seen:
        chain = " -> ".join(display_path(p) for p in (*seen, path))
        raise SiteFileError(f"{display_path(path)}: extends itself through {chain}")
    data = read_yaml_mapping(path)
    parent = data.pop(EXTENDS_KEY, None)
    if parent is None:
        return data, _fresh_origin(data, path), [path]
    if not isinstance(parent, str) or not parent.strip():
        raise SiteFileError(f"{display_path(path)}: {EXTENDS_KEY} must name one file (a relative path)")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise SiteFileError(f"{display_path(path)}: {EXTENDS_KEY}: {parent} does not exist")
    base, origin, files = _load_chain(parent_path, (*seen, path))
    merged, merged_origin = _Merger(path, strict=False).merge(base, origin, data, ())
    return merged, merged_origin, [*files, path]


def load_layers(
    site_file: Path, overlays: Sequence[Path] = (), *, open_paths: OpenPaths = frozenset()
) -> LayeredSite:
    """Read ``site_file`` with its parents, then apply ``overlays`` in order.

    ``open_paths`` names the free-form mappings where an overlay may add keys.

    Raises
    ------
    SiteFileError
        A file is missing or not a YAML mapping, has a duplicate key, extends in a
        cycle, or an overlay changes a key the site does not have.
    """
    site_path = site_file.resolve()
    if not site_path.is_file():
        raise SiteFileError(f"site file {display_path(site_file)} does not exist")
    data, origin, files = _load_chain(site_path, ())
    applied: list[Path] = []
    for overlay in overlays:
        overlay_path = overlay.resolve()
        if not overlay_path.is_file():
            raise SiteFileError(f"overlay {display_path(overlay)} does not exist")
        layer = read_yaml_mapping(overlay_path)
        data, origin = _Merger(overlay_path, strict=True, open_paths=open_paths).merge(
            data, origin, layer, ()
        )
        applied.append(overlay_path)
    return LayeredSite(
        data=data,
        origin=origin,
        files=(*files, *applied),
        site_file=site_path,
        overlays=tuple(applied),
    )
