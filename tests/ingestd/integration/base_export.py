"""A registry that knows HSC but not visit 330: what data products wait for until their dim_file comes."""

from __future__ import annotations

from pathlib import Path

from .events import SAMPLES


def write_base_export(path: Path) -> Path:
    """prep.yaml without its visit records: HSC, its detectors, filters and exposures, but no visit 330.

    The shared export lists the visit and the elements that depend on it last, so
    cutting the file at the ``visit`` element leaves a valid export of the rest.
    """
    lines = (SAMPLES / "prep.yaml").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if line == "  element: visit\n")
    path.write_text("".join(lines[: cut - 1]))
    return path
