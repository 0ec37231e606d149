"""Load a site: layer its files, validate the result, report problems with the file to edit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from ._errors import SiteFileError, SiteValidationError
from ._layers import LayeredSite, display_path, load_layers
from ._model import OPEN_MAPPINGS, Site

__all__ = ["OVERLAY_FOLDER", "LoadedSite", "environment_overlay", "load_site"]

OVERLAY_FOLDER: Final = "overlays"
"""Folder, beside the site file, where ``--env NAME`` finds ``NAME.yaml``."""


@dataclass(frozen=True)
class LoadedSite:
    """A validated site and the files it came from."""

    site: Site
    layers: LayeredSite

    @property
    def provenance(self) -> str:
        """The contributing files, parents first (``base.yaml < frdf.yaml < overlays/dev.yaml``)."""
        return " < ".join(self.layers.relative_names())


def environment_overlay(site_file: Path, environment: str) -> Path:
    """The overlay file of ``environment`` for ``site_file`` (``overlays/<environment>.yaml`` beside it).

    Raises
    ------
    SiteFileError
        No such overlay; the message lists the available ones.
    """
    folder = site_file.resolve().parent / OVERLAY_FOLDER
    path = folder / f"{environment}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise SiteFileError(
            f"no overlay for environment {environment!r}: {display_path(path)} does not exist"
            + (f" (available: {', '.join(known)})" if known else "")
        )
    return path


def _problems(error: ValidationError, layers: LayeredSite) -> Iterator[str]:
    for item in error.errors(include_url=False):
        location = tuple(part for part in item["loc"] if not str(part).startswith("function-"))
        dotted = ".".join(str(part) for part in location) or "<top level>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; unknown keys are refused)"
        elif item["type"] == "missing":
            message = "required key missing"
        shown = item.get("input")
        hidden = item["type"] in ("missing", "extra_forbidden") or isinstance(shown, dict | list)
        value = "" if hidden else f" (got {shown!r})"
        yield f"{display_path(layers.origin_of(location))}: {dotted}: {message}{value}"


def load_site(
    site_file: Path,
    *,
    environment: str | None = None,
    overlays: Sequence[Path] = (),
) -> LoadedSite:
    """Read, layer and validate a site.

    Parameters
    ----------
    site_file
        The facility's site file (it may ``extends`` a base).
    environment
        Apply ``overlays/<environment>.yaml`` from the site file's folder first.
    overlays
        Further overlay files, applied after the environment's, in order.

    Raises
    ------
    SiteFileError
        A file cannot be read or layered.
    SiteValidationError
        The merged site is invalid; one problem per line, each naming its file.
    """
    chosen = [environment_overlay(site_file, environment)] if environment else []
    layers = load_layers(site_file, [*chosen, *overlays], open_paths=OPEN_MAPPINGS)
    try:
        site = Site.model_validate(layers.data)
    except ValidationError as error:
        problems = list(_problems(error, layers))
        files = ", ".join(display_path(p) for p in layers.files)
        message = f"invalid site {display_path(site_file)} (from {files}):\n" + "\n".join(
            f"  - {problem}" for problem in problems
        )
        raise SiteValidationError(message, problems) from None
    return LoadedSite(site=site, layers=layers)
