"""Bundled demo data: real-format transfer events and the small files they point to.

``ingestd replay --sample`` replays :func:`events_file` with the settings of
:func:`demo_config` into an embedded SQLite registry, with no server at all, so a
fresh install can run the whole decode → map → verify → register path:

======================  =========================================================
``transfer-done.jsonl`` HermesK messages, one per line: a ``dim_file``, two HSC
                        ``data_product`` events, a LATISS ``raw_file``, a
                        ``zip_file``, a ``transfer-submitted`` event (skipped) and
                        a truncated line (rejected)
``demo.yaml``           site map mapping the events' ``dst-url`` prefix into
                        ``files/``, verification on, SQLite registry, file dead
                        letters
``files/``              the Butler export of the dimension records, minimal FITS
                        files, a Butler zip; their sizes and checksums are the ones
                        the events announce
======================  =========================================================

The files are regenerated with the real Butler by ``python -m ingestd.samples._build``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

__all__ = ["DEMO_RUCIO_PREFIX", "demo_config", "events_file", "files_dir", "samples_dir"]

DEMO_RUCIO_PREFIX: Final = "root://xrd5:1098//rucio/demo/"
"""Start of every ``dst-url`` of the bundled events (RSE ``XRD5``)."""


def samples_dir() -> Path:
    """The folder of the bundled samples (inside the installed package)."""
    return Path(str(files(__name__)))


def events_file() -> Path:
    """The bundled JSON-lines file of events."""
    return samples_dir() / "transfer-done.jsonl"


def demo_config() -> Path:
    """The bundled demo settings (its relative ``fs_prefix`` points at :func:`files_dir`)."""
    return samples_dir() / "demo.yaml"


def files_dir() -> Path:
    """The folder of the files the bundled events point to."""
    return samples_dir() / "files"
