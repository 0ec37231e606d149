"""``ingestd bench ...``: throughput benchmarks, each against the tool it replaces, in the same run."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any

from ingestd import bench


def register(subparsers: Any) -> None:
    """Add ``bench`` and one sub-command per module of :mod:`ingestd.bench`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="measure throughput against the anchor (real Butler, MirrorMaker 2, ...); prints JSON"
    )
    inner = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{bench.__name__}.{info.name}").register(inner)
